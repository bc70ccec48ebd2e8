#include "plan/plan_token.hpp"

#include "plan/wire_primitives.hpp"

namespace ringckpt::wire {

std::string encode(const SamePlan& token) {
  WireWriter w(Kind::kSamePlan, kHeaderSize + 9 + token.storage_data.size());
  w.fixed64(token.fingerprint);
  w.string(token.storage_data);
  return std::move(w).take();
}

bool is_same_plan(std::string_view bytes) noexcept {
  return bytes.size() >= kHeaderSize && static_cast<std::uint8_t>(bytes[0]) == kMagic &&
         static_cast<std::uint8_t>(bytes[1]) == kVersion &&
         static_cast<std::uint8_t>(bytes[2]) == static_cast<std::uint8_t>(Kind::kSamePlan);
}

SamePlan decode_same_plan(std::string_view bytes, const std::string& source) {
  WireReader r(bytes, Kind::kSamePlan, source);
  SamePlan token;
  token.fingerprint = r.fixed64();
  token.storage_data = r.string();
  r.finish();
  return token;
}

}  // namespace ringckpt::wire
