// lib/format/extent_checksum.hpp — XXH3-64 of an extent, computed as it is staged.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include <xxhash.h>

namespace ringckpt {

// Streaming XXH3-64 (seed 0) over the pieces of one extent. Equal to
// checksum_of() of the concatenated pieces.
class ExtentChecksum {
 public:
  ExtentChecksum();
  ~ExtentChecksum();
  ExtentChecksum(const ExtentChecksum&) = delete;
  ExtentChecksum& operator=(const ExtentChecksum&) = delete;

  void reset();
  void update(std::span<const std::byte> piece);
  std::uint64_t digest() const;

 private:
  XXH3_state_t* state_;
};

std::uint64_t checksum_of(std::span<const std::byte> bytes);

// 16 lower-case hex digits, as metadata.json stores checksums.
std::string checksum_hex(std::uint64_t checksum);
std::optional<std::uint64_t> parse_checksum_hex(std::string_view hex);

// Size of the pieces that staging copies and then hashes while still in cache.
inline constexpr std::size_t kStagingPiece = std::size_t{256} << 10;

}  // namespace ringckpt
