// metadata_json.cpp — metadata.json and the payloads that cross ranks, as
// JSON through Boost.JSON.
//
// metadata.json is read with every field checked: it may be damaged or
// hostile, and the reader trusts nothing in it until it has been checked here.
// The payloads come from another rank of the same job; they are decoded
// losslessly and checked only for shape (types and presence of fields).
#include "format/metadata_json.hpp"

#include "format/json_append.hpp"
#include "format/message_text.hpp"

#include <algorithm>
#include <array>
#include <boost/json.hpp>
#include <boost/json/basic_parser_impl.hpp>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include "format/extent_checksum.hpp"
#include "ringckpt/error.hpp"
#include "ringckpt/io_options.hpp"

namespace ringckpt {
namespace {

using detail::in_quotes;
using detail::shape_string;


namespace json = boost::json;

// Any count or size in metadata.json above this is corrupt; keeping values
// below it keeps every sum and product checked here free of overflow.
constexpr std::uint64_t kMaxValue = std::uint64_t{1} << 62;

constexpr std::string_view kChecksumKey = "checksum";


// "'w'" for a whole item, "'w' chunk at [0,4]" for a chunk.
std::string describe(const MetadataIndex& index) {
  std::string out = in_quotes(index.fqn);
  if (index.offset) out += " chunk at " + shape_string(*index.offset);
  return out;
}

// numel(shape) * element_size, or nullopt above kMaxValue.
// Pre: every dimension is in [0, kMaxValue].
std::optional<std::uint64_t> shape_bytes(const Shape& shape, std::uint64_t element_size) {
  std::uint64_t bytes = element_size;
  for (std::int64_t d : shape) {
    const auto dim = static_cast<std::uint64_t>(d);
    if (dim != 0 && bytes > kMaxValue / dim) return std::nullopt;
    bytes *= dim;
  }
  return bytes;
}

std::uint64_t checksum_of_text(std::string_view text) {
  return checksum_of(std::as_bytes(std::span<const char>(text.data(), text.size())));
}

// ---------------------------------------------------------------- encoding
//
// metadata.json and the payloads are built as Boost.JSON DOMs in a monotonic
// arena (one per document: every node is freed at once, and a generous first
// block makes most documents one allocation) and serialized by Boost.JSON
// into strings sized ahead of time.

using Storage = json::storage_ptr;

Storage arena(std::size_t initial_bytes = 0) {
  return json::make_shared_resource<json::monotonic_resource>(
      std::max<std::size_t>(initial_bytes, 1024));
}

json::array to_json(const Shape& shape, const Storage& sp) {
  json::array out(sp);
  out.reserve(shape.size());
  for (std::int64_t d : shape) out.emplace_back(d);
  return out;
}

json::object to_json(const std::map<std::string, std::string>& map, const Storage& sp) {
  json::object out(sp);
  out.reserve(map.size());
  for (const auto& [key, value] : map) out.emplace(key, value);
  return out;
}

json::object to_json(const ChunkStorageMetadata& chunk, const Storage& sp) {
  json::object out(sp);
  out.reserve(2);
  out.emplace("offsets", to_json(chunk.offsets, sp));
  out.emplace("sizes", to_json(chunk.sizes, sp));
  return out;
}

// Adds "fqn", and "offset" and "index" where set (absent where not).
void put_index(json::object& out, const MetadataIndex& index) {
  out.emplace("fqn", index.fqn);
  if (index.offset) out.emplace("offset", to_json(*index.offset, out.storage()));
  if (index.index) out.emplace("index", static_cast<std::uint64_t>(*index.index));
}

json::object to_json(const MetadataIndex& index, const Storage& sp) {
  json::object out(sp);
  out.reserve(3);
  put_index(out, index);
  return out;
}

json::object to_json(const FileInfo& file, const Storage& sp) {
  json::object out(sp);
  out.reserve(4);
  out.emplace("path", file.relative_path);
  out.emplace("size", file.size);
  out.emplace("extent_size", file.extent_size);
  json::array checksums(sp);
  checksums.reserve(file.extent_checksums.size());
  for (std::uint64_t c : file.extent_checksums) checksums.emplace_back(checksum_hex(c));
  out.emplace("checksums", std::move(checksums));
  return out;
}

json::array to_json(const std::vector<FileInfo>& files, const Storage& sp) {
  json::array out(sp);
  out.reserve(files.size());
  for (const auto& f : files) out.emplace_back(to_json(f, sp));
  return out;
}

json::object to_json(const StorageInfo& info, const Storage& sp) {
  json::object out(sp);
  out.reserve(3);
  out.emplace("file", info.relative_path);
  out.emplace("offset", info.offset);
  out.emplace("length", info.length);
  return out;
}

// json::serialize into a string sized ahead of time.
template <typename Json>  // json::value, json::object or json::array
std::string serialize(const Json& v, std::size_t size_hint) {
  json::serializer sr;
  sr.reset(&v);
  std::string out;
  out.resize(std::max<std::size_t>(size_hint, 4096));
  std::size_t used = 0;
  while (!sr.done()) {
    if (used == out.size()) out.resize(out.size() * 2);
    used += sr.read(out.data() + used, out.size() - used).size();
  }
  out.resize(used);
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

// A guess at the serialized size of a metadata document, to size buffers.
std::size_t metadata_size_hint(const Metadata& metadata) {
  std::size_t n = 256;
  for (const auto& [fqn, item] : metadata.state_dict_metadata) {
    n += fqn.size() + 48;
    if (const auto* t = std::get_if<TensorStorageMetadata>(&item)) {
      n += 24 + 8 * t->size.size() + t->chunks.size() * (32 + 16 * t->size.size());
    }
  }
  for (const auto& [index, info] : metadata.storage_data) {
    n += index.fqn.size() + info.relative_path.size() + 96 +
         (index.offset ? 8 * index.offset->size() + 12 : 0);
  }
  for (const auto& f : metadata.files) n += 64 + f.relative_path.size() + 19 * f.extent_checksums.size();
  for (const auto& [key, value] : metadata.planner_data) n += key.size() + value.size() + 8;
  return n;
}

// Bytes of arena to give a metadata DOM whose text is about `text_bytes`
// long: the DOM of such a document takes a few times its text.
std::size_t metadata_arena_bytes(std::size_t text_bytes) { return 4 * text_bytes + 4096; }

// The metadata document without its checksum, keys in the documented order:
// {"format","version","state_dict_metadata","storage_data","files","planner_data"}.
// for_each_storage(f) calls f(index, info) for each storage entry in order;
// for_each_file(f) calls f(file) for each file. n_storage and n_files are the
// counts of each, to reserve.
template <typename ForEachStorage, typename ForEachFile>
json::object metadata_document(const Metadata& metadata, const Storage& sp,
                               std::size_t n_storage, ForEachStorage&& for_each_storage,
                               std::size_t n_files, ForEachFile&& for_each_file) {
  json::object doc(sp);
  doc.reserve(7);  // the six keys, and room for the checksum
  doc.emplace("format", kFormatName);
  doc.emplace("version", static_cast<std::int64_t>(metadata.version));

  json::object state(sp);
  state.reserve(metadata.state_dict_metadata.size());
  for (const auto& [fqn, item] : metadata.state_dict_metadata) {
    json::object entry(sp);
    if (const auto* tensor = std::get_if<TensorStorageMetadata>(&item)) {
      entry.reserve(4);
      entry.emplace("type", "tensor");
      entry.emplace("dtype", dtype_name(tensor->properties.dtype));
      entry.emplace("size", to_json(tensor->size, sp));
      json::array chunks(sp);
      chunks.reserve(tensor->chunks.size());
      for (const ChunkStorageMetadata& chunk : tensor->chunks) chunks.emplace_back(to_json(chunk, sp));
      entry.emplace("chunks", std::move(chunks));
    } else {
      entry.reserve(1);
      entry.emplace("type", "bytes");
    }
    state.emplace(fqn, std::move(entry));
  }
  doc.emplace("state_dict_metadata", std::move(state));

  json::array storage(sp);
  storage.reserve(n_storage);
  for_each_storage([&](const MetadataIndex& index, const StorageInfo& info) {
    json::object entry(sp);
    entry.reserve(6);
    put_index(entry, index);
    entry.emplace("file", info.relative_path);
    entry.emplace("byte_offset", info.offset);
    entry.emplace("length", info.length);
    storage.emplace_back(std::move(entry));
  });
  doc.emplace("storage_data", std::move(storage));

  json::array files(sp);
  files.reserve(n_files);
  for_each_file([&](const FileInfo& f) { files.emplace_back(to_json(f, sp)); });
  doc.emplace("files", std::move(files));

  doc.emplace("planner_data", to_json(metadata.planner_data, sp));
  return doc;
}

json::object metadata_document(const Metadata& metadata, const Storage& sp) {
  return metadata_document(
      metadata, sp, metadata.storage_data.size(),
      [&](auto&& f) {
        for (const auto& [index, info] : metadata.storage_data) f(index, info);
      },
      metadata.files.size(),
      [&](auto&& f) {
        for (const FileInfo& file : metadata.files) f(file);
      });
}

// The text of metadata.json: the document with its checksum added as its last
// key, the checksum being that of the document as serialized without it.
std::string with_checksum(json::object& doc, std::size_t size_hint) {
  std::string text;
  text.reserve(size_hint + 64);
  detail::serialize_append(text, doc);
  const std::uint64_t checksum = checksum_of_text(text);
  doc.emplace(kChecksumKey, checksum_hex(checksum));
  text.clear();  // keeps its capacity for the text with the checksum
  detail::serialize_append(text, doc);
  text += '\n';
  return text;
}

// ---------------------------------------------------------------- decoding

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

StorageMetadata read_storage_metadata(const Reader& r, const json::value& v, const Path& path) {
  const json::object& obj = r.object(v, path);
  const std::string_view type = r.string_view(r.field(obj, "type", path), path.field("type"));
  if (type == "bytes") return BytesStorageMetadata{};
  if (type != "tensor")
    r.fail(path.field("type").str() + " is " + in_quotes(type) + ", not 'tensor' or 'bytes'");

  TensorStorageMetadata tensor;
  tensor.properties.dtype = r.dtype(r.field(obj, "dtype", path), path.field("dtype"));
  tensor.size = r.shape(r.field(obj, "size", path), path.field("size"));
  const Path chunks_path = path.field("chunks");
  const json::array& chunks = r.array(r.field(obj, "chunks", path), chunks_path);
  tensor.chunks.reserve(chunks.size());
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    tensor.chunks.push_back(read_chunk(r, chunks[i], chunks_path.at(i)));
  }
  return tensor;
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

// The fields of a metadata document (or payload), checked for type only.
Metadata read_metadata_document(const Reader& r, const json::object& root) {
  const Path top;
  Metadata md;
  md.version = r.integer(r.field(root, "version", top), Path("version"));

  const Path items_path("state_dict_metadata");
  for (const auto& kv : r.object(r.field(root, "state_dict_metadata", top), items_path)) {
    // Documents list their items in order: the hint makes each insert O(1).
    md.state_dict_metadata.emplace_hint(
        md.state_dict_metadata.end(), std::string(view(kv.key())),
        read_storage_metadata(r, kv.value(), items_path.keyed(view(kv.key()))));
  }

  const Path storage_path("storage_data");
  const json::array& storage = r.array(r.field(root, "storage_data", top), storage_path);
  for (std::size_t i = 0; i < storage.size(); ++i) {
    const Path path = storage_path.at(i);
    const json::object& entry = r.object(storage[i], path);
    MetadataIndex index = read_index(r, entry, path);
    StorageInfo info;
    info.relative_path = r.string(r.field(entry, "file", path), path.field("file"));
    info.offset = r.u64(r.field(entry, "byte_offset", path), path.field("byte_offset"));
    info.length = r.u64(r.field(entry, "length", path), path.field("length"));
    const std::size_t before = md.storage_data.size();
    // try_emplace leaves `index` as it was when the entry is a repeat.
    md.storage_data.try_emplace(md.storage_data.end(), std::move(index), std::move(info));
    if (md.storage_data.size() == before) {
      r.fail(path.str() + " repeats the storage entry of " + describe(index));
    }
  }

  md.files = read_files(r, r.field(root, "files", top), Path("files"));
  md.planner_data = r.string_map(r.field(root, "planner_data", top), Path("planner_data"));
  return md;
}

// ------------------------------------------------- metadata.json, fast path
//
// metadata.json as encode_metadata writes it: the documented keys in their
// order, no key or storage entry given twice, every value of its type and in
// range. Such a document is decoded here straight from the parser's events
// (Boost.JSON's SAX interface), without building a DOM.
// Anything else -- damage, a forged or hand-edited document, a fault of any
// kind -- makes the fast path give up, and the document is read again by
// the Reader above, which reports the fault exactly. The fast path never
// reports a fault itself, and what it accepts the Reader reads the same way.

class FastMetadataHandler {
 public:
  static constexpr std::size_t max_object_size = std::size_t(-1);
  static constexpr std::size_t max_array_size = std::size_t(-1);
  static constexpr std::size_t max_key_size = std::size_t(-1);
  static constexpr std::size_t max_string_size = std::size_t(-1);

  Metadata md;
  std::string format;
  std::optional<std::uint64_t> checksum;
  bool complete = false;  // the root object ended with every key

  bool on_document_begin(json::error_code&) { return true; }
  bool on_document_end(json::error_code&) { return true; }

  bool on_object_begin(json::error_code& ec) {
    if (depth_ == 0) return push(Ctx::root, ec);
    switch (top().ctx) {
      case Ctx::root:
        if (top().field == kRootStateDict) return push(Ctx::items, ec);
        if (top().field == kRootPlanner) return push(Ctx::planner, ec);
        return bail(ec);
      case Ctx::items:
        return push(Ctx::item, ec);
      case Ctx::chunks:
        tensor_->chunks.emplace_back();
        return push(Ctx::chunk, ec);
      case Ctx::storage:
        index_ = MetadataIndex{};
        info_ = StorageInfo{};
        return push(Ctx::entry, ec);
      case Ctx::files:
        md.files.emplace_back();
        return push(Ctx::file, ec);
      default:
        return bail(ec);
    }
  }

  bool on_object_end(std::size_t, json::error_code& ec) {
    Frame& f = top();
    switch (f.ctx) {
      case Ctx::root:
        if (f.next != kRootKeys.size()) return bail(ec);
        complete = true;
        break;
      case Ctx::item:
        // A tensor has every key; bytes has only its type (next is set past the end).
        if (f.next != kItemKeys.size()) return bail(ec);
        break;
      case Ctx::chunk:
        if (f.next != kChunkKeys.size()) return bail(ec);
        break;
      case Ctx::file:
        if (f.next != kFileKeys.size()) return bail(ec);
        break;
      case Ctx::entry: {
        if (f.next != kEntryKeys.size()) return bail(ec);
        // In order (as written), each insert is at the end. A repeat is a
        // fault that the Reader names.
        auto& storage = md.storage_data;
        const std::size_t before = storage.size();
        storage.emplace_hint(storage.end(), std::move(index_), std::move(info_));
        if (storage.size() == before) return bail(ec);
        break;
      }
      case Ctx::items:
      case Ctx::planner:
        break;
      default:
        return bail(ec);
    }
    --depth_;
    return true;
  }

  bool on_array_begin(json::error_code& ec) {
    if (depth_ == 0) return bail(ec);
    Frame& f = top();
    switch (f.ctx) {
      case Ctx::root:
        if (f.field == kRootStorage) return push(Ctx::storage, ec);
        if (f.field == kRootFiles) return push(Ctx::files, ec);
        return bail(ec);
      case Ctx::item:
        if (f.field == kItemSize) return push_shape(&tensor_->size, ec);
        if (f.field == kItemChunks) return push(Ctx::chunks, ec);
        return bail(ec);
      case Ctx::chunk:
        if (f.field == kChunkOffsets) return push_shape(&tensor_->chunks.back().offsets, ec);
        if (f.field == kChunkSizes) return push_shape(&tensor_->chunks.back().sizes, ec);
        return bail(ec);
      case Ctx::entry:
        if (f.field == kEntryOffset) return push_shape(&index_.offset.emplace(), ec);
        return bail(ec);
      case Ctx::file:
        if (f.field == kFileChecksums) return push(Ctx::checksums, ec);
        return bail(ec);
      default:
        return bail(ec);
    }
  }

  bool on_array_end(std::size_t, json::error_code&) {
    if (top().ctx == Ctx::shape) shape_->assign(dims_.begin(), dims_.end());  // one allocation
    --depth_;
    return true;
  }

  bool on_key_part(json::string_view s, std::size_t, json::error_code&) {
    buf_.append(s.data(), s.size());
    return true;
  }

  bool on_key(json::string_view s, std::size_t, json::error_code& ec) {
    const std::string_view key = finish_part(s);
    if (depth_ == 0) return bail(ec);
    Frame& f = top();
    switch (f.ctx) {
      case Ctx::root:
        return expect(f, kRootKeys, key, 0, ec);
      case Ctx::item:
        return expect(f, kItemKeys, key, 0, ec);
      case Ctx::chunk:
        return expect(f, kChunkKeys, key, 0, ec);
      case Ctx::file:
        return expect(f, kFileKeys, key, 0, ec);
      case Ctx::entry:
        return expect(f, kEntryKeys, key, kEntryOptional, ec);
      case Ctx::items: {
        // In order (as written), each insert is at the end. A key given
        // twice is left to the Reader.
        auto& items = md.state_dict_metadata;
        const std::size_t before = items.size();
        auto it = items.emplace_hint(items.end(), std::piecewise_construct,
                                     std::forward_as_tuple(key), std::forward_as_tuple());
        if (items.size() == before) return bail(ec);
        item_ = &it->second;
        tensor_ = &std::get<TensorStorageMetadata>(*item_);
        return true;
      }
      case Ctx::planner: {
        auto& data = md.planner_data;
        const std::size_t before = data.size();
        auto it = data.emplace_hint(data.end(), std::string(key), std::string());
        if (data.size() == before) return bail(ec);
        planner_value_ = &it->second;
        return true;
      }
      default:
        return bail(ec);
    }
  }

  bool on_string_part(json::string_view s, std::size_t, json::error_code&) {
    buf_.append(s.data(), s.size());
    return true;
  }

  bool on_string(json::string_view s, std::size_t, json::error_code& ec) {
    const std::string_view value = finish_part(s);
    if (depth_ == 0) return bail(ec);
    Frame& f = top();
    switch (f.ctx) {
      case Ctx::root:
        if (f.field == kRootFormat) {
          format.assign(value);
          return true;
        }
        if (f.field == kRootChecksum) {
          checksum = parse_checksum_hex(value);
          return checksum ? true : bail(ec);
        }
        return bail(ec);
      case Ctx::item:
        if (f.field == kItemType) {
          if (value == "tensor") return true;
          if (value != "bytes") return bail(ec);
          *item_ = BytesStorageMetadata{};
          tensor_ = nullptr;
          f.next = kItemKeys.size();  // nothing may follow
          return true;
        }
        if (f.field == kItemDtype) {
          auto dtype = dtype_from_name(value);
          if (!dtype) return bail(ec);
          tensor_->properties.dtype = *dtype;
          return true;
        }
        return bail(ec);
      case Ctx::entry:
        if (f.field == kEntryFqn) {
          index_.fqn.assign(value);
          return true;
        }
        if (f.field == kEntryFile) {
          info_.relative_path.assign(value);
          return true;
        }
        return bail(ec);
      case Ctx::file:
        if (f.field == kFilePath) {
          md.files.back().relative_path.assign(value);
          return true;
        }
        return bail(ec);
      case Ctx::checksums: {
        auto sum = parse_checksum_hex(value);
        if (!sum) return bail(ec);
        md.files.back().extent_checksums.push_back(*sum);
        return true;
      }
      case Ctx::planner:
        planner_value_->assign(value);
        return true;
      default:
        return bail(ec);
    }
  }

  bool on_number_part(json::string_view, json::error_code&) { return true; }

  bool on_int64(std::int64_t v, json::string_view, json::error_code& ec) {
    if (depth_ > 0 && top().ctx == Ctx::root && top().field == kRootVersion) {
      if (v != Metadata::kVersion) return bail(ec);
      md.version = Metadata::kVersion;
      return true;
    }
    if (v < 0) return bail(ec);
    return on_number(static_cast<std::uint64_t>(v), ec);
  }

  bool on_uint64(std::uint64_t v, json::string_view, json::error_code& ec) {
    return on_number(v, ec);
  }

  bool on_double(double, json::string_view, json::error_code& ec) { return bail(ec); }
  bool on_bool(bool, json::error_code& ec) { return bail(ec); }
  bool on_null(json::error_code& ec) { return bail(ec); }
  bool on_comment_part(json::string_view, json::error_code& ec) { return bail(ec); }
  bool on_comment(json::string_view, json::error_code& ec) { return bail(ec); }

 private:
  enum class Ctx : std::uint8_t {
    root, items, item, shape, chunks, chunk, storage, entry, files, file, checksums, planner
  };
  struct Frame {
    Ctx ctx;
    std::uint8_t next = 0;   // position of the next expected key
    std::uint8_t field = 0;  // the key whose value comes next
  };

  static constexpr std::array<std::string_view, 7> kRootKeys = {
      "format", "version", "state_dict_metadata", "storage_data", "files", "planner_data",
      "checksum"};
  enum : std::uint8_t {
    kRootFormat, kRootVersion, kRootStateDict, kRootStorage, kRootFiles, kRootPlanner,
    kRootChecksum
  };
  static constexpr std::array<std::string_view, 4> kItemKeys = {"type", "dtype", "size", "chunks"};
  enum : std::uint8_t { kItemType, kItemDtype, kItemSize, kItemChunks };
  static constexpr std::array<std::string_view, 2> kChunkKeys = {"offsets", "sizes"};
  enum : std::uint8_t { kChunkOffsets, kChunkSizes };
  static constexpr std::array<std::string_view, 6> kEntryKeys = {
      "fqn", "offset", "index", "file", "byte_offset", "length"};
  enum : std::uint8_t { kEntryFqn, kEntryOffset, kEntryIndex, kEntryFile, kEntryByteOffset,
                        kEntryLength };
  static constexpr unsigned kEntryOptional = (1u << kEntryOffset) | (1u << kEntryIndex);
  static constexpr std::array<std::string_view, 4> kFileKeys = {"path", "size", "extent_size",
                                                                "checksums"};
  enum : std::uint8_t { kFilePath, kFileSize, kFileExtentSize, kFileChecksums };

  static constexpr std::size_t kMaxDepth = 8;

  bool bail(json::error_code& ec) {
    ec = json::make_error_code(json::error::exception);
    return false;
  }

  Frame& top() { return stack_[depth_ - 1]; }

  bool push(Ctx ctx, json::error_code& ec) {
    if (depth_ == kMaxDepth) return bail(ec);
    stack_[depth_++] = Frame{ctx};
    return true;
  }

  bool push_shape(Shape* shape, json::error_code& ec) {
    shape_ = shape;
    dims_.clear();
    return push(Ctx::shape, ec);
  }

  // The whole key or string: the parts gathered so far and the last one.
  std::string_view finish_part(json::string_view last) {
    if (buf_.empty()) return view(last);
    buf_.append(last.data(), last.size());
    part_.swap(buf_);
    buf_.clear();
    return part_;
  }

  // Accepts `key` if it is the next expected one, skipping optional ones.
  template <std::size_t N>
  bool expect(Frame& f, const std::array<std::string_view, N>& keys, std::string_view key,
              unsigned optional, json::error_code& ec) {
    for (std::size_t k = f.next; k < N; ++k) {
      if (keys[k] == key) {
        f.field = static_cast<std::uint8_t>(k);
        f.next = static_cast<std::uint8_t>(k + 1);
        return true;
      }
      if (!((optional >> k) & 1)) break;
    }
    return bail(ec);
  }

  bool on_number(std::uint64_t v, json::error_code& ec) {
    if (depth_ == 0 || v > kMaxValue) return bail(ec);
    Frame& f = top();
    switch (f.ctx) {
      case Ctx::shape:
        dims_.push_back(static_cast<std::int64_t>(v));
        return true;
      case Ctx::entry:
        if (f.field == kEntryIndex) {
          index_.index = static_cast<std::size_t>(v);
          return true;
        }
        if (f.field == kEntryByteOffset) {
          info_.offset = v;
          return true;
        }
        if (f.field == kEntryLength) {
          info_.length = v;
          return true;
        }
        return bail(ec);
      case Ctx::file:
        if (f.field == kFileSize) {
          md.files.back().size = v;
          return true;
        }
        if (f.field == kFileExtentSize) {
          md.files.back().extent_size = v;
          return true;
        }
        return bail(ec);
      default:
        return bail(ec);
    }
  }

  std::array<Frame, kMaxDepth> stack_{};
  std::size_t depth_ = 0;
  std::string buf_;   // parts of a key or string split by escapes
  std::string part_;  // the last such key or string, whole
  StorageMetadata* item_ = nullptr;
  TensorStorageMetadata* tensor_ = nullptr;
  Shape* shape_ = nullptr;  // the shape being read, into dims_
  Shape dims_;
  MetadataIndex index_;
  StorageInfo info_;
  std::string* planner_value_ = nullptr;
};

// The text that encode_metadata hashed, if `text` ends as it writes it:
// ...,"checksum":"<16 hex digits>"} (then whitespace). Returned as the text
// before the comma; the document without its checksum is that plus "}".
std::optional<std::string_view> body_before_checksum(std::string_view text,
                                                     std::uint64_t checksum) {
  while (!text.empty() && (text.back() == ' ' || text.back() == '\n' || text.back() == '\r' ||
                           text.back() == '\t')) {
    text.remove_suffix(1);
  }
  constexpr std::string_view kKey = ",\"checksum\":\"";
  constexpr std::size_t kTail = kKey.size() + 16 + 2;  // key, digits, '"', '}'
  if (text.size() < kTail + 1 || !text.ends_with("\"}")) return std::nullopt;
  const std::size_t at = text.size() - kTail;
  if (text.substr(at, kKey.size()) != kKey) return std::nullopt;
  if (parse_checksum_hex(text.substr(at + kKey.size(), 16)) != checksum) return std::nullopt;
  return text.substr(0, at);
}

// metadata.json decoded by the fast path, or nullopt to read it with the
// Reader. Pre-checks passed here: format, version and checksum.
std::optional<Metadata> decode_metadata_fast(std::string_view text) {
  json::parse_options options;
  options.allow_invalid_utf8 = true;
  json::basic_parser<FastMetadataHandler> parser(options);
  json::error_code ec;
  const std::size_t consumed = parser.write_some(false, text.data(), text.size(), ec);
  FastMetadataHandler& h = parser.handler();
  if (ec || consumed != text.size() || !h.complete || !h.checksum) return std::nullopt;
  if (h.format != kFormatName) return std::nullopt;
  const std::optional<std::string_view> body = body_before_checksum(text, *h.checksum);
  if (!body) return std::nullopt;
  ExtentChecksum hash;
  hash.update(std::as_bytes(std::span<const char>(body->data(), body->size())));
  hash.update(std::as_bytes(std::span<const char>("}", 1)));
  if (hash.digest() != *h.checksum) return std::nullopt;
  return std::move(h.md);
}

// -------------------------------------------------------- checks of meaning

void check_files(const Reader& r, const std::vector<FileInfo>& files) {
  std::set<std::string_view> seen;
  for (std::size_t i = 0; i < files.size(); ++i) {
    const FileInfo& f = files[i];
    auto path = [&] { return "files[" + std::to_string(i) + "]"; };
    const std::string& name = f.relative_path;
    if (!is_plain_file_name(name)) {
      const bool escapes = name.starts_with('/') || name == ".." || name.starts_with("../") ||
                           name.find("/../") != std::string::npos || name.ends_with("/..");
      r.fail(path() + ".path " + in_quotes(name) +
             (escapes ? " escapes the checkpoint directory"
                      : " is not a plain file name inside the checkpoint directory"));
    }
    if (name == kMetadataFile)
      r.fail(path() + ".path " + in_quotes(name) + " names the metadata file itself");
    if (!seen.insert(name).second) r.fail(path() + ".path " + in_quotes(name) + " is listed twice");
    if (f.extent_size > kMaxExtentSize) {
      r.fail(path() + ".extent_size " + std::to_string(f.extent_size) + " of " + in_quotes(name) +
             " is absurdly large (the limit is 1 GiB)");
    }
    if (f.extent_size == 0 || f.extent_size % kAlignment != 0) {
      r.fail(path() + ".extent_size " + std::to_string(f.extent_size) + " of " + in_quotes(name) +
             " is not a positive multiple of " + std::to_string(kAlignment));
    }
    // size <= 2^62 and extent_size >= 4096: no overflow.
    const std::uint64_t extents = (f.size + f.extent_size - 1) / f.extent_size;
    if (f.extent_checksums.size() != extents) {
      r.fail(path() + ".checksums of " + in_quotes(name) + " holds " +
             std::to_string(f.extent_checksums.size()) + " checksums, but " +
             std::to_string(f.size) + " bytes in extents of " + std::to_string(f.extent_size) +
             " make " + std::to_string(extents));
    }
  }
}

// True if boxes a and b share an element. Pre: same rank.
bool boxes_overlap(const ChunkStorageMetadata& a, const ChunkStorageMetadata& b) {
  for (std::size_t d = 0; d < a.offsets.size(); ++d) {
    const std::int64_t lo = std::max(a.offsets[d], b.offsets[d]);
    const std::int64_t hi = std::min(a.offsets[d] + a.sizes[d], b.offsets[d] + b.sizes[d]);
    if (lo >= hi) return false;
  }
  return true;
}

[[noreturn]] void fail_uncovered(const Reader& r, const std::string& fqn, std::uint64_t covered,
                                 std::uint64_t total) {
  r.fail("tensor " + in_quotes(fqn) + " chunks leave part of it uncovered (they cover " +
         std::to_string(covered) + " of " + std::to_string(total) + " elements)");
}

// Pre: every chunk lies inside the tensor. Fails unless the non-empty chunks
// are pairwise disjoint and together cover every element.
void check_coverage(const Reader& r, const std::string& fqn, const TensorStorageMetadata& t) {
  const auto total = static_cast<std::uint64_t>(numel(t.size));
  if (t.chunks.size() <= 1) {  // one box (or none) cannot overlap another
    const auto covered =
        t.chunks.empty() ? std::uint64_t{0} : static_cast<std::uint64_t>(numel(t.chunks[0].sizes));
    if (covered != total) fail_uncovered(r, fqn, covered, total);
    return;
  }
  std::vector<const ChunkStorageMetadata*> boxes;
  boxes.reserve(t.chunks.size());
  for (const auto& c : t.chunks) {
    if (numel(c.sizes) != 0) boxes.push_back(&c);
  }
  const std::size_t rank = t.size.size();
  if (rank > 0) {
    // Sweep along the dimension split most often, so that typical shardings
    // (by rows, by columns, a grid) compare each chunk with few others.
    std::size_t sweep = 0, most = 0;
    std::vector<std::int64_t> starts;
    starts.reserve(boxes.size());
    for (std::size_t d = 0; d < rank; ++d) {
      starts.clear();
      for (const auto* c : boxes) starts.push_back(c->offsets[d]);
      std::sort(starts.begin(), starts.end());
      const auto distinct =
          static_cast<std::size_t>(std::unique(starts.begin(), starts.end()) - starts.begin());
      if (distinct > most) most = distinct, sweep = d;
    }
    std::sort(boxes.begin(), boxes.end(), [sweep](const auto* a, const auto* b) {
      return a->offsets[sweep] < b->offsets[sweep];
    });
    for (std::size_t i = 0; i < boxes.size(); ++i) {
      const std::int64_t end = boxes[i]->offsets[sweep] + boxes[i]->sizes[sweep];
      for (std::size_t j = i + 1; j < boxes.size() && boxes[j]->offsets[sweep] < end; ++j) {
        if (boxes_overlap(*boxes[i], *boxes[j])) {
          r.fail("tensor " + in_quotes(fqn) + " chunks at " + shape_string(boxes[i]->offsets) +
                 " and " + shape_string(boxes[j]->offsets) + " overlap");
        }
      }
    }
  } else if (boxes.size() > 1) {
    r.fail("tensor " + in_quotes(fqn) + " is 0-d but has " + std::to_string(boxes.size()) +
           " chunks: they overlap");
  }
  // Disjoint boxes inside the tensor: their volumes sum to at most numel.
  std::uint64_t covered = 0;
  for (const auto* c : boxes) covered += static_cast<std::uint64_t>(numel(c->sizes));
  if (covered != total) fail_uncovered(r, fqn, covered, total);
}

// The first chunk (by position) that starts where an earlier one starts.
std::optional<std::size_t> first_repeated_start(const std::vector<ChunkStorageMetadata>& chunks) {
  const std::size_t n = chunks.size();
  if (n < 2) return std::nullopt;
  std::optional<std::size_t> first;
  if (n <= 8) {
    for (std::size_t i = 1; i < n && !first; ++i) {
      for (std::size_t k = 0; k < i; ++k) {
        if (chunks[k].offsets == chunks[i].offsets) {
          first = i;
          break;
        }
      }
    }
    return first;
  }
  std::vector<std::size_t> order(n);
  for (std::size_t i = 0; i < n; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    if (auto c = chunks[a].offsets <=> chunks[b].offsets; c != 0) return c < 0;
    return a < b;
  });
  // In each run of equal starts, the second position repeats the first.
  for (std::size_t k = 1; k < n; ++k) {
    if (chunks[order[k]].offsets == chunks[order[k - 1]].offsets &&
        (k < 2 || chunks[order[k - 2]].offsets != chunks[order[k]].offsets)) {
      if (!first || order[k] < *first) first = order[k];
    }
  }
  return first;
}

// Pre: read by a strict Reader, so every dimension is in [0, kMaxValue].
void check_tensor(const Reader& r, const std::string& fqn, const TensorStorageMetadata& t) {
  if (!shape_bytes(t.size, dtype_size(t.properties.dtype))) {
    r.fail("tensor " + in_quotes(fqn) + " size " + shape_string(t.size) + " is absurdly large");
  }
  // Chunk by chunk, the first fault found: its rank, its bounds, then whether
  // an earlier chunk starts where it starts.
  const std::optional<std::size_t> repeated = first_repeated_start(t.chunks);
  for (std::size_t i = 0; i < t.chunks.size(); ++i) {
    const ChunkStorageMetadata& c = t.chunks[i];
    auto what = [&] {
      return "tensor " + in_quotes(fqn) + " chunk " + std::to_string(i) + " (offsets " +
             shape_string(c.offsets) + ", sizes " + shape_string(c.sizes) + ")";
    };
    if (c.offsets.size() != t.size.size() || c.sizes.size() != t.size.size()) {
      r.fail(what() + " does not have the rank of size " + shape_string(t.size));
    }
    for (std::size_t d = 0; d < t.size.size(); ++d) {
      if (c.offsets[d] + c.sizes[d] > t.size[d]) {
        r.fail(what() + " lies outside the tensor's size " + shape_string(t.size));
      }
    }
    if (repeated == i) r.fail(what() + " starts where another chunk starts");
  }
  check_coverage(r, fqn, t);
}

// The chunk of `tensor` that starts at `offset`: the hinted one if it does,
// else the first that does; null if none.
const ChunkStorageMetadata* chunk_at(const TensorStorageMetadata& tensor, const Shape& offset,
                                     std::optional<std::size_t> hint) {
  if (hint && *hint < tensor.chunks.size() && tensor.chunks[*hint].offsets == offset) {
    // Chunk starts are distinct (check_tensor), so this is the first too.
    return &tensor.chunks[*hint];
  }
  for (const auto& c : tensor.chunks) {
    if (c.offsets == offset) return &c;
  }
  return nullptr;
}

// Pre: check_files and check_tensor passed. Both maps are ordered by fqn, so
// each is walked once alongside the other.
void check_storage(const Reader& r, const Metadata& md) {
  std::map<std::string_view, const FileInfo*> files;
  for (const auto& f : md.files) files.emplace(f.relative_path, &f);

  auto item = md.state_dict_metadata.begin();
  const auto items_end = md.state_dict_metadata.end();
  for (const auto& [index, info] : md.storage_data) {
    auto name = [&index = index] { return "storage entry " + describe(index); };
    // The item named by the entry: at or after the one of the entry before.
    while (item != items_end && item->first < index.fqn) ++item;
    if (item == items_end || item->first != index.fqn)
      r.fail(name() + " names no item of state_dict_metadata");
    std::optional<std::uint64_t> required;
    if (const auto* tensor = std::get_if<TensorStorageMetadata>(&item->second)) {
      if (!index.offset)
        r.fail(name() + " has no chunk offset, but " + in_quotes(index.fqn) + " is a tensor");
      const ChunkStorageMetadata* chunk = chunk_at(*tensor, *index.offset, index.index);
      if (chunk == nullptr) r.fail(name() + " names no chunk of tensor " + in_quotes(index.fqn));
      // Fits: check_tensor saw the chunk inside the tensor, whose bytes fit.
      required = shape_bytes(chunk->sizes, dtype_size(tensor->properties.dtype)).value();
    } else if (index.offset) {
      r.fail(name() + " has a chunk offset, but " + in_quotes(index.fqn) + " is bytes");
    }
    if (required && info.length != *required) {
      r.fail(name() + " is " + std::to_string(info.length) + " bytes long, but its chunk needs " +
             std::to_string(*required));
    }
    auto file = files.find(info.relative_path);
    if (file == files.end()) {
      r.fail(name() + " is in " + in_quotes(info.relative_path) + ", which files does not list");
    }
    const std::uint64_t size = file->second->size;
    // offset, length <= 2^62: the sum cannot overflow.
    if (info.offset + info.length > size) {
      r.fail(name() + " lies beyond the end of " + info.relative_path + " (offset " +
             std::to_string(info.offset) + " + " + std::to_string(info.length) + " > size " +
             std::to_string(size) + ")");
    }
  }

  // Every chunk and every blob has its bytes somewhere. Every entry names an
  // item (checked above), so the entries of an item follow those of the items
  // before it.
  auto entry = md.storage_data.begin();
  const auto entries_end = md.storage_data.end();
  for (const auto& [fqn, stored] : md.state_dict_metadata) {
    while (entry != entries_end && entry->first.fqn < fqn) ++entry;
    auto last = entry;  // [entry, last): the entries of fqn
    std::size_t count = 0;
    while (last != entries_end && last->first.fqn == fqn && count <= 16) ++last, ++count;
    const bool small = last == entries_end || last->first.fqn != fqn;
    // Whether fqn has an entry at `offset` (null: a whole item, no offset).
    auto has_entry = [&](const Shape* offset) {
      if (!small) {
        return md.storage_data.contains(
            MetadataIndex{fqn, offset ? std::optional<Shape>(*offset) : std::nullopt, {}});
      }
      for (auto it = entry; it != last; ++it) {
        const std::optional<Shape>& at = it->first.offset;
        if (offset ? (at && *at == *offset) : !at) return true;
      }
      return false;
    };
    if (const auto* tensor = std::get_if<TensorStorageMetadata>(&stored)) {
      for (const auto& c : tensor->chunks) {
        if (!has_entry(&c.offsets)) {
          r.fail("tensor " + in_quotes(fqn) + " chunk at " + shape_string(c.offsets) +
                 " has no storage entry");
        }
      }
    } else if (!has_entry(nullptr)) {
      r.fail("bytes item " + in_quotes(fqn) + " has no storage entry");
    }
  }
}

// Whether check_tensor (each tensor) and check_storage would pass, found in
// one walk over both maps; exactly as strict. Where they would not, they are
// run to name the fault.
bool metadata_is_sound(const Reader& r, const Metadata& md) {
  std::map<std::string_view, const FileInfo*> files;
  for (const auto& f : md.files) files.emplace(f.relative_path, &f);

  auto entry = md.storage_data.begin();
  const auto entries_end = md.storage_data.end();
  for (const auto& [fqn, stored] : md.state_dict_metadata) {
    const auto* tensor = std::get_if<TensorStorageMetadata>(&stored);
    if (tensor) {
      try {
        check_tensor(r, fqn, *tensor);
      } catch (const Error&) {
        return false;
      }
    }
    if (entry != entries_end && entry->first.fqn < fqn) return false;  // names no item
    std::size_t count = 0;
    for (; entry != entries_end && entry->first.fqn == fqn; ++entry, ++count) {
      const auto& [index, info] = *entry;
      std::optional<std::uint64_t> required;
      if (tensor) {
        if (!index.offset) return false;
        const ChunkStorageMetadata* chunk = chunk_at(*tensor, *index.offset, index.index);
        if (chunk == nullptr) return false;
        required = shape_bytes(chunk->sizes, dtype_size(tensor->properties.dtype)).value();
      } else if (index.offset) {
        return false;
      }
      if (required && info.length != *required) return false;
      auto file = files.find(info.relative_path);
      if (file == files.end() || info.offset + info.length > file->second->size) return false;
    }
    // Each entry of a tensor names a chunk, distinct entries distinct chunks
    // (starts are distinct): every chunk has an entry when there are as many
    // entries as chunks. A blob has at most the one entry without offset.
    if (count != (tensor ? tensor->chunks.size() : 1)) return false;
  }
  return entry == entries_end;
}

void check_checksum(const Reader& r, const json::object& root) {
  const std::uint64_t stored = r.checksum(r.field(root, kChecksumKey, Path()), Path(kChecksumKey));
  // The document as it was before the checksum was added; Boost.JSON keeps
  // key order, so this serializes to the very bytes that were hashed.
  json::object body(root.storage());
  body.reserve(root.size());
  for (const auto& kv : root) {
    if (kv.key() != kChecksumKey) body.emplace(kv.key(), kv.value());
  }
  const std::uint64_t computed = checksum_of_text(json::serialize(body));
  if (computed != stored) {
    r.fail(std::string("checksum mismatch: ") + kMetadataFile +
           " was modified or damaged (stored " + checksum_hex(stored) + ", computed " +
           checksum_hex(computed) + ")");
  }
}

const json::object& root_object(const Reader& r, const json::value& root) {
  const json::object* obj = root.if_object();
  if (obj == nullptr) r.fail("not a ringckpt checkpoint (the document is not a JSON object)");
  return *obj;
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

// ---------------------------------------------------------------- public

bool is_plain_file_name(std::string_view name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string_view::npos &&
         name.find('\0') == std::string_view::npos;
}

std::string encode_metadata(const Metadata& metadata) {
  const std::size_t hint = metadata_size_hint(metadata);
  json::monotonic_resource mr(metadata_arena_bytes(hint));
  const Storage sp(&mr);
  json::object doc = metadata_document(metadata, sp);
  return with_checksum(doc, hint);
}

std::string encode_metadata(const Metadata& metadata, const std::vector<WriteResults>& results) {
  // The entries that add_results would add, in its order; by index, the
  // first of equal ones gives the key (the index hint included) and the last
  // the value, as repeated storage_data[index] = value would.
  std::vector<const WriteResult*> added;
  std::size_t extra_bytes = 0;
  for (const WriteResults& r : results) {
    for (const WriteResult& item : r.items) {
      added.push_back(&item);
      extra_bytes += item.index.fqn.size() + item.storage_data.relative_path.size() + 96 +
                     (item.index.offset ? 8 * item.index.offset->size() + 12 : 0);
    }
    for (const FileInfo& f : r.files) extra_bytes += 64 + 19 * f.extent_checksums.size();
  }
  std::stable_sort(added.begin(), added.end(), [](const WriteResult* a, const WriteResult* b) {
    return a->index < b->index;
  });

  // At most this many storage entries: the old ones and every added one.
  const std::size_t n_storage = metadata.storage_data.size() + added.size();
  std::size_t n_files = metadata.files.size();
  for (const WriteResults& r : results) n_files += r.files.size();

  const std::size_t hint = metadata_size_hint(metadata) + extra_bytes;
  json::monotonic_resource mr(metadata_arena_bytes(hint));
  const Storage sp(&mr);
  json::object doc = metadata_document(
      metadata, sp, n_storage,
      [&](auto&& f) {
        auto old = metadata.storage_data.begin();
        const auto old_end = metadata.storage_data.end();
        for (std::size_t b = 0; b < added.size();) {
          std::size_t e = b + 1;
          while (e < added.size() && added[e]->index == added[b]->index) ++e;
          const MetadataIndex& key = added[b]->index;
          const StorageInfo& value = added[e - 1]->storage_data;
          for (; old != old_end && old->first < key; ++old) f(old->first, old->second);
          if (old != old_end && old->first == key) {
            f(old->first, value);  // the map keeps its key, takes the new value
            ++old;
          } else {
            f(key, value);
          }
          b = e;
        }
        for (; old != old_end; ++old) f(old->first, old->second);
      },
      n_files,
      [&](auto&& f) {
        for (const FileInfo& file : metadata.files) f(file);
        for (const WriteResults& r : results) {
          for (const FileInfo& file : r.files) f(file);
        }
      });
  return with_checksum(doc, hint);
}

Metadata decode_metadata(std::string_view text, const std::string& file) {
  const Reader r(file, /*strict=*/true);
  std::optional<Metadata> fast = decode_metadata_fast(text);
  Metadata md;
  if (fast) {
    md = std::move(*fast);
  } else {
    const json::value parsed = r.parse(text);
    const json::object& root = root_object(r, parsed);

    const json::value* format = root.if_contains("format");
    if (format == nullptr || !format->is_string() || format->get_string() != kFormatName) {
      r.fail("not a ringckpt checkpoint (\"format\" is not \"ringckpt\")");
    }
    // The version before the checksum: another version may hash differently.
    const json::value& version = r.field(root, "version", Path());
    if (!version.is_int64()) r.fail("version " + json::serialize(version) + " is not an integer");
    if (version.get_int64() != Metadata::kVersion) {
      r.fail("unsupported version " + std::to_string(version.get_int64()) +
             " (this build reads " + std::to_string(Metadata::kVersion) + ")");
    }
    check_checksum(r, root);
    md = read_metadata_document(r, root);
  }
  check_files(r, md.files);
  if (!metadata_is_sound(r, md)) {
    for (const auto& [fqn, item] : md.state_dict_metadata) {
      if (const auto* tensor = std::get_if<TensorStorageMetadata>(&item))
        check_tensor(r, fqn, *tensor);
    }
    check_storage(r, md);
  }
  return md;
}

std::string encode_metadata_payload(const Metadata& metadata) {
  const std::size_t hint = metadata_size_hint(metadata);
  json::monotonic_resource mr(metadata_arena_bytes(hint));
  const Storage sp(&mr);
  const json::object doc = metadata_document(metadata, sp);
  std::string text;
  text.reserve(hint);
  detail::serialize_append(text, doc);
  return text;
}

Metadata decode_metadata_payload(std::string_view text) {
  const Reader r("metadata payload", /*strict=*/false);
  const json::value parsed = r.parse(text);
  return read_metadata_document(r, r.object(parsed, Path("the payload")));
}

std::string encode_save_plan(const SavePlan& plan) {
  json::monotonic_resource mr(256 + plan.items.size() * 400);
  const Storage sp(&mr);
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
  return serialize(doc, 256 + plan.items.size() * 200);
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
  const Storage sp(&mr);
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
  return serialize(doc, 256 + plan.items.size() * 250);
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
  const Storage sp(&mr);
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
  return serialize(doc, 256 + results.items.size() * 150);
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
