// ringckpt/plan.hpp — the units a planner deals in: write and read items, plans.
//
// Mirrors torch.distributed.checkpoint.planner. A SavePlan is one rank's list
// of WriteItems; the finished plans fix, before a byte is copied, which item
// goes where. A LoadPlan is one rank's list of ReadItems, each a box copied
// from a stored chunk into a destination tensor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "ringckpt/metadata.hpp"

namespace ringckpt {

enum class WriteItemType { TENSOR, SHARD, BYTE_IO };

struct TensorWriteData {
  ChunkStorageMetadata chunk;   // the box this item stores
  TensorProperties properties;  // the dtype it is stored as
  Shape size;                   // the global shape
};

struct WriteItem {
  MetadataIndex index;
  WriteItemType type = WriteItemType::TENSOR;
  std::optional<TensorWriteData> tensor_data;  // set for TENSOR and SHARD
  std::uint64_t bytes_io_size = 0;             // set for BYTE_IO

  // Bytes this item occupies in storage.
  std::uint64_t nbytes() const noexcept;
};

enum class LoadItemType { TENSOR, BYTE_IO };

// Copy the box `lengths` at `storage_offsets` of stored chunk `storage_index`
// to `dest_offsets` of the destination named by `dest_index`.
struct ReadItem {
  LoadItemType type = LoadItemType::TENSOR;
  MetadataIndex dest_index;
  Shape dest_offsets;
  MetadataIndex storage_index;
  Shape storage_offsets;
  Shape lengths;
};

struct SavePlan {
  std::vector<WriteItem> items;
  std::string storage_data;                          // owned by the StorageWriter
  std::map<std::string, std::string> planner_data;   // owned by the SavePlanner
  bool usable = true;
};

struct LoadPlan {
  std::vector<ReadItem> items;
  std::string storage_data;
  std::map<std::string, std::string> planner_data;
};

struct WriteResult {
  MetadataIndex index;
  std::uint64_t size_in_bytes = 0;
  StorageInfo storage_data;
};

// What one rank's write_data produced: where each item went, and the data
// files it wrote (with their extent checksums), already durable.
struct WriteResults {
  std::vector<WriteResult> items;
  std::vector<FileInfo> files;
};

// Records in `metadata` where every item went and every data file written
// (what StorageWriter::finish commits).
void add_results(Metadata& metadata, const std::vector<WriteResults>& results);

// The bytes of one WriteItem as the planner hands them to staging: either a
// view of memory (copied as is) or a producer that writes any byte range of
// the item on demand (a dtype conversion, say), so that staging converts,
// copies and checksums in one pass over cache-sized pieces.
class ItemData {
 public:
  // Writes bytes [offset, offset + out.size()) of the item into out.
  using Producer = std::function<void(std::uint64_t offset, std::span<std::byte> out)>;

  static ItemData view(std::span<const std::byte> bytes);
  static ItemData owned(std::vector<std::byte> bytes);
  static ItemData produced(std::uint64_t size, Producer producer);

  std::uint64_t size() const noexcept { return size_; }
  // Pre: offset + out.size() <= size().
  void copy_to(std::uint64_t offset, std::span<std::byte> out) const;

 private:
  std::uint64_t size_ = 0;
  const std::byte* data_ = nullptr;                  // view or owned
  std::shared_ptr<const std::vector<std::byte>> owned_;
  Producer producer_;
};

}  // namespace ringckpt
