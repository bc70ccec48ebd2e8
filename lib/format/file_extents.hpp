// lib/format/file_extents.hpp — how a data file is cut into extents, the unit
// that is staged, written, read and checksummed: extent k of a file of `size`
// bytes in extents of `extent_size` holds bytes [k * extent_size,
// min(size, (k + 1) * extent_size)), and metadata.json records one checksum
// per extent. Saving, loading, the Checkpointer's ring check and the checks of
// metadata.json all cut files this one way.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace ringckpt::detail {

// Bytes [lo, hi) of file `file` (a position in the caller's list of files):
// extent `index` of that file.
struct Extent {
  std::size_t file = 0;
  std::uint64_t index = 0;
  std::uint64_t lo = 0;
  std::uint64_t hi = 0;
};

// `n` rounded up to a multiple of `to`. REQUIRES: to > 0; n + to does not
// overflow.
inline constexpr std::uint64_t round_up(std::uint64_t n, std::uint64_t to) {
  return (n + to - 1) / to * to;
}

// The number of extents of a file of `size` bytes.
// REQUIRES: extent_size > 0; size + extent_size does not overflow.
inline constexpr std::uint64_t extent_count(std::uint64_t size, std::uint64_t extent_size) {
  return (size + extent_size - 1) / extent_size;
}

// Extent k of file `file`, of `size` bytes. REQUIRES: k < extent_count(size, extent_size).
inline constexpr Extent extent_of(std::size_t file, std::uint64_t k, std::uint64_t size,
                                  std::uint64_t extent_size) {
  return {file, k, k * extent_size, std::min(size, (k + 1) * extent_size)};
}

}  // namespace ringckpt::detail
