#define BOOST_TEST_MODULE format
#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "format/extent_checksum.hpp"
#include "format/metadata_json.hpp"
#include "ringckpt/dtype.hpp"
#include "ringckpt/error.hpp"
#include "ringckpt/io_options.hpp"
#include "format/safetensors.hpp"
#include "test_util.hpp"

namespace json = boost::json;
using namespace ringckpt;

namespace {

using ringckpt::test::check_same;

std::span<const std::byte> as_span(std::string_view s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

// A predicate for BOOST_CHECK_EXCEPTION: a kCorrupt Error about `file` whose
// message holds every one of `words`.
auto corrupt_with(std::string file, std::vector<std::string> words) {
  return [file = std::move(file), words = std::move(words)](const Error& e) {
    bool ok = e.code() == ErrorCode::kCorrupt && e.where() == file;
    for (const auto& w : words) ok = ok && e.message().find(w) != std::string::npos;
    if (!ok) BOOST_TEST_MESSAGE("unexpected error: " << e.what());
    return ok;
  };
}

// Parses JSON as ringckpt does: names may be any bytes, not only UTF-8.
json::value parse_lenient(std::string_view text) {
  json::parse_options options;
  options.allow_invalid_utf8 = true;
  return json::parse(text, {}, options);
}

// ------------------------------------------------------------ safetensors

const std::string kFile = "__0_0.safetensors";

// A header made of a length prefix and `text`, unpadded.
std::string raw_header(std::string_view text) {
  std::string out(8, '\0');
  std::uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + std::string(text);
}

// Decodes `text` as the header of a file with `data_bytes` after the header.
SafetensorsHeader decode_text(std::string_view text, std::uint64_t data_bytes) {
  const std::string header = raw_header(text);
  return decode_safetensors_header(as_span(header), header.size() + data_bytes, kFile);
}

// ------------------------------------------------------------ metadata

// A checkpoint with a sharded tensor, a 0-d tensor, an empty tensor and a
// blob, in two files; names chosen to stress escaping.
Metadata sample_metadata() {
  Metadata md;
  const std::string w = "model.w";
  const std::string odd = "odd \"name\"\n\x01\xff";  // quotes, newline, control byte, not UTF-8
  md.state_dict_metadata[w] =
      TensorStorageMetadata{{DType::BF16}, {4, 6}, {{{0, 0}, {2, 6}}, {{2, 0}, {2, 6}}}};
  md.state_dict_metadata[odd] =
      TensorStorageMetadata{{DType::F64}, {}, {ChunkStorageMetadata{{}, {}}}};
  md.state_dict_metadata["empty"] = TensorStorageMetadata{{DType::I32}, {0, 3}, {{{0, 0}, {0, 3}}}};
  md.state_dict_metadata["step"] = BytesStorageMetadata{};

  md.storage_data[MetadataIndex{w, Shape{0, 0}, 0}] = {"__0_0.safetensors", 4096, 24};
  md.storage_data[MetadataIndex{w, Shape{2, 0}, 1}] = {"__1_0.safetensors", 4096, 24};
  md.storage_data[MetadataIndex{odd, Shape{}, std::nullopt}] = {"__0_0.safetensors", 4120, 8};
  md.storage_data[MetadataIndex{"empty", Shape{0, 0}, 0}] = {"__0_0.safetensors", 4128, 0};
  md.storage_data[MetadataIndex{"step", std::nullopt, std::nullopt}] = {"__0_0.safetensors", 4128,
                                                                        8};

  md.files.push_back({"__0_0.safetensors", 4136, 4096, {0x0123456789abcdefULL, 42}});
  md.files.push_back({"__1_0.safetensors", 4120, 8192, {0xffffffffffffffffULL}});
  md.planner_data = {{"planner", "default"}, {"dedup", "true"}};
  return md;
}

// Re-computes the checksum of a (tampered) document, as a forger would, so
// that the checks behind the checksum are reached.
std::string reseal(json::object doc) {
  json::object body;
  for (const auto& kv : doc) {
    if (kv.key() != "checksum") body.emplace(kv.key(), kv.value());
  }
  body.emplace("checksum", checksum_hex(checksum_of(as_span(json::serialize(body)))));
  return json::serialize(body) + "\n";  // as encode_metadata ends it
}

json::object sample_document() {
  return parse_lenient(encode_metadata(sample_metadata())).as_object();
}

}  // namespace

// ================================================================ checksums

BOOST_AUTO_TEST_SUITE(checksums)

BOOST_AUTO_TEST_CASE(known_value_of_empty_input) {
  // The XXH3-64 of no bytes, seed 0, from the xxHash reference.
  BOOST_TEST(checksum_of({}) == 0x2D06800538D394C2ULL);
  ExtentChecksum sum;
  BOOST_TEST(sum.digest() == 0x2D06800538D394C2ULL);
}

BOOST_AUTO_TEST_CASE(streaming_equals_one_shot_for_any_split) {
  std::mt19937_64 rng(7);
  ExtentChecksum sum;
  for (std::size_t size : {std::size_t{0}, std::size_t{1}, std::size_t{63}, std::size_t{240},
                           std::size_t{4096}, std::size_t{100'003}, kStagingPiece + 17}) {
    std::vector<std::byte> data(size);
    for (auto& b : data) b = static_cast<std::byte>(rng());
    const std::uint64_t expected = checksum_of(data);
    for (int trial = 0; trial < 20; ++trial) {
      sum.reset();
      std::size_t at = 0;
      while (at < size) {
        // Pieces from empty to a few KiB, sometimes larger.
        std::size_t piece = rng() % (trial % 2 ? 5000 : 300);
        piece = std::min(piece, size - at);
        sum.update(std::span(data).subspan(at, piece));
        at += piece;
      }
      BOOST_TEST(sum.digest() == expected);
      BOOST_TEST(sum.digest() == expected);  // digest leaves the state as it is
    }
  }
}

BOOST_AUTO_TEST_CASE(a_changed_byte_changes_the_checksum) {
  std::vector<std::byte> data(8192, std::byte{0x5a});
  const std::uint64_t before = checksum_of(data);
  data[5000] ^= std::byte{1};
  BOOST_TEST(checksum_of(data) != before);
}

BOOST_AUTO_TEST_CASE(hex_round_trip) {
  std::mt19937_64 rng(11);
  std::vector<std::uint64_t> values = {0, 1, 0xff, std::numeric_limits<std::uint64_t>::max()};
  for (int i = 0; i < 1000; ++i) values.push_back(rng());
  for (std::uint64_t v : values) {
    const std::string hex = checksum_hex(v);
    BOOST_TEST(hex.size() == 16u);
    BOOST_TEST(hex.find_first_not_of("0123456789abcdef") == std::string::npos);
    BOOST_TEST((parse_checksum_hex(hex) == std::optional<std::uint64_t>(v)));
  }
  BOOST_TEST(checksum_hex(0xff) == "00000000000000ff");
  BOOST_TEST(checksum_hex(0x0123456789abcdefULL) == "0123456789abcdef");
}

BOOST_AUTO_TEST_CASE(hex_rejects_anything_but_16_hex_digits) {
  const std::string with_nul = std::string("0000000") + '\0' + "00000000";  // 16 characters
  for (std::string_view bad : std::initializer_list<std::string_view>{
           "", "0", "000000000000000", "00000000000000000", "0x00000000000000", "-000000000000001",
           "+000000000000001", " 000000000000001", "000000000000001 ", "00000000000000g0",
           "0000000000000z00", "00000000000000FF", "ABCDEF0123456789", with_nul}) {
    BOOST_TEST(!parse_checksum_hex(bad).has_value(), "accepted '" << bad << "'");
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ================================================================ dtypes

BOOST_AUTO_TEST_SUITE(dtypes)

BOOST_AUTO_TEST_CASE(names_round_trip_and_are_distinct) {
  std::set<std::string_view> names;
  for (DType t : kAllDTypes) {
    const std::string_view name = dtype_name(t);
    BOOST_TEST(names.insert(name).second, "name " << name << " given twice");
    BOOST_TEST((dtype_from_name(name) == std::optional<DType>(t)));
  }
  BOOST_TEST(names.size() == 15u);
  for (std::string_view bad : {"", "f32", "F33", "float32", "F8_E4M3FN", "F32 "}) {
    BOOST_TEST(!dtype_from_name(bad).has_value(), "accepted " << bad);
  }
}

BOOST_AUTO_TEST_CASE(sizes) {
  const std::map<std::string_view, std::size_t> expected = {
      {"F64", 8},     {"F32", 4},     {"F16", 2}, {"BF16", 2}, {"I64", 8},
      {"I32", 4},     {"I16", 2},     {"I8", 1},  {"U8", 1},   {"BOOL", 1},
      {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"U16", 2}, {"U32", 4},  {"U64", 8}};
  for (DType t : kAllDTypes) BOOST_TEST(dtype_size(t) == expected.at(dtype_name(t)));
}

BOOST_AUTO_TEST_SUITE_END()

// ================================================================ safetensors

BOOST_AUTO_TEST_SUITE(safetensors)

BOOST_AUTO_TEST_CASE(round_trip) {
  // Given out of begin order; includes a 0-d and an empty tensor.
  const std::vector<SafetensorsEntry> entries = {
      {"b", DType::U8, {5}, 32, 37},
      {"a", DType::F32, {2, 3}, 0, 24},
      {"scalar", DType::F64, {}, 24, 32},
      {"empty", DType::BF16, {0, 3}, 32, 32},
  };
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"step", "1000"}};
  const std::string header = encode_safetensors_header(entries, metadata);

  BOOST_TEST(header.size() % kAlignment == 0u);
  std::uint64_t prefix = 0;
  for (int i = 0; i < 8; ++i)
    prefix |= std::uint64_t{static_cast<unsigned char>(header[i])} << (8 * i);
  BOOST_TEST(prefix == header.size() - 8);
  BOOST_TEST(header.compare(8, 16, "{\"__metadata__\":") == 0);  // metadata first
  BOOST_TEST(header.back() == ' ');                              // padded with spaces
  // Entries in the order given.
  BOOST_TEST(header.find("\"b\"") < header.find("\"a\""));

  const std::uint64_t file_size = header.size() + 37;
  BOOST_TEST(decode_safetensors_header_length(as_span(header).first(8), file_size, kFile) ==
             prefix);
  const SafetensorsHeader decoded = decode_safetensors_header(as_span(header), file_size, kFile);
  BOOST_TEST(decoded.data_start == header.size());
  BOOST_TEST((decoded.metadata == metadata));
  // Sorted by begin (an empty tensor before the one that starts where it does).
  const std::vector<SafetensorsEntry> sorted = {entries[1], entries[2], entries[3], entries[0]};
  BOOST_TEST_REQUIRE(decoded.entries.size() == sorted.size());
  for (std::size_t i = 0; i < sorted.size(); ++i) {
    BOOST_TEST((decoded.entries[i] == sorted[i]),
               "entry " << i << " is " << decoded.entries[i].name);
  }
}

BOOST_AUTO_TEST_CASE(no_metadata_no_metadata_key) {
  const std::string header = encode_safetensors_header({{"x", DType::I64, {1}, 0, 8}}, {});
  BOOST_TEST(header.find("__metadata__") == std::string::npos);
  const auto decoded = decode_safetensors_header(as_span(header), header.size() + 8, kFile);
  BOOST_TEST(decoded.metadata.empty());
  BOOST_TEST(decoded.entries.size() == 1u);
}

BOOST_AUTO_TEST_CASE(empty_file_and_large_header_pad_to_alignment) {
  const std::string empty = encode_safetensors_header({}, {});
  BOOST_TEST(empty.size() == kAlignment);
  BOOST_TEST(decode_safetensors_header(as_span(empty), empty.size(), kFile).entries.empty());

  // A header longer than one page still ends on a page boundary.
  std::vector<SafetensorsEntry> many;
  for (std::uint64_t i = 0; i < 200; ++i) {
    many.push_back({"layer." + std::to_string(i) + ".weight", DType::F16, {4}, 8 * i, 8 * i + 8});
  }
  const std::string header = encode_safetensors_header(many, {});
  BOOST_TEST(header.size() > kAlignment);
  BOOST_TEST(header.size() % kAlignment == 0u);
  BOOST_TEST(
      decode_safetensors_header(as_span(header), header.size() + 1600, kFile).entries.size() ==
      200u);
}

BOOST_AUTO_TEST_CASE(a_name_given_twice_is_refused_on_encode) {
  BOOST_CHECK_THROW(
      encode_safetensors_header({{"x", DType::U8, {1}, 0, 1}, {"x", DType::U8, {1}, 1, 2}}, {}),
      Error);
  BOOST_CHECK_THROW(encode_safetensors_header({{"__metadata__", DType::U8, {1}, 0, 1}}, {}), Error);
}

BOOST_AUTO_TEST_CASE(bad_length_prefix) {
  std::string huge(8, '\0');
  const std::uint64_t n = kMaxSafetensorsHeader + 1;
  for (int i = 0; i < 8; ++i) huge[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  BOOST_CHECK_EXCEPTION(decode_safetensors_header_length(as_span(huge), n * 2, kFile), Error,
                        corrupt_with(kFile, {"length prefix", "limit"}));
  huge[7] = '\xff';  // 2^63 and more: must not wrap around
  BOOST_CHECK_EXCEPTION(decode_safetensors_header_length(as_span(huge), ~std::uint64_t{0}, kFile),
                        Error, corrupt_with(kFile, {"length prefix"}));

  const std::string header = raw_header("{}");
  BOOST_CHECK_EXCEPTION(decode_safetensors_header_length(as_span(header), header.size() - 1, kFile),
                        Error, corrupt_with(kFile, {"length prefix", "past the end"}));
  BOOST_CHECK_EXCEPTION(decode_safetensors_header(as_span(header), header.size() - 1, kFile), Error,
                        corrupt_with(kFile, {"past the end"}));
  BOOST_CHECK_EXCEPTION(decode_safetensors_header_length(as_span(header).first(5), 5, kFile), Error,
                        corrupt_with(kFile, {"shorter than the 8-byte"}));
  BOOST_CHECK_EXCEPTION(decode_safetensors_header(as_span(header).first(3), 100, kFile), Error,
                        corrupt_with(kFile, {"shorter than the 8-byte"}));
}

BOOST_AUTO_TEST_CASE(truncated_header) {
  const std::string header = encode_safetensors_header({{"x", DType::U8, {1}, 0, 1}}, {});
  // The file is large enough, but fewer header bytes were read than claimed.
  BOOST_CHECK_EXCEPTION(
      decode_safetensors_header(as_span(header).first(100), header.size() + 1, kFile), Error,
      corrupt_with(kFile, {"truncated"}));
}

BOOST_AUTO_TEST_CASE(bad_json) {
  BOOST_CHECK_EXCEPTION(decode_text("{\"x\": ", 0), Error, corrupt_with(kFile, {"not valid JSON"}));
  BOOST_CHECK_EXCEPTION(decode_text("", 0), Error, corrupt_with(kFile, {"not valid JSON"}));
  BOOST_CHECK_EXCEPTION(decode_text("{} {}", 0), Error, corrupt_with(kFile, {"not valid JSON"}));
  BOOST_CHECK_EXCEPTION(decode_text("[1, 2]", 0), Error, corrupt_with(kFile, {"not an object"}));
  BOOST_CHECK_EXCEPTION(decode_text(R"({"x": 3})", 0), Error,
                        corrupt_with(kFile, {"'x'", "not a JSON object"}));
  BOOST_CHECK_EXCEPTION(decode_text(R"({"__metadata__": {"a": 1}})", 0), Error,
                        corrupt_with(kFile, {"__metadata__", "'a'", "not a string"}));
  BOOST_CHECK_EXCEPTION(decode_text(R"({"x": {"dtype": "U8", "shape": [1]}})", 1), Error,
                        corrupt_with(kFile, {"'x'", "data_offsets"}));
}

BOOST_AUTO_TEST_CASE(unknown_dtype) {
  BOOST_CHECK_EXCEPTION(
      decode_text(R"({"x": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}})", 4), Error,
      corrupt_with(kFile, {"'x'", "unknown dtype", "F33"}));
  BOOST_CHECK_EXCEPTION(
      decode_text(R"({"x": {"dtype": 4, "shape": [1], "data_offsets": [0, 4]}})", 4), Error,
      corrupt_with(kFile, {"'x'", "dtype"}));
}

BOOST_AUTO_TEST_CASE(bad_shape_and_offsets) {
  for (std::string_view shape : {"[-1]", "[2.5]", "[\"2\"]", "3", "[null]"}) {
    const std::string text =
        R"({"x": {"dtype": "U8", "shape": )" + std::string(shape) + R"(, "data_offsets": [0, 0]}})";
    BOOST_CHECK_EXCEPTION(decode_text(text, 0), Error, corrupt_with(kFile, {"'x'", "shape"}));
  }
  for (std::string_view offsets : {"[0]", "[0, 1, 2]", "[-1, 0]", "[0, 1.0]", "{}", "[0, \"1\"]"}) {
    const std::string text =
        R"({"x": {"dtype": "U8", "shape": [1], "data_offsets": )" + std::string(offsets) + "}}";
    BOOST_CHECK_EXCEPTION(decode_text(text, 1), Error,
                          corrupt_with(kFile, {"'x'", "data_offsets"}));
  }
  BOOST_CHECK_EXCEPTION(
      decode_text(R"({"x": {"dtype": "U8", "shape": [0], "data_offsets": [4, 0]}})", 8), Error,
      corrupt_with(kFile, {"'x'", "[4, 0)", "end before"}));
}

BOOST_AUTO_TEST_CASE(offsets_disagree_with_shape) {
  BOOST_CHECK_EXCEPTION(
      decode_text(R"({"x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}})", 12),
      Error, corrupt_with(kFile, {"'x'", "[0, 12)", "hold 12 bytes", "[2,2]", "F32", "needs 16"}));
  // A shape whose byte count overflows 64 bits must not wrap to a small number.
  BOOST_CHECK_EXCEPTION(
      decode_text(
          R"({"x": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})",
          0),
      Error, corrupt_with(kFile, {"'x'", "absurd"}));
  BOOST_CHECK_EXCEPTION(
      decode_text(
          R"({"x": {"dtype": "U8", "shape": [18446744073709551615], "data_offsets": [0, 0]}})", 0),
      Error, corrupt_with(kFile, {"'x'", "shape"}));
}

BOOST_AUTO_TEST_CASE(overlap) {
  BOOST_CHECK_EXCEPTION(
      decode_text(R"({"a": {"dtype": "U8", "shape": [16], "data_offsets": [0, 16]},
                                        "b": {"dtype": "U8", "shape": [16], "data_offsets": [8, 24]}})",
                  24),
      Error, corrupt_with(kFile, {"'a'", "'b'", "overlap"}));
  // The same bytes named twice.
  BOOST_CHECK_EXCEPTION(
      decode_text(R"({"a": {"dtype": "U8", "shape": [16], "data_offsets": [0, 16]},
                                        "b": {"dtype": "U8", "shape": [16], "data_offsets": [0, 16]}})",
                  16),
      Error, corrupt_with(kFile, {"overlap"}));
}

BOOST_AUTO_TEST_CASE(holes) {
  BOOST_CHECK_EXCEPTION(
      decode_text(R"({"a": {"dtype": "U8", "shape": [16], "data_offsets": [0, 16]},
                                        "b": {"dtype": "U8", "shape": [4], "data_offsets": [20, 24]}})",
                  24),
      Error, corrupt_with(kFile, {"hole of 4 bytes", "'a'", "'b'"}));
  BOOST_CHECK_EXCEPTION(
      decode_text(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}})", 8), Error,
      corrupt_with(kFile, {"hole of 4 bytes", "start"}));
  // Bytes after the last tensor belong to no tensor.
  BOOST_CHECK_EXCEPTION(
      decode_text(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}})", 9), Error,
      corrupt_with(kFile, {"hole of 5 bytes", "end"}));
  BOOST_CHECK_EXCEPTION(decode_text("{}", 1), Error, corrupt_with(kFile, {"hole"}));
}

BOOST_AUTO_TEST_CASE(beyond_the_file) {
  BOOST_CHECK_EXCEPTION(
      decode_text(R"({"a": {"dtype": "U8", "shape": [16], "data_offsets": [0, 16]}})", 10), Error,
      corrupt_with(kFile, {"'a'", "[0, 16)", "beyond the end"}));
}

BOOST_AUTO_TEST_SUITE_END()

// ================================================================ metadata

BOOST_AUTO_TEST_SUITE(metadata)

const std::string kMeta = "ckpt/metadata.json";

BOOST_AUTO_TEST_CASE(round_trip_keeps_every_field) {
  const Metadata md = sample_metadata();
  const std::string text = encode_metadata(md);
  check_same(decode_metadata(text, kMeta), md);

  // The layout is the documented one, checksum last.
  const json::object doc = parse_lenient(text).as_object();
  std::vector<std::string> keys;
  for (const auto& kv : doc) keys.emplace_back(kv.key());
  BOOST_TEST(
      (keys == std::vector<std::string>{"format", "version", "state_dict_metadata", "storage_data",
                                        "files", "planner_data", "checksum"}));
  BOOST_TEST(doc.at("format").as_string() == "ringckpt");
  BOOST_TEST(doc.at("version").as_int64() == 1);
}

BOOST_AUTO_TEST_CASE(empty_checkpoint_round_trips) {
  const Metadata md;
  check_same(decode_metadata(encode_metadata(md), kMeta), md);
}

BOOST_AUTO_TEST_CASE(every_flipped_bit_is_detected) {
  const std::string text = encode_metadata(sample_metadata());
  std::size_t missed = 0, wrong_kind = 0;
  for (std::size_t at = 0; at < text.size(); ++at) {
    for (unsigned mask : {0x01u, 0x02u, 0x04u, 0x08u, 0x10u, 0x20u, 0x40u, 0x80u, 0xffu}) {
      std::string damaged = text;
      damaged[at] = static_cast<char>(damaged[at] ^ mask);
      try {
        decode_metadata(damaged, kMeta);
        ++missed;
        BOOST_TEST_MESSAGE("undetected: byte " << at << " ^ " << mask);
      } catch (const Error& e) {
        if (e.code() != ErrorCode::kCorrupt || e.where() != kMeta) ++wrong_kind;
      } catch (...) {
        ++wrong_kind;
      }
    }
  }
  BOOST_TEST(missed == 0u);
  BOOST_TEST(wrong_kind == 0u);
}

BOOST_AUTO_TEST_CASE(checksum_mismatch_is_named) {
  std::string text = encode_metadata(sample_metadata());
  const auto at = text.find("\"default\"");
  text[at + 1] = 'D';
  BOOST_CHECK_EXCEPTION(decode_metadata(text, kMeta), Error,
                        corrupt_with(kMeta, {"checksum mismatch", "modified or damaged"}));
  json::object doc = sample_document();
  doc.erase("checksum");
  BOOST_CHECK_EXCEPTION(decode_metadata(json::serialize(doc), kMeta), Error,
                        corrupt_with(kMeta, {"missing field", "checksum"}));
  doc = sample_document();
  doc["checksum"] = "xyz";
  BOOST_CHECK_EXCEPTION(decode_metadata(json::serialize(doc), kMeta), Error,
                        corrupt_with(kMeta, {"checksum", "16 hex digits"}));
}

BOOST_AUTO_TEST_CASE(not_a_checkpoint_or_another_version) {
  for (std::string_view text : {"{}", "[]", "42", R"({"format": "other", "version": 1})"}) {
    BOOST_CHECK_EXCEPTION(decode_metadata(text, kMeta), Error,
                          corrupt_with(kMeta, {"not a ringckpt checkpoint"}));
  }
  BOOST_CHECK_EXCEPTION(decode_metadata("", kMeta), Error, corrupt_with(kMeta, {"not valid JSON"}));
  Metadata md = sample_metadata();
  md.version = 7;
  BOOST_CHECK_EXCEPTION(decode_metadata(encode_metadata(md), kMeta), Error,
                        corrupt_with(kMeta, {"unsupported version 7", "reads 1"}));
}

BOOST_AUTO_TEST_CASE(paths_outside_the_directory_are_refused) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"../evil.safetensors", "escapes"},
      {"/etc/passwd", "escapes"},
      {"a/b", "not a plain file name"},
      {"..", "escapes"},
      {".", "not a plain file name"},
      {"", "not a plain file name"},
      {std::string("a\0b", 3), "not a plain file name"},
      {"metadata.json", "metadata file"}};
  for (const auto& [path, words] : cases) {
    Metadata md = sample_metadata();
    md.files[0].relative_path = path;
    for (auto& [index, info] : md.storage_data) {
      if (info.relative_path == "__0_0.safetensors") info.relative_path = path;
    }
    BOOST_CHECK_EXCEPTION(decode_metadata(encode_metadata(md), kMeta), Error,
                          corrupt_with(kMeta, {"files[0].path '" + path + "'", words}));
  }
}

BOOST_AUTO_TEST_CASE(is_plain_file_name_cases) {
  for (std::string_view good : {"__0_0.safetensors", "a", "..a", "a..", ".hidden", "a b"}) {
    BOOST_TEST(is_plain_file_name(good), good);
  }
  for (std::string_view bad : std::initializer_list<std::string_view>{
           "", ".", "..", "a/b", "/a", "a/", "../a", std::string_view("a\0b", 3)}) {
    BOOST_TEST(!is_plain_file_name(bad), bad);
  }
}

BOOST_AUTO_TEST_CASE(storage_beyond_the_file_is_refused) {
  Metadata md = sample_metadata();
  md.files[1].size = 4100;  // one extent still; the chunk at 4096 needs 24 bytes
  BOOST_CHECK_EXCEPTION(
      decode_metadata(encode_metadata(md), kMeta), Error,
      corrupt_with(kMeta, {"storage entry 'model.w' chunk at [2,0]",
                           "beyond the end of __1_0.safetensors", "offset 4096 + 24 > size 4100"}));
  // Sizes near 2^64 must not wrap.
  md = sample_metadata();
  md.storage_data.begin()->second.offset = std::numeric_limits<std::uint64_t>::max() - 2;
  BOOST_CHECK_EXCEPTION(decode_metadata(encode_metadata(md), kMeta), Error,
                        corrupt_with(kMeta, {"byte_offset", "2^62"}));
}

BOOST_AUTO_TEST_CASE(extent_checksums_must_match_the_size) {
  Metadata md = sample_metadata();
  md.files[0].extent_checksums.push_back(7);
  BOOST_CHECK_EXCEPTION(decode_metadata(encode_metadata(md), kMeta), Error,
                        corrupt_with(kMeta, {"files[0].checksums", "holds 3", "make 2"}));
  md = sample_metadata();
  md.files[1].extent_checksums.clear();
  BOOST_CHECK_EXCEPTION(decode_metadata(encode_metadata(md), kMeta), Error,
                        corrupt_with(kMeta, {"files[1].checksums", "holds 0", "make 1"}));
  md = sample_metadata();
  md.files[0].extent_size = 1000;
  BOOST_CHECK_EXCEPTION(decode_metadata(encode_metadata(md), kMeta), Error,
                        corrupt_with(kMeta, {"files[0].extent_size 1000", "multiple of 4096"}));
  md = sample_metadata();
  md.files.push_back(md.files[0]);
  BOOST_CHECK_EXCEPTION(decode_metadata(encode_metadata(md), kMeta), Error,
                        corrupt_with(kMeta, {"files[2].path", "listed twice"}));
}

BOOST_AUTO_TEST_CASE(chunks_and_lengths_must_agree_with_the_tensor) {
  auto tensor = [](Metadata& md) -> TensorStorageMetadata& {
    return std::get<TensorStorageMetadata>(md.state_dict_metadata.at("model.w"));
  };
  Metadata md = sample_metadata();
  md.storage_data.at(MetadataIndex{"model.w", Shape{0, 0}, {}}).length = 23;
  BOOST_CHECK_EXCEPTION(decode_metadata(encode_metadata(md), kMeta), Error,
                        corrupt_with(kMeta, {"'model.w'", "23 bytes", "needs 24"}));

  md = sample_metadata();
  tensor(md).chunks[1].sizes = {3, 6};  // rows 2..4 of a 4-row tensor
  BOOST_CHECK_EXCEPTION(decode_metadata(encode_metadata(md), kMeta), Error,
                        corrupt_with(kMeta, {"'model.w'", "outside"}));

  md = sample_metadata();
  tensor(md).chunks[1].offsets = {1, 0};  // rows 0-1 and 1-2 overlap
  md.storage_data.erase(MetadataIndex{"model.w", Shape{2, 0}, {}});
  md.storage_data[MetadataIndex{"model.w", Shape{1, 0}, 1}] = {"__1_0.safetensors", 4096, 24};
  BOOST_CHECK_EXCEPTION(decode_metadata(encode_metadata(md), kMeta), Error,
                        corrupt_with(kMeta, {"'model.w'", "overlap"}));

  md = sample_metadata();
  tensor(md).chunks.pop_back();
  md.storage_data.erase(MetadataIndex{"model.w", Shape{2, 0}, {}});
  BOOST_CHECK_EXCEPTION(decode_metadata(encode_metadata(md), kMeta), Error,
                        corrupt_with(kMeta, {"'model.w'", "uncovered", "12 of 24"}));

  md = sample_metadata();
  md.storage_data.erase(MetadataIndex{"model.w", Shape{2, 0}, {}});
  BOOST_CHECK_EXCEPTION(decode_metadata(encode_metadata(md), kMeta), Error,
                        corrupt_with(kMeta, {"'model.w' chunk at [2,0]", "no storage entry"}));

  md = sample_metadata();
  md.storage_data[MetadataIndex{"ghost", std::nullopt, {}}] = {"__0_0.safetensors", 0, 1};
  BOOST_CHECK_EXCEPTION(decode_metadata(encode_metadata(md), kMeta), Error,
                        corrupt_with(kMeta, {"'ghost'", "names no item"}));

  md = sample_metadata();
  md.storage_data.begin()->second.relative_path = "__9_9.safetensors";
  BOOST_CHECK_EXCEPTION(decode_metadata(encode_metadata(md), kMeta), Error,
                        corrupt_with(kMeta, {"'__9_9.safetensors'", "does not list"}));
}

BOOST_AUTO_TEST_CASE(forged_documents_are_checked_behind_the_checksum) {
  struct Case {
    std::string pointer;  // a JSON pointer into the document
    json::value value;
    std::vector<std::string> words;
  };
  const std::vector<Case> cases = {
      {"/state_dict_metadata/model.w/dtype", "F33", {"unknown dtype", "F33"}},
      {"/state_dict_metadata/model.w/size/0", -4, {"state_dict_metadata['model.w'].size[0]"}},
      {"/state_dict_metadata/model.w/size/0", 4.0, {"size[0]"}},
      {"/state_dict_metadata/model.w/size/0", std::uint64_t{1} << 63, {"2^62"}},
      {"/state_dict_metadata/model.w/type", "blob", {"'blob'"}},
      {"/state_dict_metadata/empty/chunks/0/sizes", json::array{0}, {"'empty'", "rank"}},
      {"/files/0/size", "4136", {"files[0].size", "not an integer"}},
      {"/files/1/checksums/0", "ffff", {"files[1].checksums[0]", "16 hex digits"}},
      {"/storage_data/0/length", -1, {"storage_data[0].length"}},
      {"/planner_data/dedup", 1, {"planner_data['dedup']", "not a string"}},
      {"/storage_data/0/offset", nullptr, {"no chunk offset"}},
  };
  for (const auto& c : cases) {
    json::object doc = sample_document();
    json::value root = doc;
    root.at_pointer(c.pointer) = c.value;
    BOOST_CHECK_EXCEPTION(decode_metadata(reseal(root.as_object()), kMeta), Error,
                          corrupt_with(kMeta, c.words));
  }
  for (std::string_view field : {"files", "storage_data", "state_dict_metadata", "planner_data"}) {
    json::object doc = sample_document();
    doc.erase(field);
    BOOST_CHECK_EXCEPTION(decode_metadata(reseal(doc), kMeta), Error,
                          corrupt_with(kMeta, {"missing field '" + std::string(field) + "'"}));
  }
  json::object doc = sample_document();
  doc["files"].as_array()[0].as_object().erase("extent_size");
  BOOST_CHECK_EXCEPTION(decode_metadata(reseal(doc), kMeta), Error,
                        corrupt_with(kMeta, {"missing field 'files[0].extent_size'"}));
  // The same storage entry twice.
  doc = sample_document();
  auto& storage = doc["storage_data"].as_array();
  storage.push_back(storage[0]);
  BOOST_CHECK_EXCEPTION(decode_metadata(reseal(doc), kMeta), Error,
                        corrupt_with(kMeta, {"repeats"}));
}

BOOST_AUTO_TEST_SUITE_END()

