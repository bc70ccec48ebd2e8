// lib/plan/chunk_index.hpp — the stored chunks of one tensor, indexed so that
// the chunks meeting a requested box are found without trying every chunk.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ringckpt/metadata.hpp"

namespace ringckpt::detail {

// The chunks of `stored` sorted by where they start along one dimension, the
// "key" dimension: the one along which their starts take the most distinct
// values (dimension 0 for row shards, 1 for column shards, the finer split
// for blocks). A query binary-searches the chunks whose extent along the key
// dimension meets the box's, then filters them on every dimension: for a
// tiling split along the key dimension that visits only the chunks that meet
// the box; for blocks, one band of the key dimension at a time. Chunks that
// are empty (a size <= 0 in some dimension) meet nothing and are left out.
//
// Built once per tensor per load, on its second query (the first scans the
// chunks, as cheap as building: a tensor asked for one box costs one pass),
// in O(ndim * n log n) for n chunks, O(ndim * n) when they are listed in
// order along every dimension whose starts vary.
// REQUIRES: `fqn` and `stored` outlive the index; `stored` is not modified
// while it lives.
class ChunkIndex {
 public:
  ChunkIndex(const std::string& fqn, const TensorStorageMetadata& stored, std::size_t ndim)
      : fqn_(&fqn), stored_(&stored), ndim_(ndim) {}

  // Appends to `out`, in increasing order, the positions in stored.chunks of
  // the chunks whose box has a non-empty intersection with
  // [offsets, offsets + sizes). A 0-d box meets every (0-d) chunk. Throws
  // Error(kInvalidArgument, fqn) if the box does not have ndim dimensions or
  // its end overflows; on the first query, whatever the box, if a chunk's
  // end overflows (kInvalidArgument) or a chunk does not have ndim
  // dimensions (kMismatch), naming the chunk.
  void find_intersecting(const Shape& offsets, const Shape& sizes,
                         std::vector<std::size_t>& out);

  std::size_t ndim() const { return ndim_; }

 private:
  struct Entry {
    std::int64_t start;  // chunk.offsets[key_dim_]
    std::int64_t end;    // chunk.offsets[key_dim_] + chunk.sizes[key_dim_]
    std::size_t chunk;   // position in stored_->chunks
  };

  // Throws the errors of a bad chunk (see find_intersecting).
  void check_chunk(const ChunkStorageMetadata& chunk) const;
  // Sorts the chunks; REQUIRES: every chunk passed check_chunk.
  void build();

  const std::string* fqn_;
  const TensorStorageMetadata* stored_;
  std::size_t ndim_;
  bool checked_ = false;  // every chunk passed check_chunk (on the first query)
  bool built_ = false;    // entries_ and max_end_ are set (on the second)
  std::size_t key_dim_ = 0;
  // The non-empty chunks, sorted by (start, chunk); for ndim_ == 0, all.
  std::vector<Entry> entries_;
  // max_end_[i] = max(entries_[0..i].end): non-decreasing, so the first
  // entry that can reach past a box's start is found by binary search.
  std::vector<std::int64_t> max_end_;
};

}  // namespace ringckpt::detail
