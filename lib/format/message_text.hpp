// lib/format/message_text.hpp — how error messages quote names and print shapes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "ringckpt/metadata.hpp"
#include "ringckpt/tensor.hpp"

namespace ringckpt::detail {

// 'name', quoted for a message.
inline std::string in_quotes(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  out.append(1, '\'').append(s).append(1, '\'');
  return out;
}

// "[begin, end)", a byte range for a message.
inline std::string byte_range(std::uint64_t begin, std::uint64_t end) {
  std::string out = "[";
  out.append(std::to_string(begin)).append(", ").append(std::to_string(end)).append(")");
  return out;
}

// [2,3,4] (or [2, 3, 4] with separator ", ").
inline std::string shape_string(const Shape& shape, std::string_view separator = ",") {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i != 0) out += separator;
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

// "[2, 3]", as the planners' messages print shapes.
inline std::string shape_str(const Shape& shape) { return shape_string(shape, ", "); }
// "[2, 3] F32".
inline std::string tensor_str(const Shape& shape, DType dtype) {
  return shape_str(shape) + " " + std::string(dtype_name(dtype));
}
// "offsets [0, 0] sizes [2, 3]".
inline std::string chunk_str(const Shape& offsets, const Shape& sizes) {
  return "offsets " + shape_str(offsets) + " sizes " + shape_str(sizes);
}
inline std::string chunk_str(const ChunkStorageMetadata& chunk) {
  return chunk_str(chunk.offsets, chunk.sizes);
}

// 'w' for a whole item, 'w' chunk at [0,4] for a chunk of a tensor.
inline std::string index_string(const MetadataIndex& index) {
  std::string out = in_quotes(index.fqn);
  if (index.offset) out += " chunk at " + shape_string(*index.offset);
  return out;
}

}  // namespace ringckpt::detail
