// ringckpt/metadata.hpp — what a checkpoint says about itself (metadata.json).
//
// Mirrors torch.distributed.checkpoint.metadata: a tensor is stored as chunks,
// each chunk a box (offsets, sizes) of the global tensor; every stored item is
// found through its MetadataIndex.
#pragma once

#include <compare>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "ringckpt/dtype.hpp"
#include "ringckpt/fqn.hpp"
#include "ringckpt/tensor.hpp"

namespace ringckpt {

// A box of a tensor: offsets[d] <= i[d] < offsets[d] + sizes[d].
struct ChunkStorageMetadata {
  Shape offsets;
  Shape sizes;
  friend bool operator==(const ChunkStorageMetadata&, const ChunkStorageMetadata&) = default;
};

struct TensorProperties {
  DType dtype = DType::F32;
  friend bool operator==(const TensorProperties&, const TensorProperties&) = default;
};

struct TensorStorageMetadata {
  TensorProperties properties;
  Shape size;                                 // the global shape
  std::vector<ChunkStorageMetadata> chunks;   // together they cover `size` exactly once
};

struct BytesStorageMetadata {};

using StorageMetadata = std::variant<TensorStorageMetadata, BytesStorageMetadata>;

// Names one stored item: a whole tensor or blob (offset empty), or the chunk of
// a tensor that starts at `offset`. `index` is a hint for a faster lookup in
// the chunk list; it takes no part in comparison. Items planned from one
// entry share its Fqn (one string, however many chunks).
struct MetadataIndex {
  Fqn fqn;
  std::optional<Shape> offset;
  std::optional<std::size_t> index;

  friend bool operator==(const MetadataIndex& a, const MetadataIndex& b) {
    return a.fqn == b.fqn && a.offset == b.offset;
  }
  friend std::strong_ordering operator<=>(const MetadataIndex& a, const MetadataIndex& b) {
    if (auto c = a.fqn <=> b.fqn; c != 0) return c;
    return a.offset <=> b.offset;
  }
};

// Where an item's bytes are: a byte range of one data file.
struct StorageInfo {
  std::string relative_path;
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  friend bool operator==(const StorageInfo&, const StorageInfo&) = default;
};

// A data file: its exact size and the XXH3-64 checksum of each extent. Extent i
// covers bytes [i * extent_size, min((i + 1) * extent_size, size)).
struct FileInfo {
  std::string relative_path;
  std::uint64_t size = 0;
  std::uint64_t extent_size = 0;
  std::vector<std::uint64_t> extent_checksums;
  friend bool operator==(const FileInfo&, const FileInfo&) = default;
};

// DCP's StorageMeta: what the StorageWriter says about the storage of one save.
struct StorageMeta {
  std::string checkpoint_id;         // where the checkpoint is (a directory for FileSystemWriter)
  std::string save_id;               // names this save among saves to the same checkpoint_id
  std::string load_id;               // DCP's load_id: set by a reader; empty when saved
  std::vector<std::string> modules;  // DCP's modules: names the writer records; may be empty
  friend bool operator==(const StorageMeta&, const StorageMeta&) = default;
};

struct Metadata {
  static constexpr int kVersion = 1;

  int version = kVersion;
  std::map<std::string, StorageMetadata> state_dict_metadata;
  std::map<std::string, std::string> planner_data;   // free-form, the planner's own
  std::map<MetadataIndex, StorageInfo> storage_data;
  std::vector<FileInfo> files;
  // DCP's Metadata.storage_meta: what StorageWriter::storage_meta() returned
  // for this save; nullopt if it returned nothing (or the file predates it).
  std::optional<StorageMeta> storage_meta;

  // Total bytes of every data file.
  std::uint64_t total_bytes() const noexcept;
};

}  // namespace ringckpt
