// fuzz_safetensors_header.cpp — decode_safetensors_header_length and
// decode_safetensors_header (lib/format/safetensors.hpp) on arbitrary bytes.
//
// Input: 4 bytes (little-endian) of data said to follow the given bytes in the
// file, then the file's first bytes (length prefix, JSON, ...): file_size is
// the size of those bytes plus that count.
//
// Properties: both return or throw ringckpt::Error. On success the length is
// at most kMaxSafetensorsHeader and fits the file; the entries are sorted by
// offset and tile the data [0, file_size - data_start) back to back, each
// holding exactly its shape's bytes; the header re-encodes to one that
// decodes to the same entries.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "format/safetensors.hpp"
#include "format/tensor_geometry.hpp"
#include "fuzz_util.hpp"

using namespace ringckpt;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 4) return 0;
  std::uint64_t tail = 0;
  for (int i = 0; i < 4; ++i) tail |= std::uint64_t{data[i]} << (8 * i);
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data) + 4, size - 4);
  const std::uint64_t file_size = bytes.size() + tail;
  const std::string file = "fuzz/__0_0_0.safetensors";

  const auto n = fuzz::returns_or_error([&] {
    return decode_safetensors_header_length(bytes.first(std::min<std::size_t>(bytes.size(), 8)),
                                            file_size, file);
  });
  if (n) {
    FUZZ_CHECK(*n <= kMaxSafetensorsHeader);
    FUZZ_CHECK(8 + *n <= file_size);
  }

  const auto header =
      fuzz::returns_or_error([&] { return decode_safetensors_header(bytes, file_size, file); });
  if (!header) return 0;
  FUZZ_CHECK(n.has_value());  // the header was accepted, so its length was
  FUZZ_CHECK(header->data_start == 8 + *n);
  FUZZ_CHECK(header->data_start <= file_size);
  FUZZ_CHECK(header->data_start <= bytes.size());
  const std::uint64_t data_size = file_size - header->data_start;
  std::uint64_t expected = 0;
  for (const SafetensorsEntry& e : header->entries) {
    FUZZ_CHECK(e.begin == expected);
    FUZZ_CHECK(e.begin <= e.end && e.end <= data_size);
    const auto need = detail::shape_bytes(e.shape, dtype_size(e.dtype));
    FUZZ_CHECK(need.has_value() && e.end - e.begin == *need);
    FUZZ_CHECK(e.name != "__metadata__");
    expected = e.end;
  }
  FUZZ_CHECK(expected == data_size);

  // The encoder takes every accepted header back (names are distinct JSON keys).
  const std::string again = fuzz::must("encode_safetensors_header of an accepted header threw", [&] {
    return encode_safetensors_header(header->entries, header->metadata);
  });
  const std::span<const std::byte> again_bytes(reinterpret_cast<const std::byte*>(again.data()),
                                               again.size());
  const SafetensorsHeader round = fuzz::must("the re-encoded header was refused", [&] {
    return decode_safetensors_header(again_bytes, again.size() + data_size, file);
  });
  FUZZ_CHECK(round.entries == header->entries);
  FUZZ_CHECK(round.metadata == header->metadata);
  return 0;
}
