// safetensors.cpp — the header of a data file: written with Boost.JSON,
// read back with every field checked, since a data file may be damaged or
// hostile.
#include "format/safetensors.hpp"

#include "format/json_append.hpp"
#include "format/message_text.hpp"
#include "format/tensor_geometry.hpp"

#include <algorithm>
#include <boost/json.hpp>
#include <optional>
#include <string_view>
#include <tuple>
#include <utility>

#include "ringckpt/error.hpp"
#include "ringckpt/io_options.hpp"

namespace ringckpt {
namespace {

using detail::in_quotes;
using detail::shape_string;


namespace json = boost::json;

constexpr std::string_view kMetadataKey = "__metadata__";
constexpr std::size_t kPrefixBytes = 8;

// The largest tensor byte count believed (kMaxTensorBytes).
constexpr std::uint64_t kMaxBytes = detail::kMaxTensorBytes;

[[noreturn]] void corrupt(const std::string& file, std::string message) {
  throw Error(ErrorCode::kCorrupt, file, "safetensors header: " + std::move(message));
}



std::optional<std::uint64_t> as_u64(const json::value& v) {
  if (v.is_uint64()) return v.get_uint64();
  if (v.is_int64() && v.get_int64() >= 0) return static_cast<std::uint64_t>(v.get_int64());
  return std::nullopt;
}

json::value parse_json(std::string_view text, const std::string& file) {
  json::parse_options options;
  options.allow_invalid_utf8 = true;  // names are bytes to us; keep what was written
  json::parser parser(json::storage_ptr(), options);
  json::error_code ec;
  const std::size_t consumed = parser.write(text.data(), text.size(), ec);
  if (ec) {
    corrupt(file, "not valid JSON (" + ec.message() + " near byte " +
                      std::to_string(kPrefixBytes + consumed) + ")");
  }
  return parser.release();
}

std::map<std::string, std::string> decode_metadata_map(const json::value& v,
                                                       const std::string& file) {
  const json::object* obj = v.if_object();
  if (obj == nullptr) corrupt(file, "__metadata__ is not a JSON object");
  std::map<std::string, std::string> out;
  for (const auto& kv : *obj) {
    const json::string* s = kv.value().if_string();
    if (s == nullptr)
      corrupt(file, "__metadata__ value of " + in_quotes(kv.key()) + " is not a string");
    out.emplace(std::string(kv.key()), std::string(*s));
  }
  return out;
}

const json::value& required(const json::object& obj, std::string_view key, std::string_view name,
                            const std::string& file) {
  const json::value* v = obj.if_contains(key);
  if (v == nullptr)
    corrupt(file, "tensor " + in_quotes(name) + " has no \"" + std::string(key) + "\"");
  return *v;
}

// One tensor entry, with the checks that need only the entry itself and the
// size of the data section.
SafetensorsEntry decode_entry(std::string_view name, const json::value& v, std::uint64_t data_size,
                              const std::string& file) {
  const json::object* obj = v.if_object();
  if (obj == nullptr) corrupt(file, "tensor " + in_quotes(name) + " is not a JSON object");

  SafetensorsEntry entry;
  entry.name = std::string(name);

  const json::string* dtype = required(*obj, "dtype", name, file).if_string();
  if (dtype == nullptr) corrupt(file, "tensor " + in_quotes(name) + " dtype is not a string");
  auto parsed = dtype_from_name(*dtype);
  if (!parsed)
    corrupt(file, "tensor " + in_quotes(name) + " has unknown dtype " + in_quotes(*dtype));
  entry.dtype = *parsed;

  const json::array* shape = required(*obj, "shape", name, file).if_array();
  if (shape == nullptr) corrupt(file, "tensor " + in_quotes(name) + " shape is not an array");
  for (const json::value& d : *shape) {
    auto dim = as_u64(d);
    if (!dim || *dim > kMaxBytes) {
      corrupt(file, "tensor " + in_quotes(name) + " shape " + json::serialize(*shape) +
                        " is not a list of non-negative integers");
    }
    entry.shape.push_back(static_cast<std::int64_t>(*dim));
  }

  const json::array* offsets = required(*obj, "data_offsets", name, file).if_array();
  std::optional<std::uint64_t> begin, end;
  if (offsets != nullptr && offsets->size() == 2) {
    begin = as_u64((*offsets)[0]);
    end = as_u64((*offsets)[1]);
  }
  if (!begin || !end) {
    corrupt(file, "tensor " + in_quotes(name) + " data_offsets " +
                      json::serialize(required(*obj, "data_offsets", name, file)) +
                      " are not two non-negative integers [begin, end]");
  }
  entry.begin = *begin;
  entry.end = *end;
  const std::string range = detail::byte_range(entry.begin, entry.end);
  if (entry.begin > entry.end) {
    corrupt(file,
            "tensor " + in_quotes(name) + " data_offsets " + range + " end before they begin");
  }
  if (entry.end > data_size) {
    corrupt(file, "tensor " + in_quotes(name) + " data_offsets " + range +
                      " lie beyond the end of the file (" + std::to_string(data_size) +
                      " data bytes follow the header)");
  }

  auto needed = detail::shape_bytes(entry.shape, dtype_size(entry.dtype));
  if (!needed) {
    corrupt(file, "tensor " + in_quotes(name) + " shape " + shape_string(entry.shape) +
                      " is absurdly large");
  }
  if (entry.end - entry.begin != *needed) {
    corrupt(file, "tensor " + in_quotes(name) + " data_offsets " + range + " hold " +
                      std::to_string(entry.end - entry.begin) + " bytes but shape " +
                      shape_string(entry.shape) + " of " + std::string(dtype_name(entry.dtype)) +
                      " needs " + std::to_string(*needed));
  }
  return entry;
}

// Invariant on return: sorted by (begin, end), entries tile [0, data_size)
// back to back with no overlap, hole or trailing byte.
void check_tiling(std::vector<SafetensorsEntry>& entries, std::uint64_t data_size,
                  const std::string& file) {
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  std::uint64_t expected = 0;
  const SafetensorsEntry* previous = nullptr;
  for (const SafetensorsEntry& e : entries) {
    if (e.begin < expected) {
      corrupt(file, "tensors " + in_quotes(previous->name) + " " +
                        detail::byte_range(previous->begin, previous->end) + " and " + in_quotes(e.name) +
                        " " + detail::byte_range(e.begin, e.end) + " overlap");
    }
    if (e.begin > expected) {
      const std::string after = previous ? "after tensor " + in_quotes(previous->name)
                                         : std::string("at the start of the data");
      corrupt(file, "a hole of " + std::to_string(e.begin - expected) + " bytes lies " + after +
                        ", before tensor " + in_quotes(e.name) + " " +
                        detail::byte_range(e.begin, e.end));
    }
    expected = e.end;
    previous = &e;
  }
  if (expected != data_size) {
    corrupt(file, "a hole of " + std::to_string(data_size - expected) +
                      " bytes at the end of the data belongs to no tensor (tensors end at " +
                      std::to_string(expected) + ", the data at " + std::to_string(data_size) +
                      ")");
  }
}

}  // namespace

namespace {

// The position of the first entry whose name is reserved or repeats an
// earlier one, if any.
std::optional<std::size_t> first_bad_name(std::span<const SafetensorsEntryRef> entries) {
  std::optional<std::size_t> first;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    if (entries[i].name == kMetadataKey) {
      first = i;
      break;
    }
  }
  // Names ordered by hash: equal names sit in the same run of equal hashes.
  std::vector<std::pair<std::size_t, std::size_t>> order(entries.size());  // (hash, position)
  for (std::size_t i = 0; i < order.size(); ++i) {
    order[i] = {std::hash<std::string_view>{}(entries[i].name), i};
  }
  std::sort(order.begin(), order.end());
  for (std::size_t begin = 0; begin < order.size();) {
    std::size_t end = begin + 1;
    while (end < order.size() && order[end].first == order[begin].first) ++end;
    // Within a run, by position: the first that repeats an earlier name.
    for (std::size_t k = begin + 1; k < end; ++k) {
      for (std::size_t j = begin; j < k; ++j) {
        if (entries[order[j].second].name == entries[order[k].second].name) {
          if (!first || order[k].second < *first) first = order[k].second;
          break;
        }
      }
    }
    begin = end;
  }
  return first;
}

}  // namespace

std::string encode_safetensors_header(const std::vector<SafetensorsEntry>& entries,
                                      const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsEntryRef> refs;
  refs.reserve(entries.size());
  for (const SafetensorsEntry& e : entries) refs.push_back({e.name, e.dtype, e.shape, e.begin, e.end});
  return encode_safetensors_header_refs(refs, metadata);
}

std::string encode_safetensors_header_refs(std::span<const SafetensorsEntryRef> entries,
                                           const std::map<std::string, std::string>& metadata) {
  if (auto bad = first_bad_name(entries)) {
    throw Error(ErrorCode::kInvalidArgument, "safetensors header",
                "tensor name " + in_quotes(entries[*bad].name) + " is reserved or given twice");
  }
  std::size_t guess = kPrefixBytes + 64;
  for (const auto& [key, value] : metadata) guess += key.size() + value.size() + 8;
  for (const SafetensorsEntryRef& e : entries) guess += e.name.size() + 72 + 21 * e.shape.size();
  std::string out;
  out.reserve(guess + kAlignment);
  out.assign(kPrefixBytes, '\0');

  // {"__metadata__":{key:value,...},name:{"dtype":..,"shape":[..],"data_offsets":[b,e]},...},
  // built as a DOM in one arena and serialized after the length prefix.
  json::monotonic_resource mr(4 * guess + 4096);
  const json::storage_ptr sp(&mr);
  json::object root(sp);
  root.reserve(entries.size() + (metadata.empty() ? 0 : 1));
  if (!metadata.empty()) {
    json::object meta(sp);
    meta.reserve(metadata.size());
    for (const auto& [key, value] : metadata) meta.emplace(key, value);
    root.emplace(kMetadataKey, std::move(meta));
  }
  for (const SafetensorsEntryRef& e : entries) {
    json::object tensor(sp);
    tensor.reserve(3);
    tensor.emplace("dtype", dtype_name(e.dtype));
    json::array shape(sp);
    shape.reserve(e.shape.size());
    for (std::int64_t d : e.shape) shape.emplace_back(d);
    tensor.emplace("shape", std::move(shape));
    json::array offsets(sp);
    offsets.reserve(2);
    offsets.emplace_back(e.begin);
    offsets.emplace_back(e.end);
    tensor.emplace("data_offsets", std::move(offsets));
    root.emplace(e.name, std::move(tensor));
  }
  detail::serialize_append(out, root);

  // Pad with spaces (JSON whitespace) so that the data starts aligned.
  const std::size_t padded = (out.size() + kAlignment - 1) / kAlignment * kAlignment;
  const std::uint64_t n = padded - kPrefixBytes;
  out.resize(padded, ' ');
  for (std::size_t i = 0; i < kPrefixBytes; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out;
}

std::uint64_t decode_safetensors_header_length(std::span<const std::byte> first8,
                                               std::uint64_t file_size, const std::string& file) {
  if (first8.size() < kPrefixBytes || file_size < kPrefixBytes) {
    corrupt(file, "the file is shorter than the 8-byte length prefix");
  }
  std::uint64_t n = 0;
  for (std::size_t i = 0; i < kPrefixBytes; ++i) {
    n |= static_cast<std::uint64_t>(first8[i]) << (8 * i);
  }
  if (n > kMaxSafetensorsHeader) {
    corrupt(file, "bad length prefix: " + std::to_string(n) + " bytes exceeds the limit of " +
                      std::to_string(kMaxSafetensorsHeader));
  }
  if (n > file_size - kPrefixBytes) {
    corrupt(file, "bad length prefix: " + std::to_string(n) +
                      " bytes of header run past the end of the file (size " +
                      std::to_string(file_size) + ")");
  }
  return n;
}

SafetensorsHeader decode_safetensors_header(std::span<const std::byte> header,
                                            std::uint64_t file_size, const std::string& file) {
  const std::uint64_t n = decode_safetensors_header_length(
      header.first(std::min(header.size(), kPrefixBytes)), file_size, file);
  if (header.size() - kPrefixBytes < n) {
    corrupt(file, "truncated: the length prefix claims " + std::to_string(n) +
                      " bytes of JSON but only " + std::to_string(header.size() - kPrefixBytes) +
                      " were given");
  }
  const std::string_view text(reinterpret_cast<const char*>(header.data()) + kPrefixBytes, n);
  const json::value root = parse_json(text, file);
  const json::object* obj = root.if_object();
  if (obj == nullptr) corrupt(file, "the JSON is not an object");

  SafetensorsHeader out;
  out.data_start = kPrefixBytes + n;
  const std::uint64_t data_size = file_size - out.data_start;
  for (const auto& kv : *obj) {
    if (kv.key() == kMetadataKey) {
      out.metadata = decode_metadata_map(kv.value(), file);
    } else {
      out.entries.push_back(decode_entry(kv.key(), kv.value(), data_size, file));
    }
  }
  check_tiling(out.entries, data_size, file);
  return out;
}

}  // namespace ringckpt
