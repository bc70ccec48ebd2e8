// lib/format/json_append.hpp — Boost.JSON serialization straight onto a string.
#pragma once

#include <boost/json.hpp>

#include <algorithm>
#include <string>

namespace ringckpt::detail {

// Appends boost::json::serialize(v) to `out` in one pass, growing it as
// needed; reserve room beforehand to avoid regrowth.
template <typename Json>  // json::value, json::object or json::array
void serialize_append(std::string& out, const Json& v) {
  boost::json::serializer sr;
  sr.reset(&v);
  std::size_t used = out.size();
  out.resize(std::max(out.capacity(), used + 4096));
  while (!sr.done()) {
    if (used == out.size()) out.resize(out.size() * 2);
    used += sr.read(out.data() + used, out.size() - used).size();
  }
  out.resize(used);
}

}  // namespace ringckpt::detail
