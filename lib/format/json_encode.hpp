// lib/format/json_encode.hpp — the metadata types as Boost.JSON values, built
// in a monotonic arena (one per document: every node is freed at once, and a
// generous first block makes most documents one allocation). Serialize them
// with serialize_append (json_append.hpp).
#pragma once

#include <boost/json.hpp>

#include <map>
#include <string>
#include <vector>

#include "ringckpt/metadata.hpp"

namespace ringckpt::detail {

using JsonStorage = boost::json::storage_ptr;

boost::json::array to_json(const Shape& shape, const JsonStorage& sp);
boost::json::object to_json(const std::map<std::string, std::string>& map, const JsonStorage& sp);
// {"offsets", "sizes"}.
boost::json::object to_json(const ChunkStorageMetadata& chunk, const JsonStorage& sp);
// {"path", "size", "extent_size", "checksums" (16 hex digits each)}.
boost::json::object to_json(const FileInfo& file, const JsonStorage& sp);

// Adds "fqn", and "offset" and "index" where set (absent where not), to `out`.
void put_index(boost::json::object& out, const MetadataIndex& index);

}  // namespace ringckpt::detail
