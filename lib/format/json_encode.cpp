// json_encode.cpp — the metadata types as Boost.JSON values.
#include "format/json_encode.hpp"

#include "format/extent_checksum.hpp"

namespace ringckpt::detail {

namespace json = boost::json;

json::array to_json(const Shape& shape, const JsonStorage& sp) {
  json::array out(sp);
  out.reserve(shape.size());
  for (std::int64_t d : shape) out.emplace_back(d);
  return out;
}

json::object to_json(const std::map<std::string, std::string>& map, const JsonStorage& sp) {
  json::object out(sp);
  out.reserve(map.size());
  for (const auto& [key, value] : map) out.emplace(key, value);
  return out;
}

json::object to_json(const ChunkStorageMetadata& chunk, const JsonStorage& sp) {
  json::object out(sp);
  out.reserve(2);
  out.emplace("offsets", to_json(chunk.offsets, sp));
  out.emplace("sizes", to_json(chunk.sizes, sp));
  return out;
}

void put_index(json::object& out, const MetadataIndex& index) {
  out.emplace("fqn", index.fqn.str());
  if (index.offset) out.emplace("offset", to_json(*index.offset, out.storage()));
  if (index.index) out.emplace("index", static_cast<std::uint64_t>(*index.index));
}

json::object to_json(const FileInfo& file, const JsonStorage& sp) {
  json::object out(sp);
  out.reserve(4);
  out.emplace("path", file.relative_path);
  out.emplace("size", file.size);
  out.emplace("extent_size", file.extent_size);
  json::array checksums(sp);
  checksums.reserve(file.extent_checksums.size());
  for (std::uint64_t c : file.extent_checksums) checksums.emplace_back(checksum_hex(c));
  out.emplace("checksums", std::move(checksums));
  return out;
}

}  // namespace ringckpt::detail
