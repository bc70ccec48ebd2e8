#include "ringckpt/filesystem_reader.hpp"

#include <algorithm>
#include <list>
#include <map>
#include <span>
#include <string_view>

#include "format/metadata_json.hpp"
#include "io/data_file.hpp"
#include "io/io_engine.hpp"
#include "load/extent_reader.hpp"
#include "load/shared_engine_reader.hpp"
#include "ringckpt/error.hpp"

namespace ringckpt {

using detail::IoEngine;

// ---------------------------------------------------------------- reader

namespace {

// What read_data needs of the metadata, in a few flat arrays with a hash
// index by name: built once per set_up_storage_reader in place of a copy of
// the Metadata (whose maps make hundreds of thousands of small allocations for
// a state dict of many small tensors), and looked up per read item in O(1).
class ReadIndex {
 public:
  static constexpr std::size_t kUnlisted = static_cast<std::size_t>(-1);

  struct Dims {  // a shape in dims_
    std::size_t begin = 0;
    std::size_t size = 0;
  };
  struct Chunk {
    Dims offsets, sizes;
  };
  // A storage entry; `task` is its file's position in files(), or kUnlisted
  // (then `path` names it in unlisted_).
  struct Entry {
    bool has_offset = false;
    Dims offset;
    std::size_t task = kUnlisted;
    std::size_t path = 0;
    std::uint64_t file_offset = 0;
    std::uint64_t length = 0;
  };
  // A name of state_dict_metadata or storage_data (or both); `tensor` if
  // state_dict_metadata holds a tensor of that name.
  struct Item {
    std::size_t name_begin = 0, name_size = 0;  // in names_
    bool tensor = false;
    DType dtype = DType::F32;
    std::size_t rank = 0;
    std::size_t chunk_begin = 0, chunk_count = 0;
    std::size_t entry_begin = 0, entry_count = 0;
  };

  void build(const Metadata& md);

  const std::vector<FileInfo>& files() const { return files_; }
  std::uint64_t header_bytes(std::size_t task) const { return header_bytes_[task]; }
  std::span<const std::int64_t> dims(Dims d) const { return {dims_.data() + d.begin, d.size}; }
  const std::string& unlisted_path(const Entry& e) const { return unlisted_[e.path]; }

  const Item* find(std::string_view name) const {
    if (slots_.empty()) return nullptr;
    const std::size_t mask = slots_.size() - 1;
    for (std::size_t i = std::hash<std::string_view>{}(name) & mask;; i = (i + 1) & mask) {
      const std::uint32_t slot = slots_[i];
      if (slot == 0) return nullptr;
      const Item& item = items_[slot - 1];
      if (name_of(item) == name) return &item;
    }
  }

  // The storage entry of `item` at `offset` (none: a whole item), as
  // Metadata::storage_data.find would find it.
  const Entry* entry(const Item& item, const std::optional<Shape>& offset) const {
    const Entry* first = entries_.data() + item.entry_begin;
    const Entry* last = first + item.entry_count;
    // Entries are in the map's order: no offset first, then by offset.
    auto less = [&](const Entry& e) {  // e < offset
      if (!offset) return false;
      if (!e.has_offset) return true;
      const auto a = dims(e.offset);
      return std::lexicographical_compare(a.begin(), a.end(), offset->begin(), offset->end());
    };
    if (item.entry_count > 8) {
      first = std::partition_point(first, last, less);
    } else {
      while (first != last && less(*first)) ++first;
    }
    if (first == last || first->has_offset != offset.has_value()) return nullptr;
    if (offset && !std::ranges::equal(dims(first->offset), *offset)) return nullptr;
    return first;
  }

  // The chunk of a tensor that starts at `offset` (none: the origin), the
  // hinted one first, as Metadata's chunk list would give it.
  const Chunk* chunk(const Item& item, const std::optional<Shape>& offset,
                     std::optional<std::size_t> hint) const {
    auto starts_at = [&](const Chunk& c) {
      const auto start = dims(c.offsets);
      if (offset) return std::ranges::equal(start, *offset);
      return start.size() == item.rank &&
             std::all_of(start.begin(), start.end(), [](std::int64_t d) { return d == 0; });
    };
    const Chunk* chunks = chunks_.data() + item.chunk_begin;
    if (hint && *hint < item.chunk_count && starts_at(chunks[*hint])) return &chunks[*hint];
    for (std::size_t c = 0; c < item.chunk_count; ++c) {
      if (starts_at(chunks[c])) return &chunks[c];
    }
    return nullptr;
  }

 private:
  std::string_view name_of(const Item& item) const {
    return std::string_view(names_).substr(item.name_begin, item.name_size);
  }

  Dims add_dims(std::span<const std::int64_t> shape) {
    Dims d{dims_.size(), shape.size()};
    dims_.insert(dims_.end(), shape.begin(), shape.end());
    return d;
  }

  std::vector<FileInfo> files_;
  std::vector<std::uint64_t> header_bytes_;  // [task]
  std::vector<std::string> unlisted_;
  std::string names_;
  std::vector<std::int64_t> dims_;
  std::vector<Chunk> chunks_;
  std::vector<Entry> entries_;
  std::vector<Item> items_;           // by name
  std::vector<std::uint32_t> slots_;  // open addressing: 1 + position in items_, 0 empty
};

void ReadIndex::build(const Metadata& md) {
  *this = ReadIndex();
  files_ = md.files;
  // A file listed twice is found as the first listing (its later listings
  // have their own tasks, which nothing reads).
  std::map<std::string_view, std::size_t> task_of;
  header_bytes_.reserve(files_.size());
  for (std::size_t t = 0; t < files_.size(); ++t) {
    task_of.emplace(files_[t].relative_path, t);
    header_bytes_.push_back(files_[t].size);
  }

  std::size_t name_bytes = 0, chunk_count = 0;
  for (const auto& [fqn, stored] : md.state_dict_metadata) {
    name_bytes += fqn.size();
    if (const auto* t = std::get_if<TensorStorageMetadata>(&stored)) chunk_count += t->chunks.size();
  }
  names_.reserve(name_bytes);
  items_.reserve(md.state_dict_metadata.size());
  chunks_.reserve(chunk_count);
  entries_.reserve(md.storage_data.size());
  dims_.reserve(2 * chunk_count + md.storage_data.size());

  // Both maps are ordered by name: walk them together, one item per name.
  auto stored = md.state_dict_metadata.begin();
  auto entry = md.storage_data.begin();
  while (stored != md.state_dict_metadata.end() || entry != md.storage_data.end()) {
    const std::string& name =
        entry == md.storage_data.end() ||
                (stored != md.state_dict_metadata.end() && stored->first <= entry->first.fqn)
            ? stored->first
            : entry->first.fqn;
    Item& item = items_.emplace_back();
    item.name_begin = names_.size();
    item.name_size = name.size();
    names_ += name;
    if (stored != md.state_dict_metadata.end() && stored->first == name) {
      if (const auto* t = std::get_if<TensorStorageMetadata>(&stored->second)) {
        item.tensor = true;
        item.dtype = t->properties.dtype;
        item.rank = t->size.size();
        item.chunk_begin = chunks_.size();
        item.chunk_count = t->chunks.size();
        for (const auto& c : t->chunks) chunks_.push_back({add_dims(c.offsets), add_dims(c.sizes)});
      }
      ++stored;
    }
    item.entry_begin = entries_.size();
    for (; entry != md.storage_data.end() && entry->first.fqn == name; ++entry) {
      const auto& [index, info] = *entry;
      Entry& e = entries_.emplace_back();
      e.has_offset = index.offset.has_value();
      if (index.offset) e.offset = add_dims(*index.offset);
      e.file_offset = info.offset;
      e.length = info.length;
      auto t = task_of.find(info.relative_path);
      if (t == task_of.end()) {
        e.path = unlisted_.size();
        unlisted_.push_back(info.relative_path);
      } else {
        e.task = t->second;  // the header ends where data begins
        header_bytes_[e.task] = std::min(header_bytes_[e.task], info.offset);
      }
    }
    item.entry_count = entries_.size() - item.entry_begin;
  }

  std::size_t slots = 16;
  while (slots < 2 * items_.size()) slots *= 2;
  slots_.assign(slots, 0);
  for (std::size_t k = 0; k < items_.size(); ++k) {
    std::size_t i = std::hash<std::string_view>{}(name_of(items_[k])) & (slots - 1);
    while (slots_[i] != 0) i = (i + 1) & (slots - 1);
    slots_[i] = static_cast<std::uint32_t>(k + 1);
  }
}

}  // namespace

struct FileSystemReader::Impl {
  std::filesystem::path dir;
  IoOptions io;
  std::shared_ptr<IoEngine> engine;
  bool shared_engine = false;
  // The metadata that read_data reads by: the last one read (read_metadata)
  // or given (set_up_storage_reader). One given is indexed at once; one read
  // is kept as its text and indexed only if read_data comes without a
  // set_up_storage_reader (which, by the protocol, passes it back).
  ReadIndex index;
  bool indexed = true;
  std::string metadata_text;
  std::string metadata_path;

  const ReadIndex& current_index() {
    if (!indexed) {
      index.build(decode_metadata(metadata_text, metadata_path));
      indexed = true;
      metadata_text = std::string();
    }
    return index;
  }

  // A reader of its own sizes its ring slots for the largest extent on disk.
  IoEngine& engine_for(const std::vector<FileInfo>& files) {
    if (!engine) {
      IoOptions o = io;
      for (const FileInfo& f : files) o.extent_size = std::max<std::size_t>(o.extent_size, f.extent_size);
      o.ring_bytes = std::max(o.ring_bytes, o.extent_size * 2);
      engine = std::make_shared<IoEngine>(o);
    }
    return *engine;
  }
};

FileSystemReader::FileSystemReader(std::filesystem::path dir, IoOptions io)
    : impl_(std::make_unique<Impl>()) {
  impl_->dir = std::move(dir);
  impl_->io = std::move(io);
}

FileSystemReader::FileSystemReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

std::unique_ptr<FileSystemReader> SharedEngineReader::open(std::filesystem::path dir,
                                                           std::shared_ptr<IoEngine> engine) {
  auto impl = std::make_unique<FileSystemReader::Impl>();
  impl->dir = std::move(dir);
  impl->io = engine->options();
  impl->engine = std::move(engine);
  impl->shared_engine = true;
  return std::unique_ptr<FileSystemReader>(new FileSystemReader(std::move(impl)));
}

FileSystemReader::~FileSystemReader() = default;

void FileSystemReader::reset(const std::filesystem::path& checkpoint_id) {
  impl_->dir = checkpoint_id;
}

Metadata FileSystemReader::read_metadata() {
  const std::filesystem::path path = impl_->dir / kMetadataFile;
  if (!std::filesystem::exists(path)) {
    throw Error(ErrorCode::kNotFound, path.string(),
                "not a checkpoint: metadata.json is missing (the save never committed?)");
  }
  std::string text = read_small_file(path);
  std::string where = path.string();
  Metadata md = decode_metadata(text, where);
  impl_->metadata_text = std::move(text);
  impl_->metadata_path = std::move(where);
  impl_->indexed = false;
  return md;
}

void FileSystemReader::set_up_storage_reader(const Metadata& metadata, bool) {
  impl_->index.build(metadata);
  impl_->indexed = true;
  impl_->metadata_text = std::string();
}

LoadPlan FileSystemReader::prepare_local_plan(LoadPlan plan) { return plan; }

std::vector<LoadPlan> FileSystemReader::prepare_global_plan(std::vector<LoadPlan> plans) {
  return plans;
}

namespace {

bool box_inside(const Shape& offsets, const Shape& lengths, std::span<const std::int64_t> sizes) {
  if (offsets.size() != sizes.size() || lengths.size() != sizes.size()) return false;
  for (std::size_t d = 0; d < sizes.size(); ++d) {
    if (offsets[d] < 0 || lengths[d] < 0 || offsets[d] + lengths[d] > sizes[d]) return false;
  }
  return true;
}

}  // namespace

void FileSystemReader::read_data(const LoadPlan& plan, LoadPlanner& planner) {
  const ReadIndex& md = impl_->current_index();
  IoEngine& engine = impl_->engine_for(md.files());

  std::vector<detail::FileReadTask> tasks;
  tasks.reserve(md.files().size());
  for (std::size_t t = 0; t < md.files().size(); ++t) {
    const FileInfo& f = md.files()[t];
    tasks.push_back({f, {}, md.header_bytes(t), false});
  }

  std::list<Bytes> blobs;  // BYTE_IO destinations, stable addresses
  std::vector<std::pair<const ReadItem*, Bytes*>> blob_items;
  std::vector<std::pair<const ReadItem*, TensorView>> tensor_items;
  tensor_items.reserve(plan.items.size());
  Shape chunk_sizes;
  for (const ReadItem& item : plan.items) {
    const ReadIndex::Item* stored = md.find(item.storage_index.fqn);
    const ReadIndex::Entry* where =
        stored ? md.entry(*stored, item.storage_index.offset) : nullptr;
    if (where == nullptr) {
      throw Error(ErrorCode::kCorrupt, item.storage_index.fqn,
                  "metadata.json records no storage for this item");
    }
    if (where->task == ReadIndex::kUnlisted) {
      throw Error(ErrorCode::kCorrupt, item.storage_index.fqn,
                  "stored in " + md.unlisted_path(*where) + ", a file metadata.json does not list");
    }
    auto& runs = tasks[where->task].runs;
    if (item.type == LoadItemType::BYTE_IO) {
      Bytes& blob = blobs.emplace_back(where->length);
      blob_items.emplace_back(&item, &blob);
      runs.push_back({where->file_offset, where->length, blob.data()});
      continue;
    }
    if (!stored->tensor) {
      throw Error(ErrorCode::kNotFound, item.storage_index.fqn, "no stored tensor of that name");
    }
    const ReadIndex::Chunk* chunk =
        md.chunk(*stored, item.storage_index.offset, item.storage_index.index);
    if (chunk == nullptr) {
      throw Error(ErrorCode::kNotFound, item.storage_index.fqn,
                  "no stored chunk at the requested offset");
    }
    TensorView dest = planner.resolve_tensor(item);
    if (dest.dtype != stored->dtype) {
      throw Error(ErrorCode::kMismatch, item.dest_index.fqn,
                  "stored as " + std::string(dtype_name(stored->dtype)) + ", destination is " +
                      std::string(dtype_name(dest.dtype)));
    }
    const auto sizes = md.dims(chunk->sizes);
    if (!box_inside(item.storage_offsets, item.lengths, sizes) ||
        !box_inside(item.dest_offsets, item.lengths, dest.shape)) {
      throw Error(ErrorCode::kInvalidArgument, item.dest_index.fqn,
                  "read item box lies outside its stored chunk or its destination");
    }
    const std::size_t element = dtype_size(dest.dtype);
    chunk_sizes.assign(sizes.begin(), sizes.end());
    if (where->length != static_cast<std::uint64_t>(numel(chunk_sizes)) * element) {
      throw Error(ErrorCode::kCorrupt, item.storage_index.fqn,
                  "stored byte length does not match the chunk's shape");
    }
    detail::append_box_runs(runs, where->file_offset, chunk_sizes, item.storage_offsets,
                            static_cast<std::byte*>(dest.data), dest.shape, item.dest_offsets,
                            item.lengths, element);
    tensor_items.emplace_back(&item, dest);
  }
  // Only files that hold something this plan reads are opened.
  std::vector<detail::FileReadTask> needed;
  for (auto& task : tasks) {
    if (!task.runs.empty()) needed.push_back(std::move(task));
  }
  detail::read_extents(engine, impl_->dir, needed, nullptr);
  for (auto& [item, blob] : blob_items) planner.load_bytes(*item, *blob);
  for (auto& [item, view] : tensor_items) planner.commit_tensor(*item, view);
}

IoReport FileSystemReader::report() const {
  return impl_->engine ? impl_->engine->report() : IoReport{};
}

}  // namespace ringckpt
