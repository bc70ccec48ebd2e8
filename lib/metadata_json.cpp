// metadata_json.cpp — metadata.json and the payloads that cross ranks, as
// JSON through Boost.JSON.
//
// metadata.json is read with every field checked: it may be damaged or
// hostile, and the reader trusts nothing in it until it has been checked here.
// The payloads come from another rank of the same job; they are decoded
// losslessly and checked only for shape (types and presence of fields).
#include "metadata_json.hpp"

#include <algorithm>
#include <boost/json.hpp>
#include <limits>
#include <optional>
#include <set>
#include <utility>

#include "extent_checksum.hpp"
#include "ringckpt/error.hpp"
#include "ringckpt/io_options.hpp"

namespace ringckpt {
namespace {

namespace json = boost::json;

// Any count or size in metadata.json above this is corrupt; keeping values
// below it keeps every sum and product checked here free of overflow.
constexpr std::uint64_t kMaxValue = std::uint64_t{1} << 62;

constexpr std::string_view kChecksumKey = "checksum";

std::string in_quotes(std::string_view s) { return "'" + std::string(s) + "'"; }

std::string shape_string(const Shape& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i != 0) out += ',';
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

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

json::array to_json(const Shape& shape) {
  json::array out;
  out.reserve(shape.size());
  for (std::int64_t d : shape) out.emplace_back(d);
  return out;
}

json::object to_json(const std::map<std::string, std::string>& map) {
  json::object out;
  for (const auto& [key, value] : map) out.emplace(key, value);
  return out;
}

json::object to_json(const ChunkStorageMetadata& chunk) {
  json::object out;
  out.emplace("offsets", to_json(chunk.offsets));
  out.emplace("sizes", to_json(chunk.sizes));
  return out;
}

// Adds "fqn", and "offset" and "index" where set (absent where not).
void put_index(json::object& out, const MetadataIndex& index) {
  out.emplace("fqn", index.fqn);
  if (index.offset) out.emplace("offset", to_json(*index.offset));
  if (index.index) out.emplace("index", static_cast<std::uint64_t>(*index.index));
}

json::object to_json(const MetadataIndex& index) {
  json::object out;
  put_index(out, index);
  return out;
}

json::object to_json(const StorageMetadata& item) {
  json::object out;
  if (const auto* tensor = std::get_if<TensorStorageMetadata>(&item)) {
    out.emplace("type", "tensor");
    out.emplace("dtype", dtype_name(tensor->properties.dtype));
    out.emplace("size", to_json(tensor->size));
    json::array chunks;
    for (const auto& chunk : tensor->chunks) chunks.emplace_back(to_json(chunk));
    out.emplace("chunks", std::move(chunks));
  } else {
    out.emplace("type", "bytes");
  }
  return out;
}

json::object to_json(const FileInfo& file) {
  json::object out;
  out.emplace("path", file.relative_path);
  out.emplace("size", file.size);
  out.emplace("extent_size", file.extent_size);
  json::array checksums;
  checksums.reserve(file.extent_checksums.size());
  for (std::uint64_t c : file.extent_checksums) checksums.emplace_back(checksum_hex(c));
  out.emplace("checksums", std::move(checksums));
  return out;
}

json::array to_json(const std::vector<FileInfo>& files) {
  json::array out;
  for (const auto& f : files) out.emplace_back(to_json(f));
  return out;
}

json::object to_json(const StorageInfo& info) {
  json::object out;
  out.emplace("file", info.relative_path);
  out.emplace("offset", info.offset);
  out.emplace("length", info.length);
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

// The metadata document without its checksum, keys in the documented order.
json::object metadata_document(const Metadata& metadata) {
  json::object doc;
  doc.emplace("format", kFormatName);
  doc.emplace("version", metadata.version);

  json::object items;
  for (const auto& [fqn, item] : metadata.state_dict_metadata) items.emplace(fqn, to_json(item));
  doc.emplace("state_dict_metadata", std::move(items));

  json::array storage;
  for (const auto& [index, info] : metadata.storage_data) {
    json::object entry;
    put_index(entry, index);
    entry.emplace("file", info.relative_path);
    entry.emplace("byte_offset", info.offset);
    entry.emplace("length", info.length);
    storage.emplace_back(std::move(entry));
  }
  doc.emplace("storage_data", std::move(storage));
  doc.emplace("files", to_json(metadata.files));
  doc.emplace("planner_data", to_json(metadata.planner_data));
  return doc;
}

// ---------------------------------------------------------------- decoding

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

  json::value parse(std::string_view text) const {
    json::parse_options options;
    options.allow_invalid_utf8 = true;  // names are bytes to us; keep what was written
    json::parser parser(json::storage_ptr(), options);
    json::error_code ec;
    const std::size_t consumed = parser.write(text.data(), text.size(), ec);
    if (ec) {
      fail("not valid JSON (" + ec.message() + " near byte " + std::to_string(consumed) + ")");
    }
    return parser.release();
  }

  static std::string join(const std::string& path, std::string_view key) {
    return path.empty() ? std::string(key) : path + "." + std::string(key);
  }

  const json::value& field(const json::object& obj, std::string_view key,
                           const std::string& path) const {
    const json::value* v = obj.if_contains(key);
    if (v == nullptr) fail("missing field " + in_quotes(join(path, key)));
    return *v;
  }

  const json::object& object(const json::value& v, const std::string& path) const {
    if (const json::object* o = v.if_object()) return *o;
    fail(path + " is " + excerpt(v) + ", not an object");
  }

  const json::array& array(const json::value& v, const std::string& path) const {
    if (const json::array* a = v.if_array()) return *a;
    fail(path + " is " + excerpt(v) + ", not an array");
  }

  std::string string(const json::value& v, const std::string& path) const {
    if (const json::string* s = v.if_string()) return std::string(*s);
    fail(path + " is " + excerpt(v) + ", not a string");
  }

  bool boolean(const json::value& v, const std::string& path) const {
    if (const bool* b = v.if_bool()) return *b;
    fail(path + " is " + excerpt(v) + ", not true or false");
  }

  std::uint64_t u64(const json::value& v, const std::string& path) const {
    std::optional<std::uint64_t> x;
    if (v.is_uint64()) x = v.get_uint64();
    if (v.is_int64() && v.get_int64() >= 0) x = static_cast<std::uint64_t>(v.get_int64());
    if (!x || (strict_ && *x > kMaxValue)) fail(path + " is " + excerpt(v) + ", " + range());
    return *x;
  }

  // A dimension, offset or length of a shape.
  std::int64_t dim(const json::value& v, const std::string& path) const {
    if (strict_) return static_cast<std::int64_t>(u64(v, path));
    if (v.is_int64()) return v.get_int64();
    if (v.is_uint64() && v.get_uint64() <= std::numeric_limits<std::int64_t>::max()) {
      return static_cast<std::int64_t>(v.get_uint64());
    }
    fail(path + " is " + excerpt(v) + ", not a 64-bit integer");
  }

  int integer(const json::value& v, const std::string& path) const {
    if (v.is_int64() && v.get_int64() >= std::numeric_limits<int>::min() &&
        v.get_int64() <= std::numeric_limits<int>::max()) {
      return static_cast<int>(v.get_int64());
    }
    fail(path + " is " + excerpt(v) + ", not an integer");
  }

  Shape shape(const json::value& v, const std::string& path) const {
    const json::array& a = array(v, path);
    Shape out;
    out.reserve(a.size());
    for (std::size_t i = 0; i < a.size(); ++i)
      out.push_back(dim(a[i], path + "[" + std::to_string(i) + "]"));
    return out;
  }

  DType dtype(const json::value& v, const std::string& path) const {
    const std::string name = string(v, path);
    if (auto t = dtype_from_name(name)) return *t;
    fail(path + " names unknown dtype " + in_quotes(name));
  }

  std::uint64_t checksum(const json::value& v, const std::string& path) const {
    const json::string* s = v.if_string();
    std::optional<std::uint64_t> value = s ? parse_checksum_hex(*s) : std::nullopt;
    if (!value) fail(path + " is " + excerpt(v) + ", not 16 hex digits");
    return *value;
  }

  std::map<std::string, std::string> string_map(const json::value& v,
                                                const std::string& path) const {
    std::map<std::string, std::string> out;
    for (const auto& kv : object(v, path)) {
      out.emplace(std::string(kv.key()),
                  string(kv.value(), path + "[" + in_quotes(kv.key()) + "]"));
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

MetadataIndex read_index(const Reader& r, const json::object& obj, const std::string& path) {
  MetadataIndex index;
  index.fqn = r.string(r.field(obj, "fqn", path), Reader::join(path, "fqn"));
  if (const json::value* offset = Reader::optional(obj, "offset")) {
    index.offset = r.shape(*offset, Reader::join(path, "offset"));
  }
  if (const json::value* hint = Reader::optional(obj, "index")) {
    const std::uint64_t value = r.u64(*hint, Reader::join(path, "index"));
    if (value > std::numeric_limits<std::size_t>::max())
      r.fail(Reader::join(path, "index") + " is too large");
    index.index = static_cast<std::size_t>(value);
  }
  return index;
}

MetadataIndex read_index(const Reader& r, const json::value& v, const std::string& path) {
  return read_index(r, r.object(v, path), path);
}

ChunkStorageMetadata read_chunk(const Reader& r, const json::value& v, const std::string& path) {
  const json::object& obj = r.object(v, path);
  ChunkStorageMetadata chunk;
  chunk.offsets = r.shape(r.field(obj, "offsets", path), Reader::join(path, "offsets"));
  chunk.sizes = r.shape(r.field(obj, "sizes", path), Reader::join(path, "sizes"));
  return chunk;
}

StorageMetadata read_storage_metadata(const Reader& r, const json::value& v,
                                      const std::string& path) {
  const json::object& obj = r.object(v, path);
  const std::string type = r.string(r.field(obj, "type", path), Reader::join(path, "type"));
  if (type == "bytes") return BytesStorageMetadata{};
  if (type != "tensor")
    r.fail(Reader::join(path, "type") + " is " + in_quotes(type) + ", not 'tensor' or 'bytes'");

  TensorStorageMetadata tensor;
  tensor.properties.dtype = r.dtype(r.field(obj, "dtype", path), Reader::join(path, "dtype"));
  tensor.size = r.shape(r.field(obj, "size", path), Reader::join(path, "size"));
  const json::array& chunks = r.array(r.field(obj, "chunks", path), Reader::join(path, "chunks"));
  tensor.chunks.reserve(chunks.size());
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    tensor.chunks.push_back(read_chunk(r, chunks[i], path + ".chunks[" + std::to_string(i) + "]"));
  }
  return tensor;
}

FileInfo read_file(const Reader& r, const json::value& v, const std::string& path) {
  const json::object& obj = r.object(v, path);
  FileInfo file;
  file.relative_path = r.string(r.field(obj, "path", path), Reader::join(path, "path"));
  file.size = r.u64(r.field(obj, "size", path), Reader::join(path, "size"));
  file.extent_size = r.u64(r.field(obj, "extent_size", path), Reader::join(path, "extent_size"));
  const json::array& sums =
      r.array(r.field(obj, "checksums", path), Reader::join(path, "checksums"));
  file.extent_checksums.reserve(sums.size());
  for (std::size_t i = 0; i < sums.size(); ++i) {
    file.extent_checksums.push_back(
        r.checksum(sums[i], path + ".checksums[" + std::to_string(i) + "]"));
  }
  return file;
}

std::vector<FileInfo> read_files(const Reader& r, const json::value& v, const std::string& path) {
  const json::array& files = r.array(v, path);
  std::vector<FileInfo> out;
  out.reserve(files.size());
  for (std::size_t i = 0; i < files.size(); ++i) {
    out.push_back(read_file(r, files[i], path + "[" + std::to_string(i) + "]"));
  }
  return out;
}

StorageInfo read_storage_info(const Reader& r, const json::value& v, const std::string& path) {
  const json::object& obj = r.object(v, path);
  StorageInfo info;
  info.relative_path = r.string(r.field(obj, "file", path), Reader::join(path, "file"));
  info.offset = r.u64(r.field(obj, "offset", path), Reader::join(path, "offset"));
  info.length = r.u64(r.field(obj, "length", path), Reader::join(path, "length"));
  return info;
}

// The fields of a metadata document (or payload), checked for type only.
Metadata read_metadata_document(const Reader& r, const json::object& root) {
  Metadata md;
  md.version = r.integer(r.field(root, "version", ""), "version");

  for (const auto& kv : r.object(r.field(root, "state_dict_metadata", ""), "state_dict_metadata")) {
    const std::string path = "state_dict_metadata[" + in_quotes(kv.key()) + "]";
    md.state_dict_metadata.emplace(std::string(kv.key()),
                                   read_storage_metadata(r, kv.value(), path));
  }

  const json::array& storage = r.array(r.field(root, "storage_data", ""), "storage_data");
  for (std::size_t i = 0; i < storage.size(); ++i) {
    const std::string path = "storage_data[" + std::to_string(i) + "]";
    const json::object& entry = r.object(storage[i], path);
    MetadataIndex index = read_index(r, entry, path);
    StorageInfo info;
    info.relative_path = r.string(r.field(entry, "file", path), Reader::join(path, "file"));
    info.offset = r.u64(r.field(entry, "byte_offset", path), Reader::join(path, "byte_offset"));
    info.length = r.u64(r.field(entry, "length", path), Reader::join(path, "length"));
    const std::string name = describe(index);
    if (!md.storage_data.emplace(std::move(index), std::move(info)).second) {
      r.fail(path + " repeats the storage entry of " + name);
    }
  }

  md.files = read_files(r, r.field(root, "files", ""), "files");
  md.planner_data = r.string_map(r.field(root, "planner_data", ""), "planner_data");
  return md;
}

// -------------------------------------------------------- checks of meaning

void check_files(const Reader& r, const std::vector<FileInfo>& files) {
  std::set<std::string_view> seen;
  for (std::size_t i = 0; i < files.size(); ++i) {
    const FileInfo& f = files[i];
    const std::string path = "files[" + std::to_string(i) + "]";
    const std::string& name = f.relative_path;
    if (!is_plain_file_name(name)) {
      const bool escapes = name.starts_with('/') || name == ".." || name.starts_with("../") ||
                           name.find("/../") != std::string::npos || name.ends_with("/..");
      r.fail(path + ".path " + in_quotes(name) +
             (escapes ? " escapes the checkpoint directory"
                      : " is not a plain file name inside the checkpoint directory"));
    }
    if (name == kMetadataFile)
      r.fail(path + ".path " + in_quotes(name) + " names the metadata file itself");
    if (!seen.insert(name).second) r.fail(path + ".path " + in_quotes(name) + " is listed twice");
    if (f.extent_size > kMaxExtentSize) {
      r.fail(path + ".extent_size " + std::to_string(f.extent_size) + " of " + in_quotes(name) +
             " is absurdly large (the limit is 1 GiB)");
    }
    if (f.extent_size == 0 || f.extent_size % kAlignment != 0) {
      r.fail(path + ".extent_size " + std::to_string(f.extent_size) + " of " + in_quotes(name) +
             " is not a positive multiple of " + std::to_string(kAlignment));
    }
    // size <= 2^62 and extent_size >= 4096: no overflow.
    const std::uint64_t extents = (f.size + f.extent_size - 1) / f.extent_size;
    if (f.extent_checksums.size() != extents) {
      r.fail(path + ".checksums of " + in_quotes(name) + " holds " +
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

// Pre: every chunk lies inside the tensor. Fails unless the non-empty chunks
// are pairwise disjoint and together cover every element.
void check_coverage(const Reader& r, const std::string& fqn, const TensorStorageMetadata& t) {
  std::vector<const ChunkStorageMetadata*> boxes;
  for (const auto& c : t.chunks) {
    if (numel(c.sizes) != 0) boxes.push_back(&c);
  }
  const std::size_t rank = t.size.size();
  if (rank > 0) {
    // Sweep along the dimension split most often, so that typical shardings
    // (by rows, by columns, a grid) compare each chunk with few others.
    std::size_t sweep = 0, most = 0;
    for (std::size_t d = 0; d < rank; ++d) {
      std::set<std::int64_t> starts;
      for (const auto* c : boxes) starts.insert(c->offsets[d]);
      if (starts.size() > most) most = starts.size(), sweep = d;
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
  const auto total = static_cast<std::uint64_t>(numel(t.size));
  if (covered != total) {
    r.fail("tensor " + in_quotes(fqn) + " chunks leave part of it uncovered (they cover " +
           std::to_string(covered) + " of " + std::to_string(total) + " elements)");
  }
}

// Pre: read by a strict Reader, so every dimension is in [0, kMaxValue].
void check_tensor(const Reader& r, const std::string& fqn, const TensorStorageMetadata& t) {
  if (!shape_bytes(t.size, dtype_size(t.properties.dtype))) {
    r.fail("tensor " + in_quotes(fqn) + " size " + shape_string(t.size) + " is absurdly large");
  }
  std::set<Shape> starts;
  for (std::size_t i = 0; i < t.chunks.size(); ++i) {
    const ChunkStorageMetadata& c = t.chunks[i];
    const std::string what = "tensor " + in_quotes(fqn) + " chunk " + std::to_string(i) +
                             " (offsets " + shape_string(c.offsets) + ", sizes " +
                             shape_string(c.sizes) + ")";
    if (c.offsets.size() != t.size.size() || c.sizes.size() != t.size.size()) {
      r.fail(what + " does not have the rank of size " + shape_string(t.size));
    }
    for (std::size_t d = 0; d < t.size.size(); ++d) {
      if (c.offsets[d] + c.sizes[d] > t.size[d]) {
        r.fail(what + " lies outside the tensor's size " + shape_string(t.size));
      }
    }
    if (!starts.insert(c.offsets).second) r.fail(what + " starts where another chunk starts");
  }
  check_coverage(r, fqn, t);
}

// Bytes that the chunk named by `index` must occupy, or nullopt for a blob
// (any length). Fails if `index` names no item or chunk.
std::optional<std::uint64_t> required_length(const Reader& r, const Metadata& md,
                                             const MetadataIndex& index) {
  const std::string name = "storage entry " + describe(index);
  auto it = md.state_dict_metadata.find(index.fqn);
  if (it == md.state_dict_metadata.end()) r.fail(name + " names no item of state_dict_metadata");
  const auto* tensor = std::get_if<TensorStorageMetadata>(&it->second);
  if (tensor == nullptr) {
    if (index.offset)
      r.fail(name + " has a chunk offset, but " + in_quotes(index.fqn) + " is bytes");
    return std::nullopt;
  }
  if (!index.offset)
    r.fail(name + " has no chunk offset, but " + in_quotes(index.fqn) + " is a tensor");
  for (const auto& c : tensor->chunks) {
    if (c.offsets == *index.offset) {
      // Fits: check_tensor saw the chunk inside the tensor, whose bytes fit.
      return shape_bytes(c.sizes, dtype_size(tensor->properties.dtype)).value();
    }
  }
  r.fail(name + " names no chunk of tensor " + in_quotes(index.fqn));
}

// Pre: check_files and check_tensor passed.
void check_storage(const Reader& r, const Metadata& md) {
  std::map<std::string_view, const FileInfo*> files;
  for (const auto& f : md.files) files.emplace(f.relative_path, &f);

  for (const auto& [index, info] : md.storage_data) {
    const std::string name = "storage entry " + describe(index);
    const std::optional<std::uint64_t> required = required_length(r, md, index);
    if (required && info.length != *required) {
      r.fail(name + " is " + std::to_string(info.length) + " bytes long, but its chunk needs " +
             std::to_string(*required));
    }
    auto file = files.find(info.relative_path);
    if (file == files.end()) {
      r.fail(name + " is in " + in_quotes(info.relative_path) + ", which files does not list");
    }
    const std::uint64_t size = file->second->size;
    // offset, length <= 2^62: the sum cannot overflow.
    if (info.offset + info.length > size) {
      r.fail(name + " lies beyond the end of " + info.relative_path + " (offset " +
             std::to_string(info.offset) + " + " + std::to_string(info.length) + " > size " +
             std::to_string(size) + ")");
    }
  }

  // Every chunk and every blob has its bytes somewhere.
  for (const auto& [fqn, item] : md.state_dict_metadata) {
    if (const auto* tensor = std::get_if<TensorStorageMetadata>(&item)) {
      for (const auto& c : tensor->chunks) {
        if (!md.storage_data.contains(MetadataIndex{fqn, c.offsets, std::nullopt})) {
          r.fail("tensor " + in_quotes(fqn) + " chunk at " + shape_string(c.offsets) +
                 " has no storage entry");
        }
      }
    } else if (!md.storage_data.contains(MetadataIndex{fqn, std::nullopt, std::nullopt})) {
      r.fail("bytes item " + in_quotes(fqn) + " has no storage entry");
    }
  }
}

void check_checksum(const Reader& r, const json::object& root) {
  const std::uint64_t stored =
      r.checksum(r.field(root, kChecksumKey, ""), std::string(kChecksumKey));
  // The document as it was before the checksum was added; Boost.JSON keeps
  // key order, so this serializes to the very bytes that were hashed.
  json::object body;
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
WriteItemType read_write_type(const Reader& r, const json::value& v, const std::string& path) {
  const std::string name = r.string(v, path);
  for (auto t : {WriteItemType::TENSOR, WriteItemType::SHARD, WriteItemType::BYTE_IO}) {
    if (type_name(t) == name) return t;
  }
  r.fail(path + " names unknown write item type " + in_quotes(name));
}

LoadItemType read_load_type(const Reader& r, const json::value& v, const std::string& path) {
  const std::string name = r.string(v, path);
  for (auto t : {LoadItemType::TENSOR, LoadItemType::BYTE_IO}) {
    if (type_name(t) == name) return t;
  }
  r.fail(path + " names unknown read item type " + in_quotes(name));
}

const char* const kPlanPayload = "plan payload";

}  // namespace

// ---------------------------------------------------------------- public

bool is_plain_file_name(std::string_view name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string_view::npos &&
         name.find('\0') == std::string_view::npos;
}

std::string encode_metadata(const Metadata& metadata) {
  json::object doc = metadata_document(metadata);
  const std::uint64_t checksum = checksum_of_text(json::serialize(doc));
  doc.emplace(kChecksumKey, checksum_hex(checksum));
  return json::serialize(doc) + "\n";
}

Metadata decode_metadata(std::string_view text, const std::string& file) {
  const Reader r(file, /*strict=*/true);
  const json::value parsed = r.parse(text);
  const json::object& root = root_object(r, parsed);

  const json::value* format = root.if_contains("format");
  if (format == nullptr || !format->is_string() || format->get_string() != kFormatName) {
    r.fail("not a ringckpt checkpoint (\"format\" is not \"ringckpt\")");
  }
  // The version before the checksum: another version may hash differently.
  const json::value& version = r.field(root, "version", "");
  if (!version.is_int64()) r.fail("version " + json::serialize(version) + " is not an integer");
  if (version.get_int64() != Metadata::kVersion) {
    r.fail("unsupported version " + std::to_string(version.get_int64()) + " (this build reads " +
           std::to_string(Metadata::kVersion) + ")");
  }
  check_checksum(r, root);

  Metadata md = read_metadata_document(r, root);
  check_files(r, md.files);
  for (const auto& [fqn, item] : md.state_dict_metadata) {
    if (const auto* tensor = std::get_if<TensorStorageMetadata>(&item))
      check_tensor(r, fqn, *tensor);
  }
  check_storage(r, md);
  return md;
}

std::string encode_metadata_payload(const Metadata& metadata) {
  return json::serialize(metadata_document(metadata));
}

Metadata decode_metadata_payload(std::string_view text) {
  const Reader r("metadata payload", /*strict=*/false);
  const json::value parsed = r.parse(text);
  return read_metadata_document(r, r.object(parsed, "the payload"));
}

std::string encode_save_plan(const SavePlan& plan) {
  json::array items;
  for (const WriteItem& item : plan.items) {
    json::object o;
    o.emplace("index", to_json(item.index));
    o.emplace("type", type_name(item.type));
    if (item.tensor_data) {
      json::object td;
      td.emplace("chunk", to_json(item.tensor_data->chunk));
      td.emplace("dtype", dtype_name(item.tensor_data->properties.dtype));
      td.emplace("size", to_json(item.tensor_data->size));
      o.emplace("tensor_data", std::move(td));
    }
    o.emplace("bytes_io_size", item.bytes_io_size);
    items.emplace_back(std::move(o));
  }
  json::object doc;
  doc.emplace("items", std::move(items));
  doc.emplace("storage_data", plan.storage_data);
  doc.emplace("planner_data", to_json(plan.planner_data));
  doc.emplace("usable", plan.usable);
  return json::serialize(doc);
}

SavePlan decode_save_plan(std::string_view text) {
  const Reader r(kPlanPayload, /*strict=*/false);
  const json::value parsed = r.parse(text);
  const json::object& doc = r.object(parsed, "the save plan");
  SavePlan plan;
  const json::array& items = r.array(r.field(doc, "items", ""), "items");
  plan.items.reserve(items.size());
  for (std::size_t i = 0; i < items.size(); ++i) {
    const std::string path = "items[" + std::to_string(i) + "]";
    const json::object& o = r.object(items[i], path);
    WriteItem item;
    item.index = read_index(r, r.field(o, "index", path), Reader::join(path, "index"));
    item.type = read_write_type(r, r.field(o, "type", path), Reader::join(path, "type"));
    if (const json::value* v = Reader::optional(o, "tensor_data")) {
      const std::string td_path = Reader::join(path, "tensor_data");
      const json::object& td = r.object(*v, td_path);
      TensorWriteData data;
      data.chunk = read_chunk(r, r.field(td, "chunk", td_path), Reader::join(td_path, "chunk"));
      data.properties.dtype =
          r.dtype(r.field(td, "dtype", td_path), Reader::join(td_path, "dtype"));
      data.size = r.shape(r.field(td, "size", td_path), Reader::join(td_path, "size"));
      item.tensor_data = std::move(data);
    }
    item.bytes_io_size =
        r.u64(r.field(o, "bytes_io_size", path), Reader::join(path, "bytes_io_size"));
    plan.items.push_back(std::move(item));
  }
  plan.storage_data = r.string(r.field(doc, "storage_data", ""), "storage_data");
  plan.planner_data = r.string_map(r.field(doc, "planner_data", ""), "planner_data");
  plan.usable = r.boolean(r.field(doc, "usable", ""), "usable");
  return plan;
}

std::string encode_load_plan(const LoadPlan& plan) {
  json::array items;
  for (const ReadItem& item : plan.items) {
    json::object o;
    o.emplace("type", type_name(item.type));
    o.emplace("dest_index", to_json(item.dest_index));
    o.emplace("dest_offsets", to_json(item.dest_offsets));
    o.emplace("storage_index", to_json(item.storage_index));
    o.emplace("storage_offsets", to_json(item.storage_offsets));
    o.emplace("lengths", to_json(item.lengths));
    items.emplace_back(std::move(o));
  }
  json::object doc;
  doc.emplace("items", std::move(items));
  doc.emplace("storage_data", plan.storage_data);
  doc.emplace("planner_data", to_json(plan.planner_data));
  return json::serialize(doc);
}

LoadPlan decode_load_plan(std::string_view text) {
  const Reader r(kPlanPayload, /*strict=*/false);
  const json::value parsed = r.parse(text);
  const json::object& doc = r.object(parsed, "the load plan");
  LoadPlan plan;
  const json::array& items = r.array(r.field(doc, "items", ""), "items");
  plan.items.reserve(items.size());
  for (std::size_t i = 0; i < items.size(); ++i) {
    const std::string path = "items[" + std::to_string(i) + "]";
    const json::object& o = r.object(items[i], path);
    auto at = [&](std::string_view key) -> const json::value& { return r.field(o, key, path); };
    auto sub = [&](std::string_view key) { return Reader::join(path, key); };
    ReadItem item;
    item.type = read_load_type(r, at("type"), sub("type"));
    item.dest_index = read_index(r, at("dest_index"), sub("dest_index"));
    item.dest_offsets = r.shape(at("dest_offsets"), sub("dest_offsets"));
    item.storage_index = read_index(r, at("storage_index"), sub("storage_index"));
    item.storage_offsets = r.shape(at("storage_offsets"), sub("storage_offsets"));
    item.lengths = r.shape(at("lengths"), sub("lengths"));
    plan.items.push_back(std::move(item));
  }
  plan.storage_data = r.string(r.field(doc, "storage_data", ""), "storage_data");
  plan.planner_data = r.string_map(r.field(doc, "planner_data", ""), "planner_data");
  return plan;
}

std::string encode_write_results(const WriteResults& results) {
  json::array items;
  for (const WriteResult& item : results.items) {
    json::object o;
    o.emplace("index", to_json(item.index));
    o.emplace("size_in_bytes", item.size_in_bytes);
    o.emplace("storage_data", to_json(item.storage_data));
    items.emplace_back(std::move(o));
  }
  json::object doc;
  doc.emplace("items", std::move(items));
  doc.emplace("files", to_json(results.files));
  return json::serialize(doc);
}

WriteResults decode_write_results(std::string_view text) {
  const Reader r(kPlanPayload, /*strict=*/false);
  const json::value parsed = r.parse(text);
  const json::object& doc = r.object(parsed, "the write results");
  WriteResults results;
  const json::array& items = r.array(r.field(doc, "items", ""), "items");
  results.items.reserve(items.size());
  for (std::size_t i = 0; i < items.size(); ++i) {
    const std::string path = "items[" + std::to_string(i) + "]";
    const json::object& o = r.object(items[i], path);
    WriteResult item;
    item.index = read_index(r, r.field(o, "index", path), Reader::join(path, "index"));
    item.size_in_bytes =
        r.u64(r.field(o, "size_in_bytes", path), Reader::join(path, "size_in_bytes"));
    item.storage_data =
        read_storage_info(r, r.field(o, "storage_data", path), Reader::join(path, "storage_data"));
    results.items.push_back(std::move(item));
  }
  results.files = read_files(r, r.field(doc, "files", ""), "files");
  return results;
}

}  // namespace ringckpt
