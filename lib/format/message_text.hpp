// lib/format/message_text.hpp — how error messages quote names and print shapes.
#pragma once

#include <string>
#include <string_view>

#include "ringckpt/metadata.hpp"
#include "ringckpt/tensor.hpp"

namespace ringckpt::detail {

// 'name', quoted for a message.
inline std::string in_quotes(std::string_view s) { return "'" + std::string(s) + "'"; }

// [2,3,4] (or [2, 3, 4] with separator ", ").
inline std::string shape_string(const Shape& shape, std::string_view separator = ",") {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i != 0) out += separator;
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

// 'w' for a whole item, 'w' chunk at [0,4] for a chunk of a tensor.
inline std::string index_string(const MetadataIndex& index) {
  std::string out = in_quotes(index.fqn);
  if (index.offset) out += " chunk at " + shape_string(*index.offset);
  return out;
}

}  // namespace ringckpt::detail
