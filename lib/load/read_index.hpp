// lib/load/read_index.hpp — what FileSystemReader::read_data needs of the
// metadata, in a few flat arrays with a hash index by name.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ringckpt/metadata.hpp"

namespace ringckpt::detail {

// Built once per set_up_storage_reader in place of a copy of the Metadata
// (whose maps make hundreds of thousands of small allocations for a state
// dict of many small tensors), and looked up per read item in O(1).
// Lookups give what the Metadata's maps and chunk lists would give.
class ReadIndex {
 public:
  static constexpr std::size_t kUnlisted = static_cast<std::size_t>(-1);

  struct Dims {  // a shape in dims_
    std::size_t begin = 0;
    std::size_t size = 0;
  };
  struct Chunk {
    Dims offsets, sizes;
  };
  // A storage entry; `task` is its file's position in files(), or kUnlisted
  // (then `path` names it in unlisted_).
  struct Entry {
    bool has_offset = false;
    Dims offset;
    std::size_t task = kUnlisted;
    std::size_t path = 0;
    std::uint64_t file_offset = 0;
    std::uint64_t length = 0;
  };
  // A name of state_dict_metadata or storage_data (or both); `tensor` if
  // state_dict_metadata holds a tensor of that name.
  struct Item {
    std::size_t name_begin = 0, name_size = 0;  // in names_
    bool tensor = false;
    DType dtype = DType::F32;
    std::size_t rank = 0;
    std::size_t chunk_begin = 0, chunk_count = 0;
    std::size_t entry_begin = 0, entry_count = 0;
  };

  // Replaces the index with one of `md`.
  void build(const Metadata& md);

  const std::vector<FileInfo>& files() const { return files_; }
  // Where the data of file `task` begins: the bytes before are its header.
  std::uint64_t header_bytes(std::size_t task) const { return header_bytes_[task]; }
  std::span<const std::int64_t> dims(Dims d) const { return {dims_.data() + d.begin, d.size}; }
  const std::string& unlisted_path(const Entry& e) const { return unlisted_[e.path]; }

  // The item named `name`, or null.
  const Item* find(std::string_view name) const;

  // The storage entry of `item` at `offset` (none: a whole item), as
  // Metadata::storage_data.find would find it; null if none.
  const Entry* entry(const Item& item, const std::optional<Shape>& offset) const;

  // The chunk of a tensor that starts at `offset` (none: the origin), the
  // hinted one first (find_chunk_at); null if none.
  const Chunk* chunk(const Item& item, const std::optional<Shape>& offset,
                     std::optional<std::size_t> hint) const;

 private:
  std::string_view name_of(const Item& item) const {
    return std::string_view(names_).substr(item.name_begin, item.name_size);
  }
  Dims add_dims(std::span<const std::int64_t> shape);

  std::vector<FileInfo> files_;
  std::vector<std::uint64_t> header_bytes_;  // [task]
  std::vector<std::string> unlisted_;
  std::string names_;
  std::vector<std::int64_t> dims_;
  std::vector<Chunk> chunks_;
  std::vector<Entry> entries_;
  std::vector<Item> items_;           // by name
  std::vector<std::uint32_t> slots_;  // open addressing: 1 + position in items_, 0 empty
};

}  // namespace ringckpt::detail
