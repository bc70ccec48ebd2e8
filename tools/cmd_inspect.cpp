// cmd_inspect.cpp — `ringckpt inspect DIR [--json]`: what a checkpoint holds,
// read from its metadata.json alone (no data file is opened).

#include <algorithm>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <variant>
#include <vector>

#include <boost/json.hpp>

#include "format/message_text.hpp"
#include "format/tensor_geometry.hpp"

#include "commands.hpp"
#include "ringckpt/checkpoint.hpp"
#include "ringckpt/metadata.hpp"
#include "synthetic.hpp"
#include "terminal.hpp"

namespace po = boost::program_options;

namespace ringckpt::tools {
namespace {

constexpr const char* kCommand = "inspect";

// One stored item: a whole tensor or blob, or one chunk of a sharded tensor.
struct StoredChunk {
  StorageInfo where;
  std::optional<ChunkStorageMetadata> box;  // tensors only
};

// One state-dict entry, with every chunk of it. Invariant: `chunks` is
// sorted by (file, offset), so chunks.front() is where the entry begins.
struct Entry {
  std::string name;
  bool is_tensor = false;
  DType dtype = DType::F32;  // tensors only
  Shape shape;               // tensors only: the global shape
  std::uint64_t bytes = 0;   // sum of chunk lengths
  std::vector<StoredChunk> chunks;

  std::vector<std::string> files() const {
    std::vector<std::string> out;
    for (const auto& c : chunks) {
      if (std::find(out.begin(), out.end(), c.where.relative_path) == out.end()) {
        out.push_back(c.where.relative_path);
      }
    }
    return out;
  }
};

struct Totals {
  std::uint64_t entries = 0, tensors = 0, blobs = 0, chunks = 0;
  std::uint64_t bytes = 0;       // bytes of tensors and blobs
  std::uint64_t files = 0;
  std::uint64_t file_bytes = 0;  // bytes of the data files (headers and padding included)
  std::vector<std::uint64_t> extent_sizes;  // distinct, ascending
};

std::vector<Entry> collect_entries(const Metadata& metadata) {
  std::map<std::string, Entry> by_name;
  for (const auto& [name, storage] : metadata.state_dict_metadata) {
    Entry& entry = by_name[name];
    entry.name = name;
    if (const auto* tensor = std::get_if<TensorStorageMetadata>(&storage)) {
      entry.is_tensor = true;
      entry.dtype = tensor->properties.dtype;
      entry.shape = tensor->size;
    }
  }
  for (const auto& [index, info] : metadata.storage_data) {
    Entry& entry = by_name[index.fqn];
    entry.name = index.fqn;
    StoredChunk chunk{info, std::nullopt};
    const auto storage = metadata.state_dict_metadata.find(index.fqn);
    const auto* tensor = storage == metadata.state_dict_metadata.end()
                             ? nullptr
                             : std::get_if<TensorStorageMetadata>(&storage->second);
    if (tensor != nullptr) {
      // A whole item (no offset) is the chunk at the origin.
      const Shape origin(tensor->size.size(), 0);
      if (const auto* box = detail::find_chunk(*tensor, index.offset.value_or(origin), index.index)) {
        chunk.box = *box;
      }
    }
    entry.bytes += info.length;
    entry.chunks.push_back(std::move(chunk));
  }

  std::vector<Entry> entries;
  entries.reserve(by_name.size());
  for (auto& [name, entry] : by_name) {
    std::sort(entry.chunks.begin(), entry.chunks.end(), [](const auto& a, const auto& b) {
      return std::tie(a.where.relative_path, a.where.offset) <
             std::tie(b.where.relative_path, b.where.offset);
    });
    entries.push_back(std::move(entry));
  }
  // Disk order: by the file and offset where each entry begins; entries with
  // no stored bytes (nothing to place) come last, by name.
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    if (a.chunks.empty() || b.chunks.empty()) return !a.chunks.empty() && b.chunks.empty();
    return std::tie(a.chunks.front().where.relative_path, a.chunks.front().where.offset) <
           std::tie(b.chunks.front().where.relative_path, b.chunks.front().where.offset);
  });
  return entries;
}

Totals compute_totals(const Metadata& metadata, const std::vector<Entry>& entries) {
  Totals totals;
  for (const auto& entry : entries) {
    totals.entries += 1;
    (entry.is_tensor ? totals.tensors : totals.blobs) += 1;
    totals.chunks += entry.chunks.size();
    totals.bytes += entry.bytes;
  }
  std::set<std::uint64_t> extent_sizes;
  for (const auto& file : metadata.files) extent_sizes.insert(file.extent_size);
  totals.extent_sizes.assign(extent_sizes.begin(), extent_sizes.end());
  totals.files = metadata.files.size();
  totals.file_bytes = metadata.total_bytes();
  return totals;
}


std::string join(const std::vector<std::string>& parts, const char* separator) {
  std::string out;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (i > 0) out += separator;
    out += parts[i];
  }
  return out;
}

std::string plural(std::uint64_t count, const char* one, const char* many) {
  return std::to_string(count) + ' ' + (count == 1 ? one : many);
}

void print_table(const std::filesystem::path& dir, const Metadata& metadata,
                 const std::vector<Entry>& entries, const Totals& totals) {
  std::vector<std::vector<std::string>> rows;
  rows.reserve(entries.size());
  for (const auto& entry : entries) {
    std::string kind = entry.is_tensor ? "tensor" : "bytes";
    if (entry.chunks.size() > 1) kind += " (" + std::to_string(entry.chunks.size()) + " chunks)";
    rows.push_back({entry.name, kind,
                    entry.is_tensor ? std::string(dtype_name(entry.dtype)) : "-",
                    entry.is_tensor ? detail::shape_string(entry.shape, ", ") : "-",
                    format_bytes(entry.bytes),
                    entry.chunks.empty() ? "-" : join(entry.files(), ", "),
                    entry.chunks.empty() ? "-"
                                         : std::to_string(entry.chunks.front().where.offset)});
  }
  std::cout << "checkpoint " << dir.string() << " (metadata version " << metadata.version
            << ")\n\n"
            << format_table({"name", "kind", "dtype", "shape", "bytes", "file", "offset"}, rows)
            << '\n';

  std::vector<std::string> extent_text;
  for (auto size : totals.extent_sizes) extent_text.push_back(format_bytes(size));
  std::vector<std::string> file_names;
  for (const auto& file : metadata.files) file_names.push_back(file.relative_path);
  std::cout << "entries  " << totals.entries << " (" << plural(totals.tensors, "tensor", "tensors")
            << ", " << plural(totals.blobs, "blob", "blobs") << ")\n"
            << "bytes    " << format_bytes(totals.bytes) << " (" << totals.bytes
            << ") of tensors and blobs; " << format_bytes(totals.file_bytes)
            << " in data files\n"
            << "files    " << totals.files;
  if (!file_names.empty()) std::cout << " (" << join(file_names, ", ") << ")";
  std::cout << "\nextents  " << (extent_text.empty() ? "-" : join(extent_text, ", ")) << '\n';
}

boost::json::array shape_json(const Shape& shape) {
  boost::json::array out;
  for (auto d : shape) out.push_back(d);
  return out;
}

void print_json(const std::filesystem::path& dir, const Metadata& metadata,
                const std::vector<Entry>& entries, const Totals& totals) {
  boost::json::array entries_json;
  for (const auto& entry : entries) {
    boost::json::object e;
    e["name"] = entry.name;
    e["kind"] = entry.is_tensor ? "tensor" : "bytes";
    if (entry.is_tensor) {
      e["dtype"] = std::string(dtype_name(entry.dtype));
      e["shape"] = shape_json(entry.shape);
    } else {
      e["dtype"] = nullptr;
      e["shape"] = nullptr;
    }
    e["bytes"] = entry.bytes;
    boost::json::array files;
    for (const auto& f : entry.files()) files.push_back(boost::json::string(f));
    e["files"] = std::move(files);
    boost::json::array chunks;
    for (const auto& c : entry.chunks) {
      boost::json::object chunk;
      chunk["file"] = c.where.relative_path;
      chunk["offset"] = c.where.offset;
      chunk["length"] = c.where.length;
      if (c.box) {
        chunk["offsets"] = shape_json(c.box->offsets);
        chunk["sizes"] = shape_json(c.box->sizes);
      }
      chunks.push_back(std::move(chunk));
    }
    e["chunks"] = std::move(chunks);
    entries_json.push_back(std::move(e));
  }

  boost::json::array files_json;
  for (const auto& file : metadata.files) {
    files_json.push_back(boost::json::object{{"path", file.relative_path},
                                             {"size", file.size},
                                             {"extent_size", file.extent_size},
                                             {"extents", file.extent_checksums.size()}});
  }
  boost::json::object totals_json{
      {"entries", totals.entries},       {"tensors", totals.tensors},
      {"blobs", totals.blobs},           {"chunks", totals.chunks},
      {"bytes", totals.bytes},           {"files", totals.files},
      {"file_bytes", totals.file_bytes},
      {"extent_size", totals.extent_sizes.empty() ? 0 : totals.extent_sizes.back()},
  };
  boost::json::object document{{"directory", dir.string()},
                               {"version", metadata.version},
                               {"entries", std::move(entries_json)},
                               {"files", std::move(files_json)},
                               {"totals", std::move(totals_json)}};
  std::cout << boost::json::serialize(document) << '\n';
}

}  // namespace

int run_inspect(const std::vector<std::string>& args) {
  po::options_description options;
  options.add_options()("json", "print one JSON document (entries, files, totals) for scripts");
  po::options_description hidden;
  hidden.add_options()("dir", po::value<std::string>(), "checkpoint directory");
  po::positional_options_description positional;
  positional.add("dir", 1);
  po::variables_map values;
  if (auto status = parse_command_line(
          kCommand, "DIR [--json]",
          "Lists what the checkpoint in DIR holds, read from its metadata.json: each entry's\n"
          "name, kind (tensor or bytes), dtype, shape, size, file and offset, in the order\n"
          "they lie on disk, then totals (entries, bytes, files, extent size).",
          options, hidden, positional, args, values)) {
    return *status;
  }
  if (!values.count("dir")) return bad_argument(kCommand, "missing DIR, the checkpoint directory");

  const std::filesystem::path dir = values["dir"].as<std::string>();
  const Metadata metadata = read_metadata(dir);  // throws Error naming metadata.json
  const std::vector<Entry> entries = collect_entries(metadata);
  const Totals totals = compute_totals(metadata, entries);
  if (values.count("json")) {
    print_json(dir, metadata, entries, totals);
  } else {
    print_table(dir, metadata, entries, totals);
  }
  return 0;
}

}  // namespace ringckpt::tools
