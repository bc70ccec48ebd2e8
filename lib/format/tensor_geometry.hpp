// lib/format/tensor_geometry.hpp — the geometry of tensors and their chunks:
// byte counts of shapes, boxes inside shapes, the chunk that starts at an
// offset, and whether chunks tile a tensor exactly once. Every check of these
// invariants (planner, metadata.json reader, load path) calls these.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "ringckpt/metadata.hpp"
#include "ringckpt/tensor.hpp"

namespace ringckpt::detail {

// The largest byte count believed of a tensor or chunk: anything above it is
// a corrupt or absurd shape, and keeping values below it keeps every sum and
// product of sizes and offsets free of overflow.
inline constexpr std::uint64_t kMaxTensorBytes = std::uint64_t{1} << 62;

// numel(shape) * element_size, or nullopt if a dimension is negative or the
// product exceeds kMaxTensorBytes. Never overflows.
std::optional<std::uint64_t> shape_bytes(std::span<const std::int64_t> shape,
                                         std::uint64_t element_size);

// True if the box [offsets, offsets + sizes) has the rank of `shape` and lies
// inside [0, shape) in every dimension (no negative offset or size). Never
// overflows, whatever the values.
bool box_inside(std::span<const std::int64_t> offsets, std::span<const std::int64_t> sizes,
                std::span<const std::int64_t> shape);

// The position of the chunk that starts at `offset` among `count` chunks,
// chunk i starting at start_of(i) (a range of int64): the hinted one if it
// starts there, else the first that does; nullopt if none does.
template <typename StartOf>
std::optional<std::size_t> find_chunk_at(std::size_t count, StartOf&& start_of,
                                         std::span<const std::int64_t> offset,
                                         std::optional<std::size_t> hint) {
  auto starts_at = [&](std::size_t i) { return std::ranges::equal(start_of(i), offset); };
  if (hint && *hint < count && starts_at(*hint)) return *hint;
  for (std::size_t i = 0; i < count; ++i) {
    if (starts_at(i)) return i;
  }
  return std::nullopt;
}

// The chunk of `tensor` that starts at `offset` (find_chunk_at), or null.
const ChunkStorageMetadata* find_chunk(const TensorStorageMetadata& tensor, const Shape& offset,
                                       std::optional<std::size_t> hint);

// Why chunks do not tile a global shape exactly once.
struct TilingFault {
  enum class Kind {
    bad_shape,       // the global shape has a negative dimension or too many elements
    rank,            // `chunk` does not have the rank of the global shape
    outside,         // `chunk` does not lie inside the global shape
    too_complex,     // the chunks split more dimensions than can be checked
    overlap,         // some element is held twice (held > total)
    gap,             // some element is held by no chunk (held < total)
    overlap_and_gap  // both, with as many elements held as there are
  };
  Kind kind = Kind::bad_shape;
  std::optional<std::size_t> chunk{};  // a chunk at fault, where one is known
  unsigned __int128 held = 0;        // elements the non-empty chunks hold, summed
  std::uint64_t total = 0;           // elements of the global shape
  std::size_t split_dims = 0;        // for too_complex
};

// nullopt if `chunks` tile `global` exactly once: each has its rank, lies
// inside it, and every element lies in exactly one (empty chunks allowed).
// Otherwise the first fault: shape, then per chunk rank and bounds, then
// coverage (found exactly by a signed-corner count, not by sampling).
std::optional<TilingFault> find_tiling_fault(const Shape& global,
                                             const std::vector<ChunkStorageMetadata>& chunks);

}  // namespace ringckpt::detail
