// lib/plan/plan_token.hpp — the short payload of plan caching (wire Kind
// kSamePlan): "the plan is the one we agreed on last time".
//
// Sent by a rank whose local plan equals the one it sent before (then
// storage_data is empty), and by the coordinator to a rank whose global plan
// it reuses (then storage_data is the writer's for this save). `fingerprint`
// is the XXH3 of the payload that last carried the plan meant (the encoded
// local plan; the encoded global plan as sent, its storage_data included),
// so that a rank holding another plan finds out.
//
//   header (kSamePlan) | fixed64 fingerprint | string storage_data
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace ringckpt::wire {

struct SamePlan {
  std::uint64_t fingerprint = 0;
  std::string storage_data;
};

std::string encode(const SamePlan& token);
// Whether `bytes` is a kSamePlan payload (by its header alone).
bool is_same_plan(std::string_view bytes) noexcept;
// Throws Error(kCorrupt, source, ...) for anything but a whole token.
SamePlan decode_same_plan(std::string_view bytes, const std::string& source);

}  // namespace ringckpt::wire
