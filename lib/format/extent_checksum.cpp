// extent_checksum.cpp — XXH3-64 (seed 0), streaming and one-shot, and its
// hex form in metadata.json.
#include "format/extent_checksum.hpp"

#include <charconv>
#include <new>

#if defined(__x86_64__) || defined(_M_X64)
// libxxhash picks the widest vector unit (SSE2, AVX2, AVX-512) at run time:
// about 1.6x the portable build's speed on AVX-512 machines, the same hash.
#include <xxh_x86dispatch.h>
#endif

namespace ringckpt {
namespace {

#if defined(__x86_64__) || defined(_M_X64)
XXH64_hash_t xxh3(const void* data, std::size_t size) { return XXH3_64bits_dispatch(data, size); }
void xxh3_update(XXH3_state_t* state, const void* data, std::size_t size) {
  XXH3_64bits_update_dispatch(state, data, size);
}
#else
XXH64_hash_t xxh3(const void* data, std::size_t size) { return XXH3_64bits(data, size); }
void xxh3_update(XXH3_state_t* state, const void* data, std::size_t size) {
  XXH3_64bits_update(state, data, size);
}
#endif

}  // namespace

ExtentChecksum::ExtentChecksum() : state_(XXH3_createState()) {
  if (state_ == nullptr) throw std::bad_alloc();
  reset();
}

ExtentChecksum::~ExtentChecksum() { XXH3_freeState(state_); }

void ExtentChecksum::reset() { XXH3_64bits_reset(state_); }

void ExtentChecksum::update(std::span<const std::byte> piece) {
  // XXH3 accepts (nullptr, 0); an empty piece leaves the state unchanged.
  xxh3_update(state_, piece.data(), piece.size());
}

std::uint64_t ExtentChecksum::digest() const { return XXH3_64bits_digest(state_); }

std::uint64_t checksum_of(std::span<const std::byte> bytes) {
  return xxh3(bytes.data(), bytes.size());
}

std::string checksum_hex(std::uint64_t checksum) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex(16, '0');
  for (int i = 15; i >= 0; --i) {
    hex[static_cast<std::size_t>(i)] = kDigits[checksum & 0xf];
    checksum >>= 4;
  }
  return hex;
}

std::optional<std::uint64_t> parse_checksum_hex(std::string_view hex) {
  if (hex.size() != 16) return std::nullopt;
  // Lower case only: one value, one spelling, so that no change to the text
  // of metadata.json leaves its checksum valid. from_chars would also stop
  // early at a non-digit; check every character first.
  for (char c : hex) {
    const bool digit = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
    if (!digit) return std::nullopt;
  }
  std::uint64_t value = 0;
  auto [end, ec] = std::from_chars(hex.data(), hex.data() + hex.size(), value, 16);
  if (ec != std::errc() || end != hex.data() + hex.size()) return std::nullopt;
  return value;
}

}  // namespace ringckpt
