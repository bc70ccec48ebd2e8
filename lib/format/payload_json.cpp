// payload_json.cpp — the payloads that cross ranks (save and load plans,
// write results, metadata), as JSON through Boost.JSON. They come from
// another rank of the same job: decoded losslessly (negative numbers
// included) and checked only for shape (types and presence of fields); the
// metadata payload is read by the streaming metadata decoder.
//
// To be replaced by a binary wire codec: nothing but the payloads uses this
// file.
#include "format/payload_json.hpp"

#include <boost/json.hpp>

#include <limits>
#include <optional>
#include <utility>

#include "format/extent_checksum.hpp"
#include "format/json_append.hpp"
#include "format/json_encode.hpp"
#include "format/message_text.hpp"
#include "format/metadata_document.hpp"
#include "format/tensor_geometry.hpp"
#include "ringckpt/error.hpp"

namespace ringckpt {
namespace {

namespace json = boost::json;
using detail::in_quotes;
using detail::JsonStorage;
using detail::to_json;

constexpr std::uint64_t kMaxValue = detail::kMaxTensorBytes;

// The parsed payloads live in an arena of their own.
JsonStorage arena(std::size_t initial_bytes) { return detail::json_arena(initial_bytes); }

// json::serialize of `doc` into a string sized ahead of time.
std::string serialized(const json::object& doc, std::size_t size_hint) {
  std::string out;
  out.reserve(size_hint);
  detail::serialize_append(out, doc);
  return out;
}

std::string_view type_name(WriteItemType type) {
  switch (type) {
    case WriteItemType::TENSOR:
      return "TENSOR";
    case WriteItemType::SHARD:
      return "SHARD";
    case WriteItemType::BYTE_IO:
      return "BYTE_IO";
  }
  return "?";
}

std::string_view type_name(LoadItemType type) {
  switch (type) {
    case LoadItemType::TENSOR:
      return "TENSOR";
    case LoadItemType::BYTE_IO:
      return "BYTE_IO";
  }
  return "?";
}

// The path of a field in a document, for messages: "files[0].size",
// "state_dict_metadata['w'].chunks[1]". Paths are built on the stack as the
// reader descends and turned into text only when a fault is reported.
class Path {
 public:
  // A root: "" (the document itself) or a label ("files", "the payload").
  explicit Path(std::string_view label = {}) : label_(label) {}

  // "path.key", or "key" under the empty root.
  Path field(std::string_view key) const { return Path(this, Kind::field, key, 0); }
  // "path[i]".
  Path at(std::size_t i) const { return Path(this, Kind::index, {}, i); }
  // "path['key']".
  Path keyed(std::string_view key) const { return Path(this, Kind::keyed, key, 0); }

  std::string str() const {
    switch (kind_) {
      case Kind::root:
        return std::string(label_);
      case Kind::field: {
        std::string p = parent_->str();
        return p.empty() ? std::string(label_) : p + "." + std::string(label_);
      }
      case Kind::index:
        return parent_->str() + "[" + std::to_string(index_) + "]";
      case Kind::keyed:
        return parent_->str() + "[" + in_quotes(label_) + "]";
    }
    return {};
  }

 private:
  enum class Kind : std::uint8_t { root, field, index, keyed };
  Path(const Path* parent, Kind kind, std::string_view label, std::size_t index)
      : parent_(parent), kind_(kind), label_(label), index_(index) {}

  const Path* parent_ = nullptr;
  Kind kind_ = Kind::root;
  std::string_view label_;
  std::size_t index_ = 0;
};

std::string_view view(json::string_view s) { return {s.data(), s.size()}; }

// Reads typed fields out of parsed JSON. Every fault throws
// Error(kCorrupt, where, message) with the path of the field at fault.
// A strict reader (metadata.json) also holds every number to [0, kMaxValue];
// a lenient one (payloads) accepts the full range of the C++ type.
class Reader {
 public:
  Reader(std::string where, bool strict) : where_(std::move(where)), strict_(strict) {}

  [[noreturn]] void fail(std::string message) const {
    throw Error(ErrorCode::kCorrupt, where_, std::move(message));
  }

  // The parsed document lives in an arena that it holds itself.
  json::value parse(std::string_view text) const {
    json::parse_options options;
    options.allow_invalid_utf8 = true;  // names are bytes to us; keep what was written
    json::parser parser(arena(text.size()), options);
    json::error_code ec;
    const std::size_t consumed = parser.write(text.data(), text.size(), ec);
    if (ec) {
      fail("not valid JSON (" + ec.message() + " near byte " + std::to_string(consumed) + ")");
    }
    return parser.release();
  }

  const json::value& field(const json::object& obj, std::string_view key, const Path& path) const {
    const json::value* v = obj.if_contains(key);
    if (v == nullptr) fail("missing field " + in_quotes(path.field(key).str()));
    return *v;
  }

  const json::object& object(const json::value& v, const Path& path) const {
    if (const json::object* o = v.if_object()) return *o;
    fail(path.str() + " is " + excerpt(v) + ", not an object");
  }

  const json::array& array(const json::value& v, const Path& path) const {
    if (const json::array* a = v.if_array()) return *a;
    fail(path.str() + " is " + excerpt(v) + ", not an array");
  }

  std::string_view string_view(const json::value& v, const Path& path) const {
    if (const json::string* s = v.if_string()) return view(*s);
    fail(path.str() + " is " + excerpt(v) + ", not a string");
  }

  std::string string(const json::value& v, const Path& path) const {
    return std::string(string_view(v, path));
  }

  bool boolean(const json::value& v, const Path& path) const {
    if (const bool* b = v.if_bool()) return *b;
    fail(path.str() + " is " + excerpt(v) + ", not true or false");
  }

  std::uint64_t u64(const json::value& v, const Path& path) const {
    std::optional<std::uint64_t> x;
    if (v.is_uint64()) x = v.get_uint64();
    if (v.is_int64() && v.get_int64() >= 0) x = static_cast<std::uint64_t>(v.get_int64());
    if (!x || (strict_ && *x > kMaxValue)) fail(path.str() + " is " + excerpt(v) + ", " + range());
    return *x;
  }

  // A dimension, offset or length of a shape.
  std::int64_t dim(const json::value& v, const Path& path) const {
    if (strict_) return static_cast<std::int64_t>(u64(v, path));
    if (v.is_int64()) return v.get_int64();
    if (v.is_uint64() && v.get_uint64() <= std::numeric_limits<std::int64_t>::max()) {
      return static_cast<std::int64_t>(v.get_uint64());
    }
    fail(path.str() + " is " + excerpt(v) + ", not a 64-bit integer");
  }

  int integer(const json::value& v, const Path& path) const {
    if (v.is_int64() && v.get_int64() >= std::numeric_limits<int>::min() &&
        v.get_int64() <= std::numeric_limits<int>::max()) {
      return static_cast<int>(v.get_int64());
    }
    fail(path.str() + " is " + excerpt(v) + ", not an integer");
  }

  Shape shape(const json::value& v, const Path& path) const {
    const json::array& a = array(v, path);
    Shape out;
    out.reserve(a.size());
    for (std::size_t i = 0; i < a.size(); ++i) out.push_back(dim(a[i], path.at(i)));
    return out;
  }

  DType dtype(const json::value& v, const Path& path) const {
    const std::string_view name = string_view(v, path);
    if (auto t = dtype_from_name(name)) return *t;
    fail(path.str() + " names unknown dtype " + in_quotes(name));
  }

  std::uint64_t checksum(const json::value& v, const Path& path) const {
    const json::string* s = v.if_string();
    std::optional<std::uint64_t> value = s ? parse_checksum_hex(view(*s)) : std::nullopt;
    if (!value) fail(path.str() + " is " + excerpt(v) + ", not 16 hex digits");
    return *value;
  }

  std::map<std::string, std::string> string_map(const json::value& v, const Path& path) const {
    std::map<std::string, std::string> out;
    for (const auto& kv : object(v, path)) {
      out.emplace(std::string(view(kv.key())), string(kv.value(), path.keyed(view(kv.key()))));
    }
    return out;
  }

  // An optional field: absent or null is nullopt.
  static const json::value* optional(const json::object& obj, std::string_view key) {
    const json::value* v = obj.if_contains(key);
    return (v == nullptr || v->is_null()) ? nullptr : v;
  }

 private:
  // A value as it appears in the document, cut short if long.
  static std::string excerpt(const json::value& v) {
    std::string text = json::serialize(v);
    if (text.size() > 40) text = text.substr(0, 37) + "...";
    return text;
  }

  std::string range() const {
    return strict_ ? "not an integer in [0, 2^62]" : "not a non-negative 64-bit integer";
  }

  std::string where_;
  bool strict_;
};

MetadataIndex read_index(const Reader& r, const json::object& obj, const Path& path) {
  MetadataIndex index;
  index.fqn = r.string(r.field(obj, "fqn", path), path.field("fqn"));
  if (const json::value* offset = Reader::optional(obj, "offset")) {
    index.offset = r.shape(*offset, path.field("offset"));
  }
  if (const json::value* hint = Reader::optional(obj, "index")) {
    const std::uint64_t value = r.u64(*hint, path.field("index"));
    if (value > std::numeric_limits<std::size_t>::max())
      r.fail(path.field("index").str() + " is too large");
    index.index = static_cast<std::size_t>(value);
  }
  return index;
}

MetadataIndex read_index(const Reader& r, const json::value& v, const Path& path) {
  return read_index(r, r.object(v, path), path);
}

ChunkStorageMetadata read_chunk(const Reader& r, const json::value& v, const Path& path) {
  const json::object& obj = r.object(v, path);
  ChunkStorageMetadata chunk;
  chunk.offsets = r.shape(r.field(obj, "offsets", path), path.field("offsets"));
  chunk.sizes = r.shape(r.field(obj, "sizes", path), path.field("sizes"));
  return chunk;
}

FileInfo read_file(const Reader& r, const json::value& v, const Path& path) {
  const json::object& obj = r.object(v, path);
  FileInfo file;
  file.relative_path = r.string(r.field(obj, "path", path), path.field("path"));
  file.size = r.u64(r.field(obj, "size", path), path.field("size"));
  file.extent_size = r.u64(r.field(obj, "extent_size", path), path.field("extent_size"));
  const Path sums_path = path.field("checksums");
  const json::array& sums = r.array(r.field(obj, "checksums", path), sums_path);
  file.extent_checksums.reserve(sums.size());
  for (std::size_t i = 0; i < sums.size(); ++i) {
    file.extent_checksums.push_back(r.checksum(sums[i], sums_path.at(i)));
  }
  return file;
}

std::vector<FileInfo> read_files(const Reader& r, const json::value& v, const Path& path) {
  const json::array& files = r.array(v, path);
  std::vector<FileInfo> out;
  out.reserve(files.size());
  for (std::size_t i = 0; i < files.size(); ++i) out.push_back(read_file(r, files[i], path.at(i)));
  return out;
}

StorageInfo read_storage_info(const Reader& r, const json::value& v, const Path& path) {
  const json::object& obj = r.object(v, path);
  StorageInfo info;
  info.relative_path = r.string(r.field(obj, "file", path), path.field("file"));
  info.offset = r.u64(r.field(obj, "offset", path), path.field("offset"));
  info.length = r.u64(r.field(obj, "length", path), path.field("length"));
  return info;
}

// Type checks and lossless decoding of the payloads.
WriteItemType read_write_type(const Reader& r, const json::value& v, const Path& path) {
  const std::string_view name = r.string_view(v, path);
  for (auto t : {WriteItemType::TENSOR, WriteItemType::SHARD, WriteItemType::BYTE_IO}) {
    if (type_name(t) == name) return t;
  }
  r.fail(path.str() + " names unknown write item type " + in_quotes(name));
}

LoadItemType read_load_type(const Reader& r, const json::value& v, const Path& path) {
  const std::string_view name = r.string_view(v, path);
  for (auto t : {LoadItemType::TENSOR, LoadItemType::BYTE_IO}) {
    if (type_name(t) == name) return t;
  }
  r.fail(path.str() + " names unknown read item type " + in_quotes(name));
}

const char* const kPlanPayload = "plan payload";

}  // namespace

std::string encode_metadata_payload(const Metadata& metadata) {
  const std::size_t hint = detail::metadata_size_hint(metadata);
  json::monotonic_resource mr(detail::metadata_arena_bytes(hint));
  const JsonStorage sp(&mr);
  const json::object doc = detail::metadata_document(metadata, sp);
  std::string text;
  text.reserve(hint);
  detail::serialize_append(text, doc);
  return text;
}

Metadata decode_metadata_payload(std::string_view text) {
  return detail::decode_metadata_text(text, "metadata payload", detail::MetadataText::payload);
}

std::string encode_save_plan(const SavePlan& plan) {
  json::monotonic_resource mr(256 + plan.items.size() * 400);
  const JsonStorage sp(&mr);
  json::array items(sp);
  items.reserve(plan.items.size());
  for (const WriteItem& item : plan.items) {
    json::object o(sp);
    o.reserve(4);
    o.emplace("index", to_json(item.index, sp));
    o.emplace("type", type_name(item.type));
    if (item.tensor_data) {
      json::object td(sp);
      td.reserve(3);
      td.emplace("chunk", to_json(item.tensor_data->chunk, sp));
      td.emplace("dtype", dtype_name(item.tensor_data->properties.dtype));
      td.emplace("size", to_json(item.tensor_data->size, sp));
      o.emplace("tensor_data", std::move(td));
    }
    o.emplace("bytes_io_size", item.bytes_io_size);
    items.emplace_back(std::move(o));
  }
  json::object doc(sp);
  doc.emplace("items", std::move(items));
  doc.emplace("storage_data", plan.storage_data);
  doc.emplace("planner_data", to_json(plan.planner_data, sp));
  doc.emplace("usable", plan.usable);
  return serialized(doc, 256 + plan.items.size() * 200);
}

SavePlan decode_save_plan(std::string_view text) {
  const Reader r(kPlanPayload, /*strict=*/false);
  const json::value parsed = r.parse(text);
  const json::object& doc = r.object(parsed, Path("the save plan"));
  const Path top;
  SavePlan plan;
  const Path items_path("items");
  const json::array& items = r.array(r.field(doc, "items", top), items_path);
  plan.items.reserve(items.size());
  for (std::size_t i = 0; i < items.size(); ++i) {
    const Path path = items_path.at(i);
    const json::object& o = r.object(items[i], path);
    WriteItem item;
    item.index = read_index(r, r.field(o, "index", path), path.field("index"));
    item.type = read_write_type(r, r.field(o, "type", path), path.field("type"));
    if (const json::value* v = Reader::optional(o, "tensor_data")) {
      const Path td_path = path.field("tensor_data");
      const json::object& td = r.object(*v, td_path);
      TensorWriteData data;
      data.chunk = read_chunk(r, r.field(td, "chunk", td_path), td_path.field("chunk"));
      data.properties.dtype = r.dtype(r.field(td, "dtype", td_path), td_path.field("dtype"));
      data.size = r.shape(r.field(td, "size", td_path), td_path.field("size"));
      item.tensor_data = std::move(data);
    }
    item.bytes_io_size = r.u64(r.field(o, "bytes_io_size", path), path.field("bytes_io_size"));
    plan.items.push_back(std::move(item));
  }
  plan.storage_data = r.string(r.field(doc, "storage_data", top), Path("storage_data"));
  plan.planner_data = r.string_map(r.field(doc, "planner_data", top), Path("planner_data"));
  plan.usable = r.boolean(r.field(doc, "usable", top), Path("usable"));
  return plan;
}

std::string encode_load_plan(const LoadPlan& plan) {
  json::monotonic_resource mr(256 + plan.items.size() * 500);
  const JsonStorage sp(&mr);
  json::array items(sp);
  items.reserve(plan.items.size());
  for (const ReadItem& item : plan.items) {
    json::object o(sp);
    o.reserve(6);
    o.emplace("type", type_name(item.type));
    o.emplace("dest_index", to_json(item.dest_index, sp));
    o.emplace("dest_offsets", to_json(item.dest_offsets, sp));
    o.emplace("storage_index", to_json(item.storage_index, sp));
    o.emplace("storage_offsets", to_json(item.storage_offsets, sp));
    o.emplace("lengths", to_json(item.lengths, sp));
    items.emplace_back(std::move(o));
  }
  json::object doc(sp);
  doc.emplace("items", std::move(items));
  doc.emplace("storage_data", plan.storage_data);
  doc.emplace("planner_data", to_json(plan.planner_data, sp));
  return serialized(doc, 256 + plan.items.size() * 250);
}

LoadPlan decode_load_plan(std::string_view text) {
  const Reader r(kPlanPayload, /*strict=*/false);
  const json::value parsed = r.parse(text);
  const json::object& doc = r.object(parsed, Path("the load plan"));
  const Path top;
  LoadPlan plan;
  const Path items_path("items");
  const json::array& items = r.array(r.field(doc, "items", top), items_path);
  plan.items.reserve(items.size());
  for (std::size_t i = 0; i < items.size(); ++i) {
    const Path path = items_path.at(i);
    const json::object& o = r.object(items[i], path);
    auto at = [&](std::string_view key) -> const json::value& { return r.field(o, key, path); };
    ReadItem item;
    item.type = read_load_type(r, at("type"), path.field("type"));
    item.dest_index = read_index(r, at("dest_index"), path.field("dest_index"));
    item.dest_offsets = r.shape(at("dest_offsets"), path.field("dest_offsets"));
    item.storage_index = read_index(r, at("storage_index"), path.field("storage_index"));
    item.storage_offsets = r.shape(at("storage_offsets"), path.field("storage_offsets"));
    item.lengths = r.shape(at("lengths"), path.field("lengths"));
    plan.items.push_back(std::move(item));
  }
  plan.storage_data = r.string(r.field(doc, "storage_data", top), Path("storage_data"));
  plan.planner_data = r.string_map(r.field(doc, "planner_data", top), Path("planner_data"));
  return plan;
}

std::string encode_write_results(const WriteResults& results) {
  json::monotonic_resource mr(256 + results.items.size() * 300);
  const JsonStorage sp(&mr);
  json::array items(sp);
  items.reserve(results.items.size());
  for (const WriteResult& item : results.items) {
    json::object o(sp);
    o.reserve(3);
    o.emplace("index", to_json(item.index, sp));
    o.emplace("size_in_bytes", item.size_in_bytes);
    o.emplace("storage_data", to_json(item.storage_data, sp));
    items.emplace_back(std::move(o));
  }
  json::object doc(sp);
  doc.emplace("items", std::move(items));
  doc.emplace("files", to_json(results.files, sp));
  return serialized(doc, 256 + results.items.size() * 150);
}

WriteResults decode_write_results(std::string_view text) {
  const Reader r(kPlanPayload, /*strict=*/false);
  const json::value parsed = r.parse(text);
  const json::object& doc = r.object(parsed, Path("the write results"));
  const Path top;
  WriteResults results;
  const Path items_path("items");
  const json::array& items = r.array(r.field(doc, "items", top), items_path);
  results.items.reserve(items.size());
  for (std::size_t i = 0; i < items.size(); ++i) {
    const Path path = items_path.at(i);
    const json::object& o = r.object(items[i], path);
    WriteResult item;
    item.index = read_index(r, r.field(o, "index", path), path.field("index"));
    item.size_in_bytes = r.u64(r.field(o, "size_in_bytes", path), path.field("size_in_bytes"));
    item.storage_data =
        read_storage_info(r, r.field(o, "storage_data", path), path.field("storage_data"));
    results.items.push_back(std::move(item));
  }
  results.files = read_files(r, r.field(doc, "files", top), Path("files"));
  return results;
}

}  // namespace ringckpt
