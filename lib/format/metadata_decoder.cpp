// metadata_decoder.cpp — metadata.json decoded in
// one streaming pass over Boost.JSON's parser events (its SAX interface),
// without building a DOM: memory stays near the size of the result.
//
// metadata.json may be damaged or hostile: every field is checked for its
// type and range as it streams past, and the first fault is recorded with the
// path of the field ("files[0].size"). The parse always runs to the end of
// the text (after a fault, values are only skipped), so that the faults that
// say most are reported first: not JSON, not a ringckpt document, another
// version, a wrong checksum, and only then the field at fault.
#include "format/metadata_document.hpp"
#include "format/metadata_json.hpp"

#include <boost/json/basic_parser_impl.hpp>

#include <limits>
#include <optional>
#include <span>
#include <utility>

#include "format/extent_checksum.hpp"
#include "format/metadata_checks.hpp"
#include "format/metadata_handler.hpp"
#include "ringckpt/error.hpp"

namespace ringckpt {
namespace {

namespace json = boost::json;
using detail::metadata_handler::MetadataHandler;

// How encode_metadata ends metadata.json: the closing brace of the root and
// one newline. Nothing else may follow the document.
constexpr std::string_view kDocumentEnd = "}\n";

// The checksum of the document as written without its checksum member, if
// that member ends it as encode_metadata writes it: ...,"checksum":"<hex>"}
// and the newline. The document without it is the text before the comma and
// "}".
// REQUIRES: `text` ends with kDocumentEnd (checked before, as its own fault).
std::optional<std::uint64_t> checksum_without_member(std::string_view text) {
  text.remove_suffix(kDocumentEnd.size() - 1);  // the newline; the brace stays
  constexpr std::string_view kKey = ",\"checksum\":\"";
  constexpr std::size_t kTail = kKey.size() + 16 + 2;  // key, digits, '"', '}'
  if (text.size() < kTail + 1 || !text.ends_with("\"}")) return std::nullopt;
  const std::size_t at = text.size() - kTail;
  if (text.substr(at, kKey.size()) != kKey) return std::nullopt;
  ExtentChecksum hash;
  hash.update(std::as_bytes(std::span<const char>(text.data(), at)));
  hash.update(std::as_bytes(std::span<const char>("}", 1)));
  return hash.digest();
}

[[noreturn]] void corrupt(const std::string& where, std::string message) {
  throw Error(ErrorCode::kCorrupt, where, std::move(message));
}

// The faults of the root members, in the order that says most.
void check_file_root(const MetadataHandler& h, std::string_view text, const std::string& where) {
  if (!h.root_is_object) corrupt(where, "not a ringckpt checkpoint (the document is not a JSON object)");
  if (!h.format_ok) corrupt(where, "not a ringckpt checkpoint (\"format\" is not \"ringckpt\")");
  // The version before the checksum: another version may hash differently.
  if (!h.has_version) corrupt(where, "missing field 'version'");
  if (!h.version) corrupt(where, "version " + h.version_text + " is not an integer");
  if (*h.version != Metadata::kVersion) {
    corrupt(where, "unsupported version " + std::to_string(*h.version) + " (this build reads " +
                       std::to_string(Metadata::kVersion) + ")");
  }
  if (!h.has_checksum) corrupt(where, "missing field 'checksum'");
  if (!h.checksum) corrupt(where, "checksum is " + h.checksum_text + ", not 16 hex digits");
  // Bytes appended after the document (whitespace included, which JSON
  // ignores) or its final newline changed are damage like any other byte.
  if (!text.ends_with(kDocumentEnd)) {
    corrupt(where, "trailing bytes after the document: " + std::string(kMetadataFile) +
                       " does not end with '}' and one newline as written");
  }
  const std::optional<std::uint64_t> computed = checksum_without_member(text);
  if (computed != h.checksum) {
    corrupt(where, std::string("checksum mismatch: ") + kMetadataFile +
                       " was modified or damaged (stored " + checksum_hex(*h.checksum) +
                       (computed ? ", computed " + checksum_hex(*computed)
                                 : "; the checksum is not the last member as written") +
                       ")");
  }
}

}  // namespace

namespace detail {

Metadata decode_metadata_text(std::string_view text, const std::string& where) {
  json::parse_options options;
  options.allow_invalid_utf8 = true;  // names are bytes to us; keep what was written
  json::basic_parser<MetadataHandler> parser(options);
  json::error_code ec;
  const std::size_t consumed = parser.write_some(false, text.data(), text.size(), ec);
  if (ec) {
    corrupt(where, "not valid JSON (" + ec.message() + " near byte " + std::to_string(consumed) + ")");
  }
  MetadataHandler& h = parser.handler();
  check_file_root(h, text, where);
  if (h.fault) corrupt(where, std::move(*h.fault));
  h.md.version = static_cast<int>(*h.version);
  return std::move(h.md);
}

}  // namespace detail

Metadata decode_metadata(std::string_view text, const std::string& file) {
  Metadata md = detail::decode_metadata_text(text, file);
  detail::check_metadata(md, file);
  return md;
}

}  // namespace ringckpt
