// metadata_encoder.cpp — metadata.json written with Boost.JSON: the document
// built in an arena, serialized once to hash it and once with its checksum.
#include "format/metadata_document.hpp"
#include "format/metadata_json.hpp"

#include <algorithm>
#include <utility>

#include "format/extent_checksum.hpp"
#include "format/json_append.hpp"
#include "format/storage_merge.hpp"

namespace ringckpt {
namespace {

namespace json = boost::json;
using detail::JsonStorage;
using detail::to_json;

constexpr std::string_view kChecksumKey = "checksum";

// metadata_document, the storage entries and files given by callbacks:
// for_each_storage(f) calls f(index, info) for each storage entry in order;
// for_each_file(f) calls f(file) for each file. n_storage and n_files are the
// counts of each, to reserve.
template <typename ForEachStorage, typename ForEachFile>
json::object metadata_document(const Metadata& metadata, const JsonStorage& sp,
                               std::size_t n_storage, ForEachStorage&& for_each_storage,
                               std::size_t n_files, ForEachFile&& for_each_file) {
  json::object doc(sp);
  doc.reserve(8);  // the six keys, storage_meta, and room for the checksum
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
    detail::put_index(entry, index);
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

  if (const auto& m = metadata.storage_meta) {  // optional: written only when set
    json::object meta(sp);
    meta.reserve(4);
    meta.emplace("checkpoint_id", m->checkpoint_id);
    meta.emplace("save_id", m->save_id);
    meta.emplace("load_id", m->load_id);
    json::array modules(sp);
    modules.reserve(m->modules.size());
    for (const std::string& module : m->modules) modules.emplace_back(module);
    meta.emplace("modules", std::move(modules));
    doc.emplace("storage_meta", std::move(meta));
  }
  return doc;
}

// The text of metadata.json: the document with its checksum added as its last
// key, the checksum being that of the document as serialized without it.
std::string with_checksum(json::object& doc, std::size_t size_hint) {
  std::string text;
  text.reserve(size_hint + 64);
  detail::serialize_append(text, doc);
  const std::uint64_t checksum = checksum_of(std::as_bytes(std::span(text)));
  doc.emplace(kChecksumKey, checksum_hex(checksum));
  text.clear();  // keeps its capacity for the text with the checksum
  detail::serialize_append(text, doc);
  text += '\n';
  return text;
}

}  // namespace

namespace detail {

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
  if (const auto& m = metadata.storage_meta) {
    n += 80 + m->checkpoint_id.size() + m->save_id.size() + m->load_id.size();
    for (const std::string& module : m->modules) n += module.size() + 4;
  }
  return n;
}

json::object metadata_document(const Metadata& metadata, const JsonStorage& sp) {
  return ringckpt::metadata_document(
      metadata, sp, metadata.storage_data.size(),
      [&](auto&& f) {
        for (const auto& [index, info] : metadata.storage_data) f(index, info);
      },
      metadata.files.size(),
      [&](auto&& f) {
        for (const FileInfo& file : metadata.files) f(file);
      });
}

}  // namespace detail

std::string encode_metadata(const Metadata& metadata) {
  const std::size_t hint = detail::metadata_size_hint(metadata);
  json::monotonic_resource mr(detail::metadata_arena_bytes(hint));
  const JsonStorage sp(&mr);
  json::object doc = detail::metadata_document(metadata, sp);
  return with_checksum(doc, hint);
}

std::string encode_metadata(const Metadata& metadata, const std::vector<WriteResults>& results) {
  // The storage entries as add_results would record them (for_each_merged_entry),
  // written without copying `metadata`.
  std::size_t n_added = 0, extra_bytes = 0;
  std::size_t n_files = metadata.files.size();
  for (const WriteResults& r : results) {
    n_added += r.items.size();
    for (const WriteResult& item : r.items) {
      extra_bytes += item.index.fqn.size() + item.storage_data.relative_path.size() + 96 +
                     (item.index.offset ? 8 * item.index.offset->size() + 12 : 0);
    }
    for (const FileInfo& f : r.files) extra_bytes += 64 + 19 * f.extent_checksums.size();
    n_files += r.files.size();
  }
  const std::size_t hint = detail::metadata_size_hint(metadata) + extra_bytes;
  json::monotonic_resource mr(detail::metadata_arena_bytes(hint));
  const JsonStorage sp(&mr);
  json::object doc = metadata_document(
      metadata, sp, metadata.storage_data.size() + n_added,  // at most this many entries
      [&](auto&& f) { detail::for_each_merged_entry(metadata, results, f); },
      n_files,
      [&](auto&& f) {
        for (const FileInfo& file : metadata.files) f(file);
        for (const WriteResults& r : results) {
          for (const FileInfo& file : r.files) f(file);
        }
      });
  return with_checksum(doc, hint);
}

}  // namespace ringckpt
