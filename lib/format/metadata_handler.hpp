// lib/format/metadata_handler.hpp — the handler of Boost.JSON's streaming
// parser (basic_parser) that decodes a metadata document: used only by
// metadata_decoder.cpp, which decides which of the faults it records is
// reported.
#pragma once

#include <boost/json/basic_parser.hpp>
#include <boost/json.hpp>

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "format/extent_checksum.hpp"
#include "format/message_text.hpp"
#include "format/metadata_json.hpp"
#include "format/tensor_geometry.hpp"
#include "ringckpt/metadata.hpp"

namespace ringckpt::detail::metadata_handler {

namespace json = boost::json;

// Any count, size or offset above this is corrupt; values below it keep every
// sum and product the checks make free of overflow.
constexpr std::uint64_t kMaxValue = detail::kMaxTensorBytes;

inline std::string_view view(json::string_view s) { return {s.data(), s.size()}; }

// One value as the parser reports it: its kind, and the value of a scalar.
struct Value {
  enum class Kind : std::uint8_t { object, array, string, int64, uint64, real, boolean, null };
  Kind kind;
  std::string_view str = {};
  std::int64_t i = 0;
  std::uint64_t u = 0;
  double d = 0;
  bool b = false;

  bool is_container() const { return kind == Kind::object || kind == Kind::array; }

  // A count, size or offset: an integer in [0, kMaxValue].
  std::optional<std::uint64_t> count() const {
    if (kind == Kind::int64 && i >= 0 && static_cast<std::uint64_t>(i) <= kMaxValue) {
      return static_cast<std::uint64_t>(i);
    }
    if (kind == Kind::uint64 && u <= kMaxValue) return u;
    return std::nullopt;
  }

  // The value as it reads in a message: its JSON text, cut short if long.
  std::string excerpt() const {
    json::value v;
    switch (kind) {
      case Kind::object: return "an object";
      case Kind::array: return "an array";
      case Kind::string: v = json::string(json::string_view(str.data(), str.size())); break;
      case Kind::int64: v = i; break;
      case Kind::uint64: v = u; break;
      case Kind::real: v = d; break;
      case Kind::boolean: v = b; break;
      case Kind::null: break;
    }
    std::string text = json::serialize(v);
    if (text.size() > 40) text = text.substr(0, 37) + "...";
    return text;
  }
};

// What a container on the parser's stack is, and so what its values are.
enum class Ctx : std::uint8_t {
  root, items, item, chunks, chunk, shape, storage, entry, files, file, checksums, planner,
  meta, modules, skip
};

// The keys of each kind of object, in the order encode_metadata writes them
// (the order in which missing ones are reported). Key k is bit k of `seen`.
constexpr std::array<std::string_view, 8> kRootKeys = {
    "format", "version", "state_dict_metadata", "storage_data", "files", "planner_data",
    "storage_meta", "checksum"};
enum : std::uint8_t { kFormat, kVersion, kStateDict, kStorage, kFiles, kPlanner, kStorageMeta,
                      kChecksum };
constexpr std::array<std::string_view, 4> kItemKeys = {"type", "dtype", "size", "chunks"};
enum : std::uint8_t { kItemType, kItemDtype, kItemSize, kItemChunks };
constexpr std::array<std::string_view, 2> kChunkKeys = {"offsets", "sizes"};
enum : std::uint8_t { kChunkOffsets, kChunkSizes };
constexpr std::array<std::string_view, 6> kEntryKeys = {"fqn",  "offset",      "index",
                                                        "file", "byte_offset", "length"};
enum : std::uint8_t { kEntryFqn, kEntryOffset, kEntryIndex, kEntryFile, kEntryByteOffset,
                      kEntryLength };
constexpr std::array<std::string_view, 4> kFileKeys = {"path", "size", "extent_size", "checksums"};
enum : std::uint8_t { kFilePath, kFileSize, kFileExtentSize, kFileChecksums };
constexpr std::array<std::string_view, 4> kMetaKeys = {"checkpoint_id", "save_id", "load_id",
                                                       "modules"};
enum : std::uint8_t { kMetaCheckpointId, kMetaSaveId, kMetaLoadId, kMetaModules };
constexpr std::uint8_t kUnknownKey = 0xff;

inline std::span<const std::string_view> keys_of(Ctx ctx) {
  switch (ctx) {
    case Ctx::root: return kRootKeys;
    case Ctx::item: return kItemKeys;
    case Ctx::chunk: return kChunkKeys;
    case Ctx::entry: return kEntryKeys;
    case Ctx::file: return kFileKeys;
    case Ctx::meta: return kMetaKeys;
    default: return {};
  }
}

inline bool is_array(Ctx ctx) {
  return ctx == Ctx::chunks || ctx == Ctx::shape || ctx == Ctx::storage || ctx == Ctx::files ||
         ctx == Ctx::checksums || ctx == Ctx::modules;
}

// The handler of basic_parser. It never stops the parser: faults are
// recorded (the first one) and the rest of the document is skipped but for
// the members of the root, which decode_metadata_text reports first.
class MetadataHandler {
 public:
  static constexpr std::size_t max_object_size = std::size_t(-1);
  static constexpr std::size_t max_array_size = std::size_t(-1);
  static constexpr std::size_t max_key_size = std::size_t(-1);
  static constexpr std::size_t max_string_size = std::size_t(-1);

  Metadata md;
  bool root_is_object = false;
  std::optional<std::string> fault;  // the first fault in a field, with its path

  // The root members that are checked before any other field.
  bool format_ok = false;
  bool has_version = false;
  std::optional<std::int64_t> version;  // set if an integer
  std::string version_text;
  bool has_checksum = false;
  std::optional<std::uint64_t> checksum;  // set if 16 hex digits
  std::string checksum_text;

  bool on_document_begin(json::error_code&) { return true; }
  bool on_document_end(json::error_code&) { return true; }

  bool on_object_begin(json::error_code&) { return value({Value::Kind::object}); }
  bool on_array_begin(json::error_code&) { return value({Value::Kind::array}); }
  bool on_object_end(std::size_t, json::error_code&) { return end_object(); }
  bool on_array_end(std::size_t, json::error_code&) { return end_array(); }

  bool on_key_part(json::string_view s, std::size_t, json::error_code&) { return part(s); }
  bool on_key(json::string_view s, std::size_t, json::error_code&) { return key(whole(s)); }
  bool on_string_part(json::string_view s, std::size_t, json::error_code&) { return part(s); }
  bool on_string(json::string_view s, std::size_t, json::error_code&) {
    return value({Value::Kind::string, whole(s)});
  }
  bool on_number_part(json::string_view, json::error_code&) { return true; }
  bool on_int64(std::int64_t v, json::string_view, json::error_code&) {
    // The commonest value by far, a dimension of a shape, goes straight in.
    if (!stack_.empty() && stack_.back().ctx == Ctx::shape && v >= 0 &&
        static_cast<std::uint64_t>(v) <= kMaxValue) {
      ++stack_.back().n;
      dims_.push_back(v);
      return true;
    }
    return value({.kind = Value::Kind::int64, .i = v});
  }
  bool on_uint64(std::uint64_t v, json::string_view, json::error_code&) {
    return value({.kind = Value::Kind::uint64, .u = v});
  }
  bool on_double(double v, json::string_view, json::error_code&) {
    return value({.kind = Value::Kind::real, .d = v});
  }
  bool on_bool(bool v, json::error_code&) { return value({.kind = Value::Kind::boolean, .b = v}); }
  bool on_null(json::error_code&) { return value({Value::Kind::null}); }
  bool on_comment_part(json::string_view, json::error_code&) { return true; }
  bool on_comment(json::string_view, json::error_code&) { return true; }

 private:
  struct Frame {
    Ctx ctx;
    std::uint8_t field = kUnknownKey;  // an object's current key, in keys_of(ctx)
    std::uint32_t seen = 0;            // the keys given so far, one bit each
    std::size_t n = 0;                 // an array's values so far
    std::string_view key{};            // the current key, for paths
  };

  // ------------------------------------------------------------ paths

  // The path of the value now being read, through the first `depth` frames:
  // "state_dict_metadata['w'].size[0]".
  std::string path(std::size_t depth) const {
    std::string out;
    for (std::size_t k = 0; k < depth; ++k) {
      const Frame& f = stack_[k];
      if (f.ctx == Ctx::items || f.ctx == Ctx::planner) {
        out += "[" + in_quotes(f.key) + "]";
      } else if (is_array(f.ctx)) {
        out += "[" + std::to_string(f.n - 1) + "]";
      } else {
        if (!out.empty()) out += '.';
        out += f.key;
      }
    }
    return out;
  }
  std::string path() const { return path(stack_.size()); }

  // Records `message` unless a fault is recorded already; returns true (the
  // parse goes on).
  bool record(std::string message) {
    if (!fault) fault = std::move(message);
    return true;
  }
  bool wrong(const Value& v, std::string_view wanted) {
    return record(path() + " is " + v.excerpt() + ", " + std::string(wanted));
  }

  // ------------------------------------------------------------ structure

  bool push(Ctx ctx) {
    stack_.push_back(Frame{ctx});
    return true;
  }

  // A value of an unknown key, or of any key after a fault: containers are
  // entered to keep the stack in step, and nothing is read.
  bool skip(const Value& v) { return v.is_container() ? push(Ctx::skip) : true; }

  bool expect_object(const Value& v, Ctx ctx) {
    if (v.kind != Value::Kind::object) {
      wrong(v, "not an object");
      return skip(v);
    }
    return push(ctx);
  }
  bool expect_array(const Value& v, Ctx ctx) {
    if (v.kind != Value::Kind::array) {
      wrong(v, "not an array");
      return skip(v);
    }
    return push(ctx);
  }
  bool expect_shape(const Value& v, Shape* shape) {
    shape_ = shape;
    dims_.clear();
    return expect_array(v, Ctx::shape);
  }
  // The string value `v`, or nullopt (the fault recorded).
  std::optional<std::string_view> expect_string(const Value& v) {
    if (v.kind == Value::Kind::string) return v.str;
    wrong(v, "not a string");
    skip(v);
    return std::nullopt;
  }
  std::optional<std::uint64_t> expect_count(const Value& v) {
    if (auto x = v.count()) return x;
    wrong(v, "not an integer in [0, 2^62]");
    skip(v);
    return std::nullopt;
  }

  // Every value, container or scalar, comes here first.
  bool value(const Value& v) {
    if (stack_.empty()) {
      root_is_object = v.kind == Value::Kind::object;
      return push(root_is_object ? Ctx::root : Ctx::skip);
    }
    Frame& f = stack_.back();
    if (is_array(f.ctx)) ++f.n;
    if (f.ctx == Ctx::root) return root_value(f.field, v);
    if (fault || f.ctx == Ctx::skip) return skip(v);
    switch (f.ctx) {
      case Ctx::items:
        tensor_ = TensorStorageMetadata{};
        bytes_ = std::nullopt;
        return expect_object(v, Ctx::item);
      case Ctx::item:
        return item_value(f.field, v);
      case Ctx::chunks:
        if (v.kind == Value::Kind::object) tensor_.chunks.emplace_back();
        return expect_object(v, Ctx::chunk);
      case Ctx::chunk:
        if (f.field == kChunkOffsets) return expect_shape(v, &tensor_.chunks.back().offsets);
        if (f.field == kChunkSizes) return expect_shape(v, &tensor_.chunks.back().sizes);
        return skip(v);
      case Ctx::shape:
        if (auto x = expect_count(v)) dims_.push_back(static_cast<std::int64_t>(*x));
        return true;
      case Ctx::storage:
        index_ = MetadataIndex{};
        info_ = StorageInfo{};
        return expect_object(v, Ctx::entry);
      case Ctx::entry:
        return entry_value(f.field, v);
      case Ctx::files:
        if (v.kind == Value::Kind::object) md.files.emplace_back();
        return expect_object(v, Ctx::file);
      case Ctx::file:
        return file_value(f.field, v);
      case Ctx::checksums: {
        auto sum = v.kind == Value::Kind::string ? parse_checksum_hex(v.str) : std::nullopt;
        if (!sum) return wrong(v, "not 16 hex digits"), skip(v);
        md.files.back().extent_checksums.push_back(*sum);
        return true;
      }
      case Ctx::planner:
        if (auto s = expect_string(v)) planner_value_->assign(*s);
        return true;
      case Ctx::meta:
        return meta_value(f.field, v);
      case Ctx::modules:  // REQUIRES: md.storage_meta set (on entering "storage_meta")
        if (auto s = expect_string(v)) md.storage_meta->modules.emplace_back(*s);
        return true;
      default:
        return skip(v);
    }
  }

  bool root_value(std::uint8_t field, const Value& v) {
    switch (field) {
      case kFormat:
        format_ok = v.kind == Value::Kind::string && v.str == kFormatName;
        return skip(v);
      case kVersion:
        has_version = true;
        if (v.kind == Value::Kind::int64) version = v.i;
        version_text = v.excerpt();
        return skip(v);
      case kChecksum:
        has_checksum = true;
        if (v.kind == Value::Kind::string) checksum = parse_checksum_hex(v.str);
        checksum_text = v.excerpt();
        return skip(v);
      default:
        break;
    }
    if (fault) return skip(v);
    switch (field) {
      case kStateDict: return expect_object(v, Ctx::items);
      case kStorage: return expect_array(v, Ctx::storage);
      case kFiles: return expect_array(v, Ctx::files);
      case kPlanner: return expect_object(v, Ctx::planner);
      case kStorageMeta:  // optional
        if (v.kind == Value::Kind::object) md.storage_meta.emplace();
        return expect_object(v, Ctx::meta);
      default: return skip(v);
    }
  }

  bool item_value(std::uint8_t field, const Value& v) {
    switch (field) {
      case kItemType:
        if (auto s = expect_string(v)) {
          if (*s == "bytes" || *s == "tensor") {
            bytes_ = *s == "bytes";
          } else {
            record(path() + " is " + in_quotes(*s) + ", not 'tensor' or 'bytes'");
          }
        }
        return true;
      case kItemDtype:
        if (auto s = expect_string(v)) {
          if (auto t = dtype_from_name(*s)) {
            tensor_.properties.dtype = *t;
          } else {
            record(path() + " names unknown dtype " + in_quotes(*s));
          }
        }
        return true;
      case kItemSize: return expect_shape(v, &tensor_.size);
      case kItemChunks: return expect_array(v, Ctx::chunks);
      default: return skip(v);
    }
  }

  bool entry_value(std::uint8_t field, const Value& v) {
    switch (field) {
      case kEntryFqn:
        if (auto s = expect_string(v)) {
          if (last_fqn_ != *s) last_fqn_ = Fqn(*s);  // a tensor's chunks share its name
          index_.fqn = last_fqn_;
        }
        return true;
      case kEntryOffset:  // optional: null is absent
        return v.kind == Value::Kind::null ? true : expect_shape(v, &index_.offset.emplace());
      case kEntryIndex:  // optional: null is absent
        if (v.kind == Value::Kind::null) return true;
        if (auto x = expect_count(v)) index_.index = static_cast<std::size_t>(*x);
        return true;
      case kEntryFile:
        if (auto s = expect_string(v)) info_.relative_path.assign(*s);
        return true;
      case kEntryByteOffset:
        if (auto x = expect_count(v)) info_.offset = *x;
        return true;
      case kEntryLength:
        if (auto x = expect_count(v)) info_.length = *x;
        return true;
      default:
        return skip(v);
    }
  }

  // A field of "storage_meta". REQUIRES: md.storage_meta set.
  bool meta_value(std::uint8_t field, const Value& v) {
    StorageMeta& meta = *md.storage_meta;
    switch (field) {
      case kMetaCheckpointId:
        if (auto s = expect_string(v)) meta.checkpoint_id.assign(*s);
        return true;
      case kMetaSaveId:
        if (auto s = expect_string(v)) meta.save_id.assign(*s);
        return true;
      case kMetaLoadId:
        if (auto s = expect_string(v)) meta.load_id.assign(*s);
        return true;
      case kMetaModules:
        return expect_array(v, Ctx::modules);
      default:
        return skip(v);
    }
  }

  bool file_value(std::uint8_t field, const Value& v) {
    FileInfo& file = md.files.back();
    switch (field) {
      case kFilePath:
        if (auto s = expect_string(v)) file.relative_path.assign(*s);
        return true;
      case kFileSize:
        if (auto x = expect_count(v)) file.size = *x;
        return true;
      case kFileExtentSize:
        if (auto x = expect_count(v)) file.extent_size = *x;
        return true;
      case kFileChecksums:
        return expect_array(v, Ctx::checksums);
      default:
        return skip(v);
    }
  }

  bool key(std::string_view k) {
    Frame& f = stack_.back();
    if (f.ctx == Ctx::skip || (fault && f.ctx != Ctx::root)) return true;
    if (f.ctx == Ctx::items) {
      item_ = &insert_key(md.state_dict_metadata, k, f);
      return true;
    }
    if (f.ctx == Ctx::planner) {
      planner_value_ = &insert_key(md.planner_data, k, f);
      return true;
    }
    const auto keys = keys_of(f.ctx);
    // Keys come in the order written: try the one after the last first.
    const std::size_t first = f.field == kUnknownKey ? 0 : f.field + 1u;
    f.field = kUnknownKey;
    for (std::size_t n = 0; n < keys.size(); ++n) {
      const std::size_t i = (first + n) % keys.size();
      if (keys[i] == k) {
        f.field = static_cast<std::uint8_t>(i);
        f.key = keys[i];
        break;
      }
    }
    if (f.field == kUnknownKey) return true;  // an unknown key: its value is skipped
    const std::uint32_t bit = std::uint32_t{1} << f.field;
    if (f.seen & bit) record(path() + " is given twice");
    f.seen |= bit;
    return true;
  }

  // The value of key `k` of `map`, inserted empty (a repeat is a fault);
  // f.key is set to the key in the map, which outlives the frame.
  // Documents list their keys in order: the hint makes each insert O(1).
  template <typename Map>
  typename Map::mapped_type& insert_key(Map& map, std::string_view k, Frame& f) {
    const std::size_t before = map.size();
    auto it = map.emplace_hint(map.end(), std::piecewise_construct, std::forward_as_tuple(k),
                               std::forward_as_tuple());
    f.key = it->first;
    if (map.size() == before) record(path() + " is given twice");
    return it->second;
  }

  // Records "missing field 'path.key'" for the first of `keys` (bits of
  // `required`) that the object on top of the stack lacks; false if one does.
  bool has_fields(std::uint32_t required) {
    const Frame& f = stack_.back();
    const auto keys = keys_of(f.ctx);
    for (std::size_t k = 0; k < keys.size(); ++k) {
      if (((required >> k) & 1) && !((f.seen >> k) & 1)) {
        std::string p = path(stack_.size() - 1);
        record("missing field " + in_quotes(p.empty() ? std::string(keys[k])
                                                      : p + "." + std::string(keys[k])));
        return false;
      }
    }
    return true;
  }

  static constexpr std::uint32_t bits(std::initializer_list<std::uint8_t> keys) {
    std::uint32_t out = 0;
    for (auto k : keys) out |= std::uint32_t{1} << k;
    return out;
  }

  bool end_object() {
    const Frame& f = stack_.back();
    if (!fault) {
      switch (f.ctx) {
        case Ctx::root:
          has_fields(bits({kStateDict, kStorage, kFiles, kPlanner}));
          break;
        case Ctx::item:
          if (!has_fields(bits({kItemType}))) break;
          if (*bytes_) {
            *item_ = BytesStorageMetadata{};
          } else if (has_fields(bits({kItemDtype, kItemSize, kItemChunks}))) {
            *item_ = std::move(tensor_);
          }
          break;
        case Ctx::chunk:
          has_fields(bits({kChunkOffsets, kChunkSizes}));
          break;
        case Ctx::entry:
          if (has_fields(bits({kEntryFqn, kEntryFile, kEntryByteOffset, kEntryLength}))) {
            // In order (as written), each insert is at the end.
            auto& storage = md.storage_data;
            const std::size_t before = storage.size();
            // emplace_hint leaves `index_` as it was when the entry is a repeat.
            storage.emplace_hint(storage.end(), std::move(index_), std::move(info_));
            if (storage.size() == before) {
              record(path(stack_.size() - 1) + " repeats the storage entry of " +
                     detail::index_string(index_));
            }
          }
          break;
        case Ctx::file:
          has_fields(bits({kFilePath, kFileSize, kFileExtentSize, kFileChecksums}));
          break;
        case Ctx::meta:
          has_fields(bits({kMetaCheckpointId, kMetaSaveId, kMetaLoadId, kMetaModules}));
          break;
        default:
          break;
      }
    }
    stack_.pop_back();
    return true;
  }

  bool end_array() {
    if (!fault && stack_.back().ctx == Ctx::shape) {
      shape_->assign(dims_.begin(), dims_.end());  // one allocation
    }
    stack_.pop_back();
    return true;
  }

  // Keys and strings split by escapes arrive in parts.
  bool part(json::string_view s) {
    buf_.append(s.data(), s.size());
    return true;
  }
  std::string_view whole(json::string_view last) {
    if (buf_.empty()) return view(last);
    buf_.append(last.data(), last.size());
    part_.swap(buf_);
    buf_.clear();
    return part_;
  }

  std::vector<Frame> stack_;
  std::string buf_;   // parts of a key or string split by escapes
  std::string part_;  // the last such key or string, whole
  StorageMetadata* item_ = nullptr;      // the item being read, in md
  TensorStorageMetadata tensor_;         // its fields, if a tensor
  std::optional<bool> bytes_;            // its type: bytes or tensor
  Shape* shape_ = nullptr;               // the shape being read, into dims_
  Shape dims_;
  MetadataIndex index_;                  // the storage entry being read
  Fqn last_fqn_;                         // the name of the entry read before
  StorageInfo info_;
  std::string* planner_value_ = nullptr;
};

}  // namespace ringckpt::detail::metadata_handler
