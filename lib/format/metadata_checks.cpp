// metadata_checks.cpp — the checks of meaning of metadata.json. The common
// case (a sound document) is recognised in one walk over the maps; only a
// document that fails it is walked again to name its first fault.
#include "format/metadata_checks.hpp"

#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <string_view>
#include <tuple>
#include <vector>

#include "format/file_extents.hpp"
#include "format/message_text.hpp"
#include "format/metadata_json.hpp"
#include "format/tensor_geometry.hpp"
#include "ringckpt/error.hpp"
#include "ringckpt/io_options.hpp"

namespace ringckpt {
namespace detail {
namespace {

[[noreturn]] void fail(const std::string& file, std::string message) {
  throw Error(ErrorCode::kCorrupt, file, std::move(message));
}

void check_files(const std::string& file, const std::vector<FileInfo>& files) {
  std::set<std::string_view> seen;
  for (std::size_t i = 0; i < files.size(); ++i) {
    const FileInfo& f = files[i];
    auto path = [&] { return "files[" + std::to_string(i) + "]"; };
    const std::string& name = f.relative_path;
    if (!is_plain_file_name(name)) {
      const bool escapes = name.starts_with('/') || name == ".." || name.starts_with("../") ||
                           name.find("/../") != std::string::npos || name.ends_with("/..");
      fail(file, path() + ".path " + in_quotes(name) +
                     (escapes ? " escapes the checkpoint directory"
                              : " is not a plain file name inside the checkpoint directory"));
    }
    if (name == kMetadataFile)
      fail(file, path() + ".path " + in_quotes(name) + " names the metadata file itself");
    if (!seen.insert(name).second) fail(file, path() + ".path " + in_quotes(name) + " is listed twice");
    if (f.extent_size > kMaxExtentSize) {
      fail(file, path() + ".extent_size " + std::to_string(f.extent_size) + " of " +
                     in_quotes(name) + " is absurdly large (the limit is 1 GiB)");
    }
    if (f.extent_size == 0 || f.extent_size % kAlignment != 0) {
      fail(file, path() + ".extent_size " + std::to_string(f.extent_size) + " of " +
                     in_quotes(name) + " is not a positive multiple of " +
                     std::to_string(kAlignment));
    }
    // size <= 2^62 and extent_size >= 4096: no overflow.
    const std::uint64_t extents = extent_count(f.size, f.extent_size);
    if (f.extent_checksums.size() != extents) {
      fail(file, path() + ".checksums of " + in_quotes(name) + " holds " +
                     std::to_string(f.extent_checksums.size()) + " checksums, but " +
                     std::to_string(f.size) + " bytes in extents of " +
                     std::to_string(f.extent_size) + " make " + std::to_string(extents));
    }
  }
}

// The first chunk (by position) that starts where an earlier one starts.
std::optional<std::size_t> first_repeated_start(const std::vector<ChunkStorageMetadata>& chunks) {
  const std::size_t n = chunks.size();
  if (n < 2) return std::nullopt;
  std::optional<std::size_t> first;
  if (n <= 8) {
    for (std::size_t i = 1; i < n && !first; ++i) {
      for (std::size_t k = 0; k < i; ++k) {
        if (chunks[k].offsets == chunks[i].offsets) {
          first = i;
          break;
        }
      }
    }
    return first;
  }
  std::vector<std::size_t> order(n);
  for (std::size_t i = 0; i < n; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    if (auto c = chunks[a].offsets <=> chunks[b].offsets; c != 0) return c < 0;
    return a < b;
  });
  // In each run of equal starts, the second position repeats the first.
  for (std::size_t k = 1; k < n; ++k) {
    if (chunks[order[k]].offsets == chunks[order[k - 1]].offsets &&
        (k < 2 || chunks[order[k - 2]].offsets != chunks[order[k]].offsets)) {
      if (!first || order[k] < *first) first = order[k];
    }
  }
  return first;
}

// The size, rank, bounds, distinct starts and exact tiling of a tensor's
// chunks. Chunk starts being distinct makes each chunk's lookup by offset
// (find_chunk) unambiguous.
void check_tensor(const std::string& file, const std::string& fqn,
                  const TensorStorageMetadata& t) {
  if (!shape_bytes(t.size, dtype_size(t.properties.dtype))) {
    fail(file, "tensor " + in_quotes(fqn) + " size " + shape_string(t.size) + " is absurdly large");
  }
  auto what = [&](std::size_t i) {
    const ChunkStorageMetadata& c = t.chunks[i];
    return "tensor " + in_quotes(fqn) + " chunk " + std::to_string(i) + " (offsets " +
           shape_string(c.offsets) + ", sizes " + shape_string(c.sizes) + ")";
  };
  using Kind = TilingFault::Kind;
  const std::optional<TilingFault> fault = find_tiling_fault(t.size, t.chunks);
  if (fault && fault->kind == Kind::rank)
    fail(file, what(*fault->chunk) + " does not have the rank of size " + shape_string(t.size));
  if (fault && fault->kind == Kind::outside)
    fail(file, what(*fault->chunk) + " lies outside the tensor's size " + shape_string(t.size));
  if (const auto repeated = first_repeated_start(t.chunks))
    fail(file, what(*repeated) + " starts where another chunk starts");
  if (!fault) return;
  const std::string tensor = "tensor " + in_quotes(fqn) + " chunks ";
  switch (fault->kind) {
    case Kind::gap:
      fail(file, tensor + "leave part of it uncovered (they cover " +
                     std::to_string(static_cast<std::uint64_t>(fault->held)) + " of " +
                     std::to_string(fault->total) + " elements)");
    case Kind::overlap:
    case Kind::overlap_and_gap:
      fail(file, tensor + (fault->kind == Kind::overlap ? "overlap" : "overlap and leave gaps") +
                     (fault->chunk ? " at chunk " + std::to_string(*fault->chunk) + " (offsets " +
                                         shape_string(t.chunks[*fault->chunk].offsets) + ")"
                                   : std::string()));
    default:  // bad_shape: excluded by shape_bytes above
      fail(file, tensor + "split too many dimensions to check");
  }
}

// The files of `md` by name (the first listing of a name).
std::map<std::string_view, const FileInfo*> files_by_name(const Metadata& md) {
  std::map<std::string_view, const FileInfo*> files;
  for (const auto& f : md.files) files.emplace(f.relative_path, &f);
  return files;
}

// Pre: check_files and check_tensor passed. Both maps are ordered by fqn, so
// each is walked once alongside the other.
void check_storage(const std::string& file, const Metadata& md) {
  const std::map<std::string_view, const FileInfo*> files = files_by_name(md);

  auto item = md.state_dict_metadata.begin();
  const auto items_end = md.state_dict_metadata.end();
  for (const auto& [index, info] : md.storage_data) {
    auto name = [&index = index] { return "storage entry " + index_string(index); };
    // The item named by the entry: at or after the one of the entry before.
    while (item != items_end && item->first < index.fqn) ++item;
    if (item == items_end || item->first != index.fqn)
      fail(file, name() + " names no item of state_dict_metadata");
    std::optional<std::uint64_t> required;
    if (const auto* tensor = std::get_if<TensorStorageMetadata>(&item->second)) {
      if (!index.offset)
        fail(file, name() + " has no chunk offset, but " + in_quotes(index.fqn) + " is a tensor");
      const ChunkStorageMetadata* chunk = find_chunk(*tensor, *index.offset, index.index);
      if (chunk == nullptr) fail(file, name() + " names no chunk of tensor " + in_quotes(index.fqn));
      // Fits: check_tensor saw the chunk inside the tensor, whose bytes fit.
      required = shape_bytes(chunk->sizes, dtype_size(tensor->properties.dtype)).value();
    } else if (index.offset) {
      fail(file, name() + " has a chunk offset, but " + in_quotes(index.fqn) + " is bytes");
    }
    if (required && info.length != *required) {
      fail(file, name() + " is " + std::to_string(info.length) +
                     " bytes long, but its chunk needs " + std::to_string(*required));
    }
    auto listed = files.find(info.relative_path);
    if (listed == files.end()) {
      fail(file, name() + " is in " + in_quotes(info.relative_path) +
                     ", which files does not list");
    }
    const std::uint64_t size = listed->second->size;
    // offset, length <= 2^62: the sum cannot overflow.
    if (info.offset + info.length > size) {
      fail(file, name() + " lies beyond the end of " + info.relative_path + " (offset " +
                     std::to_string(info.offset) + " + " + std::to_string(info.length) +
                     " > size " + std::to_string(size) + ")");
    }
  }

  // Every chunk and every blob has its bytes somewhere. Every entry names an
  // item (checked above), so the entries of an item follow those of the items
  // before it.
  auto entry = md.storage_data.begin();
  const auto entries_end = md.storage_data.end();
  for (const auto& [fqn, stored] : md.state_dict_metadata) {
    while (entry != entries_end && entry->first.fqn < fqn) ++entry;
    auto last = entry;  // [entry, last): the entries of fqn
    std::size_t count = 0;
    while (last != entries_end && last->first.fqn == fqn && count <= 16) ++last, ++count;
    const bool small = last == entries_end || last->first.fqn != fqn;
    // Whether fqn has an entry at `offset` (null: a whole item, no offset).
    auto has_entry = [&](const Shape* offset) {
      if (!small) {
        return md.storage_data.contains(
            MetadataIndex{fqn, offset ? std::optional<Shape>(*offset) : std::nullopt, {}});
      }
      for (auto it = entry; it != last; ++it) {
        const std::optional<Shape>& at = it->first.offset;
        if (offset ? (at && *at == *offset) : !at) return true;
      }
      return false;
    };
    if (const auto* tensor = std::get_if<TensorStorageMetadata>(&stored)) {
      for (const auto& c : tensor->chunks) {
        if (!has_entry(&c.offsets)) {
          fail(file, "tensor " + in_quotes(fqn) + " chunk at " + shape_string(c.offsets) +
                         " has no storage entry");
        }
      }
    } else if (!has_entry(nullptr)) {
      fail(file, "bytes item " + in_quotes(fqn) + " has no storage entry");
    }
  }
}

// Whether check_tensor (each tensor) and check_storage would pass, found in
// one walk over both maps; exactly as strict. Where they would not, they are
// run to name the fault.
bool metadata_is_sound(const std::string& file, const Metadata& md) {
  const std::map<std::string_view, const FileInfo*> files = files_by_name(md);

  auto entry = md.storage_data.begin();
  const auto entries_end = md.storage_data.end();
  for (const auto& [fqn, stored] : md.state_dict_metadata) {
    const auto* tensor = std::get_if<TensorStorageMetadata>(&stored);
    if (tensor) {
      try {
        check_tensor(file, fqn, *tensor);
      } catch (const Error&) {
        return false;
      }
    }
    if (entry != entries_end && entry->first.fqn < fqn) return false;  // names no item
    std::size_t count = 0;
    for (; entry != entries_end && entry->first.fqn == fqn; ++entry, ++count) {
      const auto& [index, info] = *entry;
      std::optional<std::uint64_t> required;
      if (tensor) {
        if (!index.offset) return false;
        const ChunkStorageMetadata* chunk = find_chunk(*tensor, *index.offset, index.index);
        if (chunk == nullptr) return false;
        required = shape_bytes(chunk->sizes, dtype_size(tensor->properties.dtype)).value();
      } else if (index.offset) {
        return false;
      }
      if (required && info.length != *required) return false;
      auto listed = files.find(info.relative_path);
      if (listed == files.end() || info.offset + info.length > listed->second->size) return false;
    }
    // Each entry of a tensor names a chunk, distinct entries distinct chunks
    // (starts are distinct): every chunk has an entry when there are as many
    // entries as chunks. A blob has at most the one entry without offset.
    if (count != (tensor ? tensor->chunks.size() : 1)) return false;
  }
  return entry == entries_end;
}

// Pre: every entry lies inside a listed file. No byte of a file belongs to
// two storage entries (entries of no bytes hold none).
void check_disjoint_storage(const std::string& file, const Metadata& md) {
  struct Range {
    std::string_view path;
    std::uint64_t begin, end;
    const MetadataIndex* index;
  };
  std::vector<Range> ranges;
  ranges.reserve(md.storage_data.size());
  for (const auto& [index, info] : md.storage_data) {
    if (info.length != 0) {
      ranges.push_back({info.relative_path, info.offset, info.offset + info.length, &index});
    }
  }
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return std::tie(a.path, a.begin, a.end) < std::tie(b.path, b.begin, b.end);
  });
  // In each file, the range reaching furthest so far: a range that overlaps
  // any earlier one overlaps it.
  const Range* widest = nullptr;
  for (const Range& r : ranges) {
    if (widest && widest->path == r.path && r.begin < widest->end) {
      const std::uint64_t last = std::min(widest->end, r.end) - 1;
      fail(file, "storage entries " + index_string(*widest->index) + " and " +
                     index_string(*r.index) + " share bytes " + std::to_string(r.begin) + ".." +
                     std::to_string(last) + " of " + std::string(r.path));
    }
    if (!widest || widest->path != r.path || r.end > widest->end) widest = &r;
  }
}

}  // namespace

void check_metadata(const Metadata& md, const std::string& file) {
  check_files(file, md.files);
  if (!metadata_is_sound(file, md)) {
    for (const auto& [fqn, item] : md.state_dict_metadata) {
      if (const auto* tensor = std::get_if<TensorStorageMetadata>(&item)) {
        check_tensor(file, fqn, *tensor);
      }
    }
    check_storage(file, md);
  }
  check_disjoint_storage(file, md);
}

}  // namespace detail

bool is_plain_file_name(std::string_view name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string_view::npos &&
         name.find('\0') == std::string_view::npos;
}

}  // namespace ringckpt
