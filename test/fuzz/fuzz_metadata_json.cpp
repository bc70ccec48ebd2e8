// fuzz_metadata_json.cpp — decode_metadata (lib/format/metadata_json.hpp) on
// arbitrary bytes.
//
// Properties: it returns or throws ringckpt::Error. What it accepts
// re-encodes (encode_metadata) to a document it accepts again, equal field by
// field, and encoding that is a fixed point (the same bytes); the wire codec
// carries it across ranks unchanged.
//
// The document's own checksum would stop nearly every mutation at the door,
// so an input that ends as encode_metadata ends it (...,"checksum":"<16
// characters>"}) is also decoded resealed: with the checksum of what it says
// put in place, the fields behind the checksum are fuzzed too.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "format/extent_checksum.hpp"
#include "format/metadata_json.hpp"
#include "fuzz_util.hpp"
#include "plan/wire_codec.hpp"

using namespace ringckpt;

namespace {

// `text` with its checksum member's value replaced by the checksum of the
// document without that member, and ending as encode_metadata ends a file
// ("}" and one newline), if it ends with such a member; else "".
std::string resealed(std::string_view text) {
  while (!text.empty() && (text.back() == ' ' || text.back() == '\n' || text.back() == '\r' ||
                           text.back() == '\t')) {
    text.remove_suffix(1);
  }
  constexpr std::string_view kKey = ",\"checksum\":\"";
  constexpr std::size_t kTail = kKey.size() + 16 + 2;
  if (text.size() < kTail + 1 || !text.ends_with("\"}")) return {};
  const std::size_t at = text.size() - kTail;
  if (text.substr(at, kKey.size()) != kKey) return {};
  std::string without(text.substr(0, at));
  without += '}';
  std::string out(text);
  out.replace(at + kKey.size(), 16, checksum_hex(checksum_of(std::as_bytes(std::span(without)))));
  out += '\n';
  return out;
}

void check(std::string_view text) {
  const std::string file = "fuzz/metadata.json";
  const auto decoded = fuzz::returns_or_error([&] { return decode_metadata(text, file); });
  if (!decoded) return;
  // A document the decoder accepts is sealed already: resealing leaves it as
  // it is (else the resealed inputs below would never pass the checksum).
  FUZZ_CHECK(resealed(text) == text);

  const std::string once = fuzz::must("encode_metadata of accepted metadata threw",
                                      [&] { return encode_metadata(*decoded); });
  const Metadata again = fuzz::must("re-encoded metadata.json was refused",
                                    [&] { return decode_metadata(once, file); });
  FUZZ_CHECK(fuzz::same(*decoded, again));
  FUZZ_CHECK(encode_metadata(again) == once);

  const std::string wire_bytes = fuzz::must("wire::encode of accepted metadata threw",
                                            [&] { return wire::encode(*decoded); });
  const Metadata crossed = fuzz::must("the wire codec refused accepted metadata", [&] {
    return wire::decode_metadata(wire_bytes, "metadata from rank 0");
  });
  FUZZ_CHECK(fuzz::same(*decoded, crossed));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  check(text);
  const std::string sealed = resealed(text);
  if (!sealed.empty() && sealed != text) check(sealed);
  return 0;
}
