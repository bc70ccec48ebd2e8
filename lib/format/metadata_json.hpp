// lib/format/metadata_json.hpp — metadata.json (Boost.JSON): written by
// metadata_encoder.cpp, read by metadata_decoder.cpp (streaming) and checked
// by metadata_checks.cpp.
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
// "storage_data", "files", "planner_data", "storage_meta" (optional: only when
// set, {"checkpoint_id", "save_id", "load_id": strings, "modules": [strings]}),
// "checksum"}; "checksum" is last and is the XXH3-64 (hex) of the serialized
// document without it. A file without "storage_meta" decodes with nullopt.
std::string encode_metadata(const Metadata& metadata);

// encode_metadata of `metadata` with `results` recorded in it as add_results
// records them (storage entries and files).
std::string encode_metadata(const Metadata& metadata, const std::vector<WriteResults>& results);

// Parses (in one streaming pass, no DOM) and checks metadata.json. `file`
// names it in errors. Checks: valid JSON, format and version, its own
// checksum, the type and range of every field, and what check_metadata
// (metadata_checks.hpp) checks of their meaning. Throws Error(kCorrupt,
// file, fault).
Metadata decode_metadata(std::string_view text, const std::string& file);

// True if `name` is a plain file name: no '/', no NUL, not "", "." or "..".
bool is_plain_file_name(std::string_view name);

}  // namespace ringckpt
