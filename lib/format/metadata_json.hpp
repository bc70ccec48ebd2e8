// lib/metadata_json.hpp — metadata.json, and the plans that cross ranks, as
// JSON (Boost.JSON).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "ringckpt/metadata.hpp"
#include "ringckpt/plan.hpp"

namespace ringckpt {

inline constexpr const char* kMetadataFile = "metadata.json";
inline constexpr const char* kFormatName = "ringckpt";

// metadata.json: {"format": "ringckpt", "version": 1, "state_dict_metadata",
// "storage_data", "files", "planner_data", "checksum"}; "checksum" is last and
// is the XXH3-64 (hex) of the serialized document without it.
std::string encode_metadata(const Metadata& metadata);

// encode_metadata of `metadata` with `results` recorded in it as add_results
// records them (storage entries and files), without copying `metadata`.
std::string encode_metadata(const Metadata& metadata, const std::vector<WriteResults>& results);

// Parses and checks metadata.json. `file` names it in errors. Checks: valid
// JSON, format and version, its own checksum, every dtype name, every file a
// plain name inside the directory (no separator, not "." or ".."), extent
// sizes multiples of 4096 with one checksum per extent, every storage entry in
// a listed file and inside its size, each chunk inside its tensor and its byte
// length equal to numel * dtype size. Throws Error(kCorrupt, file, fault).
Metadata decode_metadata(std::string_view text, const std::string& file);

// True if `name` is a plain file name: no '/', no NUL, not "", "." or "..".
bool is_plain_file_name(std::string_view name);

// Lossless round trips for the payloads that Coordinator carries.
std::string encode_save_plan(const SavePlan& plan);
SavePlan decode_save_plan(std::string_view text);
std::string encode_load_plan(const LoadPlan& plan);
LoadPlan decode_load_plan(std::string_view text);
std::string encode_write_results(const WriteResults& results);
WriteResults decode_write_results(std::string_view text);
// Metadata without the checksum check (for broadcast between ranks).
std::string encode_metadata_payload(const Metadata& metadata);
Metadata decode_metadata_payload(std::string_view text);

}  // namespace ringckpt
