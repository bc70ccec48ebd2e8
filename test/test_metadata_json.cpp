#define BOOST_TEST_MODULE metadata_json
// metadata.json beyond the round trips and faults of test_format. Write
// results are recorded in the document as add_results records them. The one
// decoder streams the document (Boost.JSON's SAX interface): it must read a document whatever the order of its keys, skip keys it
// does not know, refuse a key given twice, and report the fault that says most
// (a damaged document is damaged before it is ill-typed).
#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>

#include <string>
#include <vector>

#include "format/extent_checksum.hpp"
#include "format/metadata_json.hpp"
#include "ringckpt/error.hpp"

namespace json = boost::json;
using namespace ringckpt;

namespace {

const std::string kMeta = "ckpt/metadata.json";

Metadata small_metadata() {
  Metadata md;
  md.state_dict_metadata["w"] =
      TensorStorageMetadata{{DType::F32}, {4, 2}, {{{0, 0}, {2, 2}}, {{2, 0}, {2, 2}}}};
  md.state_dict_metadata["tab\there \"q\""] = BytesStorageMetadata{};
  md.storage_data[MetadataIndex{"w", Shape{0, 0}, 0}] = {"__0_0.safetensors", 4096, 16};
  md.storage_data[MetadataIndex{"w", Shape{2, 0}, 1}] = {"__0_0.safetensors", 4112, 16};
  md.storage_data[MetadataIndex{"tab\there \"q\"", std::nullopt, std::nullopt}] = {
      "__0_0.safetensors", 4128, 3};
  md.files.push_back({"__0_0.safetensors", 4131, 4096, {1, 2}});
  md.planner_data = {{"k\\ey", "v\nalue"}};
  return md;
}

// `body` (a JSON object's text, without checksum) sealed as encode_metadata
// seals a document: its checksum appended as its last member, then a newline.
std::string seal(std::string body) {
  const std::uint64_t sum = checksum_of(std::as_bytes(std::span<const char>(body)));
  body.pop_back();  // '}'
  return body + ",\"checksum\":\"" + checksum_hex(sum) + "\"}\n";
}

// The document of small_metadata without its checksum, as a DOM to edit.
json::object document() {
  json::parse_options options;
  options.allow_invalid_utf8 = true;
  json::object doc = json::parse(encode_metadata(small_metadata()), {}, options).as_object();
  doc.erase("checksum");
  return doc;
}

auto corrupt_with(std::vector<std::string> words) {
  return [words = std::move(words)](const Error& e) {
    bool ok = e.code() == ErrorCode::kCorrupt && e.where() == kMeta;
    for (const auto& w : words) ok = ok && e.message().find(w) != std::string::npos;
    if (!ok) BOOST_TEST_MESSAGE("unexpected error: " << e.what());
    return ok;
  };
}

void check_equal(const Metadata& a, const Metadata& b) {
  BOOST_TEST(encode_metadata(a) == encode_metadata(b));
  BOOST_TEST_REQUIRE(a.storage_data.size() == b.storage_data.size());
  for (auto i = a.storage_data.begin(), j = b.storage_data.begin(); i != a.storage_data.end();
       ++i, ++j) {
    BOOST_TEST((i->first.index == j->first.index));
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(escaped_names_round_trip) {
  check_equal(decode_metadata(encode_metadata(small_metadata()), kMeta), small_metadata());
}

BOOST_AUTO_TEST_CASE(keys_in_any_order_and_unknown_keys_are_read_the_same) {
  json::object doc = document();
  // Every object's keys reversed, and keys this build does not know added,
  // holding values of every kind (nested ones included).
  json::object reversed;
  for (auto it = doc.end(); it != doc.begin();) {
    --it;
    reversed.emplace(it->key(), it->value());
  }
  reversed["from_the_future"] = json::parse(R"({"a": [[1, {"b": null}], "x", true, 2.5]})");
  auto& entry = reversed["storage_data"].as_array()[0].as_object();
  json::object entry_reversed;
  for (auto it = entry.end(); it != entry.begin();) {
    --it;
    entry_reversed.emplace(it->key(), it->value());
  }
  entry_reversed["note"] = "ignored";
  entry = entry_reversed;
  reversed["files"].as_array()[0].as_object()["extra"] = json::array{1, 2};
  check_equal(decode_metadata(seal(json::serialize(reversed)), kMeta), small_metadata());
}

BOOST_AUTO_TEST_CASE(a_key_given_twice_is_refused) {
  std::string body = json::serialize(document());
  // Another "w" in state_dict_metadata, then another root "files".
  std::string twice = body;
  const auto items = twice.find("\"state_dict_metadata\":{") + 23;
  twice.insert(items, R"("w":{"type":"bytes"},)");
  BOOST_CHECK_EXCEPTION(decode_metadata(seal(twice), kMeta), Error,
                        corrupt_with({"state_dict_metadata['w']", "given twice"}));
  twice = body;
  twice.insert(twice.size() - 1, R"(,"files":[])");
  BOOST_CHECK_EXCEPTION(decode_metadata(seal(twice), kMeta), Error,
                        corrupt_with({"files", "given twice"}));
}

BOOST_AUTO_TEST_CASE(values_of_the_wrong_kind_name_their_path) {
  json::object doc = document();
  doc["files"].as_array()[0].as_object()["path"] = json::array{};
  BOOST_CHECK_EXCEPTION(decode_metadata(seal(json::serialize(doc)), kMeta), Error,
                        corrupt_with({"files[0].path is an array, not a string"}));
  doc = document();
  doc["state_dict_metadata"] = json::array{};
  BOOST_CHECK_EXCEPTION(decode_metadata(seal(json::serialize(doc)), kMeta), Error,
                        corrupt_with({"state_dict_metadata is an array, not an object"}));
  doc = document();
  doc["state_dict_metadata"].as_object()["w"].as_object()["chunks"].as_array()[1] = 7;
  BOOST_CHECK_EXCEPTION(decode_metadata(seal(json::serialize(doc)), kMeta), Error,
                        corrupt_with({"state_dict_metadata['w'].chunks[1] is 7, not an object"}));
  doc = document();
  doc["storage_data"].as_array()[2].as_object().erase("length");
  BOOST_CHECK_EXCEPTION(decode_metadata(seal(json::serialize(doc)), kMeta), Error,
                        corrupt_with({"missing field 'storage_data[2].length'"}));
}

// A document damaged where it is also ill-typed is reported as damaged:
// the checksum is checked before the fields it covers.
BOOST_AUTO_TEST_CASE(the_checksum_is_judged_before_the_fields) {
  std::string text = encode_metadata(small_metadata());
  const auto at = text.find("\"size\":4131");
  BOOST_TEST_REQUIRE(at != std::string::npos);
  text.replace(at, 11, "\"size\":null");
  BOOST_CHECK_EXCEPTION(decode_metadata(text, kMeta), Error, corrupt_with({"checksum mismatch"}));
  // A checksum that is not the last member cannot be the one encode_metadata wrote.
  json::object doc = document();
  const std::string sealed = seal(json::serialize(doc));
  const auto key = sealed.find(",\"checksum\"");
  const std::string moved = "{" + sealed.substr(key + 1, sealed.size() - key - 3) + "," +
                            sealed.substr(1, key - 1) + "}\n";
  BOOST_CHECK_EXCEPTION(decode_metadata(moved, kMeta), Error,
                        corrupt_with({"checksum mismatch", "not the last member"}));
}

// encode_metadata(md, results) writes what add_results records: results in
// any order, an entry that updates one already there (which keeps its own
// index hint), and an index given twice (the first gives the key, the last
// the value).
BOOST_AUTO_TEST_CASE(results_are_recorded_as_add_results_records_them) {
  Metadata md = small_metadata();
  md.storage_data.erase(MetadataIndex{"w", Shape{2, 0}, {}});
  md.files.clear();
  std::vector<WriteResults> results(2);
  results[0].items.push_back({MetadataIndex{"w", Shape{2, 0}, 1}, 16, {"__0_0.safetensors", 1, 16}});
  results[0].items.push_back({MetadataIndex{"w", Shape{0, 0}, 9}, 16, {"__0_0.safetensors", 4096, 16}});
  results[1].items.push_back({MetadataIndex{"w", Shape{2, 0}, 7}, 16, {"__0_0.safetensors", 4112, 16}});
  results[1].files.push_back({"__0_0.safetensors", 4131, 4096, {1, 2}});

  Metadata recorded = md;
  add_results(recorded, results);
  BOOST_TEST(recorded.storage_data.size() == 3u);
  const auto updated = recorded.storage_data.find(MetadataIndex{"w", Shape{0, 0}, {}});
  BOOST_TEST(updated->first.index.value() == 0u);  // the entry's own hint
  const auto twice = recorded.storage_data.find(MetadataIndex{"w", Shape{2, 0}, {}});
  BOOST_TEST(twice->first.index.value() == 1u);  // the first result's key
  BOOST_TEST(twice->second.offset == 4112u);     // the last result's value
  BOOST_TEST(recorded.files.size() == 1u);

  const std::string text = encode_metadata(md, results);
  BOOST_TEST(text == encode_metadata(recorded));
  check_equal(decode_metadata(text, kMeta), small_metadata());
}

// ------------------------------------------------------------ storage_meta

namespace {

Metadata with_storage_meta() {
  Metadata md = small_metadata();
  md.storage_meta = StorageMeta{"/ckpt/dir \"q\"", "0123456789abcdef", "", {"model", "optim\n"}};
  return md;
}

}  // namespace

BOOST_AUTO_TEST_CASE(storage_meta_round_trips_and_is_absent_when_unset) {
  const Metadata md = with_storage_meta();
  const std::string text = encode_metadata(md);
  const Metadata back = decode_metadata(text, kMeta);
  BOOST_TEST_REQUIRE(back.storage_meta.has_value());
  BOOST_TEST((*back.storage_meta == *md.storage_meta));
  check_equal(back, md);
  // Written after planner_data, before the checksum (still the last key).
  const auto planner = text.find("\"planner_data\"");
  const auto meta = text.find("\"storage_meta\"");
  const auto checksum = text.find("\"checksum\"");
  BOOST_TEST_REQUIRE(meta != std::string::npos);
  BOOST_TEST(planner < meta);
  BOOST_TEST(meta < checksum);
  // Empty fields and no modules come back as such.
  Metadata empty = small_metadata();
  empty.storage_meta = StorageMeta{};
  BOOST_TEST((decode_metadata(encode_metadata(empty), kMeta).storage_meta == StorageMeta{}));
  // Unset: no key at all, and a document without it decodes to nullopt.
  const std::string plain = encode_metadata(small_metadata());
  BOOST_TEST(plain.find("storage_meta") == std::string::npos);
  BOOST_TEST(!decode_metadata(plain, kMeta).storage_meta.has_value());
}

// The order of its keys does not matter; keys it does not know are skipped,
// as everywhere in the document.
BOOST_AUTO_TEST_CASE(storage_meta_keys_in_any_order_and_unknown_keys) {
  json::object doc = document();
  doc["storage_meta"] = json::parse(
      R"({"modules": ["a", "b"], "future": {"x": [1]}, "load_id": "L", "save_id": "S",
          "checkpoint_id": "C"})");
  const Metadata back = decode_metadata(seal(json::serialize(doc)), kMeta);
  BOOST_TEST_REQUIRE(back.storage_meta.has_value());
  BOOST_TEST((*back.storage_meta == StorageMeta{"C", "S", "L", {"a", "b"}}));
}

BOOST_AUTO_TEST_CASE(storage_meta_of_the_wrong_kind_names_its_path) {
  const auto refused = [](json::value meta, std::vector<std::string> words) {
    json::object doc = document();
    doc["storage_meta"] = std::move(meta);
    BOOST_CHECK_EXCEPTION(decode_metadata(seal(json::serialize(doc)), kMeta), Error,
                          corrupt_with(std::move(words)));
  };
  const json::value good =
      json::parse(R"({"checkpoint_id": "c", "save_id": "s", "load_id": "", "modules": []})");
  refused(json::array{}, {"storage_meta is an array, not an object"});
  json::value bad = good;
  bad.as_object()["modules"] = json::array{"a", "b", 7};
  refused(bad, {"storage_meta.modules[2] is 7, not a string"});
  bad = good;
  bad.as_object()["modules"] = "a";
  refused(bad, {"storage_meta.modules is \"a\", not an array"});
  bad = good;
  bad.as_object()["save_id"] = 12;
  refused(bad, {"storage_meta.save_id is 12, not a string"});
  bad = good;
  bad.as_object()["checkpoint_id"] = nullptr;
  refused(bad, {"storage_meta.checkpoint_id is null, not a string"});
  bad = good;
  bad.as_object().erase("load_id");
  refused(bad, {"missing field 'storage_meta.load_id'"});
  // Given twice.
  std::string twice = json::serialize(document());
  twice.insert(twice.size() - 1, ",\"storage_meta\":" + json::serialize(good) +
                                     ",\"storage_meta\":" + json::serialize(good));
  BOOST_CHECK_EXCEPTION(decode_metadata(seal(twice), kMeta), Error,
                        corrupt_with({"storage_meta", "given twice"}));
}
