// lib/format/safetensors.hpp — the header of a data file, in the safetensors format.
//
// A data file is: 8-byte little-endian N, N bytes of JSON (padded with spaces
// so that 8 + N is a multiple of kAlignment), then the tensors back to back.
// JSON: {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets"}}
// with data_offsets [begin, end) relative to the first byte after the header.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ringckpt/dtype.hpp"
#include "ringckpt/tensor.hpp"

namespace ringckpt {

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::U8;
  Shape shape;
  std::uint64_t begin = 0;  // relative to the data start
  std::uint64_t end = 0;
  friend bool operator==(const SafetensorsEntry&, const SafetensorsEntry&) = default;
};

struct SafetensorsHeader {
  std::uint64_t data_start = 0;  // 8 + N
  std::vector<SafetensorsEntry> entries;  // in the order of data_offsets
  std::map<std::string, std::string> metadata;
};

// Largest header accepted on read (a header claiming more is corrupt).
inline constexpr std::uint64_t kMaxSafetensorsHeader = std::uint64_t{100} << 20;

// The full header bytes (length prefix, JSON, padding); its size is a multiple
// of kAlignment. Entries are written in the order given.
std::string encode_safetensors_header(const std::vector<SafetensorsEntry>& entries,
                                      const std::map<std::string, std::string>& metadata);

// An entry whose name and shape are held elsewhere (a plan's items, say).
struct SafetensorsEntryRef {
  std::string_view name;
  DType dtype = DType::U8;
  std::span<const std::int64_t> shape;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
};

// The same header, from entries that refer to their names and shapes.
std::string encode_safetensors_header_refs(std::span<const SafetensorsEntryRef> entries,
                                           const std::map<std::string, std::string>& metadata);

// The value of the 8-byte length prefix, checked against kMaxSafetensorsHeader
// and file_size. `file` names the file in errors (Error kCorrupt).
std::uint64_t decode_safetensors_header_length(std::span<const std::byte> first8,
                                               std::uint64_t file_size,
                                               const std::string& file);

// Parses and checks a header: `header` holds at least 8 + N bytes. Checks the
// JSON, every dtype, that shape and data_offsets agree, that offsets lie in
// the file and that tensors neither overlap nor leave holes. Throws
// Error(kCorrupt, file, what is wrong).
SafetensorsHeader decode_safetensors_header(std::span<const std::byte> header,
                                            std::uint64_t file_size,
                                            const std::string& file);

}  // namespace ringckpt
