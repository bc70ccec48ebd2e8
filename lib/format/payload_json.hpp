// lib/format/payload_json.hpp — the payloads that Coordinator carries between
// ranks, as JSON: lossless round trips. Errors: Error(kCorrupt,
// "plan payload" or "metadata payload", fault).
#pragma once

#include <string>
#include <string_view>

#include "ringckpt/metadata.hpp"
#include "ringckpt/plan.hpp"

namespace ringckpt {

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
