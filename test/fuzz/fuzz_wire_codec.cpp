// fuzz_wire_codec.cpp — the decoders of lib/plan/wire_codec.hpp on arbitrary
// bytes: the first byte picks one (save plan, load plan, write results,
// metadata, rank status), the rest is the payload.
//
// Properties: each decoder returns or throws ringckpt::Error. What it
// accepts re-encodes to a payload that decodes again to the same value, and
// encoding that is a fixed point (encoding is deterministic, what
// fingerprint() relies on).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

#include "fuzz_util.hpp"
#include "plan/wire_codec.hpp"

using namespace ringckpt;

namespace {

// decode, encode, decode again, encode again: the two values and the two
// encodings must agree (for the plan types, equal encodings are what equality
// means: every field, index hints included, is encoded).
template <typename Decode>
void round_trip(std::string_view payload, Decode&& decode) {
  const auto value = fuzz::returns_or_error([&] { return decode(payload); });
  if (!value) return;
  const std::string once =
      fuzz::must("encoding an accepted payload threw", [&] { return wire::encode(*value); });
  const auto again =
      fuzz::must("a re-encoded payload was refused", [&] { return decode(std::string_view(once)); });
  FUZZ_CHECK(wire::encode(again) == once);
  if constexpr (std::is_same_v<std::decay_t<decltype(*value)>, Metadata>) {
    FUZZ_CHECK(fuzz::same(*value, again));
  }
}

std::string encode_status(const wire::RankStatus& s) {
  return s.failure ? wire::encode_failure(*s.failure) : wire::encode_ok(s.payload);
}

bool same_status(const wire::RankStatus& a, const wire::RankStatus& b) {
  if (a.failure.has_value() != b.failure.has_value() || a.payload != b.payload) return false;
  if (!a.failure) return true;
  return a.failure->rank == b.failure->rank && a.failure->code == b.failure->code &&
         a.failure->where == b.failure->where && a.failure->message == b.failure->message;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::string_view payload(reinterpret_cast<const char*>(data) + 1, size - 1);
  const std::string source = "payload from rank 1";
  switch (data[0] % 5) {
    case 0:
      round_trip(payload, [&](std::string_view b) { return wire::decode_save_plan(b, source); });
      break;
    case 1:
      round_trip(payload, [&](std::string_view b) { return wire::decode_load_plan(b, source); });
      break;
    case 2:
      round_trip(payload,
                 [&](std::string_view b) { return wire::decode_write_results(b, source); });
      break;
    case 3:
      round_trip(payload, [&](std::string_view b) { return wire::decode_metadata(b, source); });
      break;
    default: {
      const auto status =
          fuzz::returns_or_error([&] { return wire::decode_status(payload, source); });
      if (!status) break;
      FUZZ_CHECK(!status->failure || (status->failure->rank >= 0 && status->payload.empty()));
      const std::string once =
          fuzz::must("encoding an accepted status threw", [&] { return encode_status(*status); });
      const auto again = fuzz::must("a re-encoded status was refused",
                                    [&] { return wire::decode_status(once, source); });
      FUZZ_CHECK(same_status(*status, again));
      FUZZ_CHECK(encode_status(again) == once);
      if (status->failure) {
        const Error e = wire::to_error(*status->failure);
        FUZZ_CHECK(e.code() == status->failure->code && e.where() == status->failure->where);
      }
      break;
    }
  }
  return 0;
}
