// chunk_index.cpp — see chunk_index.hpp.
#include "plan/chunk_index.hpp"

#include <algorithm>

#include "format/message_text.hpp"
#include "ringckpt/error.hpp"

namespace ringckpt::detail {
namespace {

// True if some end offsets[d] + sizes[d] does not fit in int64.
bool end_overflows(const Shape& offsets, const Shape& sizes) {
  for (std::size_t d = 0; d < offsets.size(); ++d) {
    std::int64_t end = 0;
    if (__builtin_add_overflow(offsets[d], sizes[d], &end)) return true;
  }
  return false;
}

bool is_empty_box(const Shape& sizes) {
  return std::ranges::any_of(sizes, [](std::int64_t s) { return s <= 0; });
}

// The number of distinct values in `values`: O(n) if they are already
// sorted (chunks listed in order along a dimension), else sorted in place.
std::size_t distinct_count(std::vector<std::int64_t>& values) {
  if (!std::ranges::is_sorted(values)) std::ranges::sort(values);
  std::size_t distinct = values.empty() ? 0 : 1;
  for (std::size_t i = 1; i < values.size(); ++i) distinct += values[i] != values[i - 1];
  return distinct;
}

// True if the chunk and the box [offsets, offsets + sizes) share an element
// (always, for 0-d ones). REQUIRES: both have the same rank and no end
// overflows.
bool meets(const ChunkStorageMetadata& chunk, const Shape& offsets, const Shape& sizes) {
  for (std::size_t d = 0; d < offsets.size(); ++d) {
    if (std::max(chunk.offsets[d], offsets[d]) >=
        std::min(chunk.offsets[d] + chunk.sizes[d], offsets[d] + sizes[d])) {
      return false;
    }
  }
  return true;
}

}  // namespace

void ChunkIndex::check_chunk(const ChunkStorageMetadata& chunk) const {
  if (chunk.offsets.size() != ndim_ || chunk.sizes.size() != ndim_) {
    throw Error(ErrorCode::kMismatch, *fqn_,
                "stored chunk " + chunk_str(chunk) + " does not have the " +
                    std::to_string(ndim_) + " dimensions of the destination");
  }
  if (end_overflows(chunk.offsets, chunk.sizes)) {
    throw Error(ErrorCode::kInvalidArgument, *fqn_,
                "stored chunk " + chunk_str(chunk) + " overflows");
  }
}

void ChunkIndex::build() {
  // One pass over the chunks (each a pair of heap vectors): copy the starts
  // and ends of the non-empty ones, dimension by dimension.
  const std::size_t ndim = ndim_;
  const auto& chunks = stored_->chunks;
  std::vector<std::size_t> live;  // the non-empty chunks, in stored order
  live.reserve(chunks.size());
  std::vector<std::vector<std::int64_t>> starts(ndim), ends(ndim);
  for (std::size_t d = 0; d < ndim; ++d) {
    starts[d].reserve(chunks.size());
    ends[d].reserve(chunks.size());
  }
  for (std::size_t c = 0; c < chunks.size(); ++c) {
    const auto& chunk = chunks[c];
    if (is_empty_box(chunk.sizes)) continue;  // a 0-d chunk is never empty
    live.push_back(c);
    for (std::size_t d = 0; d < ndim; ++d) {
      starts[d].push_back(chunk.offsets[d]);
      ends[d].push_back(chunk.offsets[d] + chunk.sizes[d]);
    }
  }
  if (live.size() > 1) {
    std::size_t best = 0;
    std::vector<std::int64_t> values;
    for (std::size_t d = 0; d < ndim; ++d) {
      values = starts[d];
      const std::size_t distinct = distinct_count(values);
      if (distinct > best) {
        best = distinct;
        key_dim_ = d;
      }
    }
  }
  entries_.reserve(live.size());
  for (std::size_t i = 0; i < live.size(); ++i) {
    entries_.push_back(ndim == 0 ? Entry{0, 1, live[i]}
                                 : Entry{starts[key_dim_][i], ends[key_dim_][i], live[i]});
  }
  // Already in order (ties by position, as built) when the chunks are listed
  // in order along the key dimension, as a save's shards usually are.
  auto by_start_then_chunk = [](const Entry& a, const Entry& b) {
    return a.start != b.start ? a.start < b.start : a.chunk < b.chunk;
  };
  if (!std::ranges::is_sorted(entries_, by_start_then_chunk)) {
    std::ranges::sort(entries_, by_start_then_chunk);
  }
  max_end_.resize(entries_.size());
  for (std::size_t i = 0; i < entries_.size(); ++i) {
    max_end_[i] = i == 0 ? entries_[i].end : std::max(max_end_[i - 1], entries_[i].end);
  }
}

void ChunkIndex::find_intersecting(const Shape& offsets, const Shape& sizes,
                                   std::vector<std::size_t>& out) {
  if (offsets.size() != ndim_ || sizes.size() != ndim_) {
    throw Error(ErrorCode::kInvalidArgument, *fqn_,
                "destination box " + chunk_str(offsets, sizes) + " does not have the " +
                    std::to_string(ndim_) + " dimensions of the stored chunks");
  }
  if (end_overflows(offsets, sizes)) {
    throw Error(ErrorCode::kInvalidArgument, *fqn_,
                "destination box " + chunk_str(offsets, sizes) + " overflows");
  }
  const auto& chunks = stored_->chunks;
  if (!checked_) {  // the first query: check and scan every chunk, in order
    for (std::size_t c = 0; c < chunks.size(); ++c) {
      check_chunk(chunks[c]);
      if (meets(chunks[c], offsets, sizes)) out.push_back(c);
    }
    checked_ = true;
    return;
  }
  if (!built_) {
    build();
    built_ = true;
  }
  const std::size_t first_new = out.size();
  if (ndim_ == 0) {
    for (const Entry& e : entries_) out.push_back(e.chunk);
    return;
  }
  if (is_empty_box(sizes)) return;
  const std::int64_t lo = offsets[key_dim_];
  const std::int64_t hi = lo + sizes[key_dim_];
  // Entries [begin, end): those before `end` start below hi; those before
  // `begin` all end at or before lo.
  const auto end_it = std::ranges::lower_bound(entries_, hi, {}, &Entry::start);
  const auto begin_pos = static_cast<std::size_t>(
      std::ranges::upper_bound(max_end_, lo) - max_end_.begin());
  const auto end_pos = static_cast<std::size_t>(end_it - entries_.begin());
  for (std::size_t i = begin_pos; i < end_pos; ++i) {
    const Entry& e = entries_[i];
    if (e.end > lo && meets(chunks[e.chunk], offsets, sizes)) out.push_back(e.chunk);
  }
  std::sort(out.begin() + static_cast<std::ptrdiff_t>(first_new), out.end());
}

}  // namespace ringckpt::detail
