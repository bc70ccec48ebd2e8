#include "ringckpt/filesystem.hpp"

#include <algorithm>
#include <future>
#include <list>
#include <map>
#include <regex>

#include "data_file.hpp"
#include "extent_reader.hpp"
#include "io_engine.hpp"
#include "layout.hpp"
#include "metadata_json.hpp"
#include "ringckpt/error.hpp"
#include "save_job.hpp"

namespace ringckpt {

using detail::IoEngine;

namespace {

bool is_data_file_name(const std::string& name) {
  static const std::regex pattern(R"(__\d+_\d+\.safetensors)");
  return std::regex_match(name, pattern);
}

// Removes what an older checkpoint left in dir: its metadata first (from then
// on it no longer exists), then its data files.
void remove_old_checkpoint(const std::filesystem::path& dir) {
  std::filesystem::remove(dir / kMetadataFile);
  sync_directory(dir);
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (is_data_file_name(name) || name == std::string(kMetadataFile) + ".tmp") {
      std::filesystem::remove(entry.path());
    }
  }
}

}  // namespace

// ---------------------------------------------------------------- writer

struct FileSystemWriter::Impl {
  std::filesystem::path dir;
  IoOptions io;
  std::shared_ptr<IoEngine> engine;  // made on first write when not shared
  bool overwrite = false;
  int rank = 0;
  std::vector<std::string> written;  // data files of the last write_data

  IoEngine& engine_for_write() {
    if (!engine) engine = std::make_shared<IoEngine>(io);
    return *engine;
  }
};

FileSystemWriter::FileSystemWriter(std::filesystem::path dir, IoOptions io, bool overwrite)
    : impl_(std::make_unique<Impl>()) {
  impl_->dir = std::move(dir);
  impl_->io = std::move(io);
  impl_->overwrite = overwrite;
}

FileSystemWriter::FileSystemWriter(std::filesystem::path dir, std::shared_ptr<IoEngine> engine,
                                   bool overwrite)
    : impl_(std::make_unique<Impl>()) {
  impl_->dir = std::move(dir);
  impl_->io = engine->options();
  impl_->engine = std::move(engine);
  impl_->overwrite = overwrite;
}

FileSystemWriter::~FileSystemWriter() = default;

void FileSystemWriter::reset(const std::filesystem::path& checkpoint_id) {
  impl_->dir = checkpoint_id;
  impl_->written.clear();
}

void FileSystemWriter::set_up_storage_writer(bool is_coordinator, int rank) {
  impl_->rank = rank;
  const std::filesystem::path& dir = impl_->dir;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec || !std::filesystem::is_directory(dir)) {
    throw Error(ErrorCode::kIo, dir.string(),
                "cannot create the checkpoint directory: " +
                    (ec ? ec.message() : std::string("not a directory")));
  }
  if (!is_coordinator) return;
  if (std::filesystem::exists(dir / kMetadataFile)) {
    if (!impl_->overwrite) {
      throw Error(ErrorCode::kAlreadyExists, (dir / kMetadataFile).string(),
                  "a checkpoint is already saved here; ask for overwrite to replace it");
    }
    remove_old_checkpoint(dir);
  }
}

SavePlan FileSystemWriter::prepare_local_plan(SavePlan plan) { return plan; }

std::vector<SavePlan> FileSystemWriter::prepare_global_plan(std::vector<SavePlan> plans) {
  for (std::size_t r = 0; r < plans.size(); ++r) {
    plans[r].storage_data = "__" + std::to_string(r) + "_";
  }
  return plans;
}

WriteResults FileSystemWriter::write_data(const SavePlan& plan, SavePlanner& planner) {
  const std::string prefix =
      plan.storage_data.empty() ? "__" + std::to_string(impl_->rank) + "_" : plan.storage_data;
  IoEngine& engine = impl_->engine_for_write();
  SaveLayout layout = plan_layout(plan, prefix, engine.options().max_file_bytes);
  impl_->written.clear();
  for (const auto& f : layout.files) impl_->written.push_back(f.relative_path);

  std::promise<WriteResults> done;
  auto job = detail::SaveJob::start(
      engine, impl_->dir, plan, planner, std::move(layout),
      {.staged = {},
       .written = [&done](std::exception_ptr error, WriteResults results) {
         if (error) {
           done.set_exception(error);
         } else {
           done.set_value(std::move(results));
         }
       }});
  return done.get_future().get();
}

void FileSystemWriter::finish(const Metadata& metadata, const std::vector<WriteResults>& results) {
  Metadata md = metadata;
  for (const WriteResults& r : results) {
    for (const WriteResult& item : r.items) md.storage_data[item.index] = item.storage_data;
    md.files.insert(md.files.end(), r.files.begin(), r.files.end());
  }
  write_file_atomically(impl_->dir, kMetadataFile, encode_metadata(md));
}

void FileSystemWriter::abort() noexcept {
  for (const std::string& name : impl_->written) {
    std::error_code ignored;
    std::filesystem::remove(impl_->dir / name, ignored);
  }
  impl_->written.clear();
}

IoReport FileSystemWriter::report() const {
  return impl_->engine ? impl_->engine->report() : IoReport{};
}

// ---------------------------------------------------------------- reader

struct FileSystemReader::Impl {
  std::filesystem::path dir;
  IoOptions io;
  std::shared_ptr<IoEngine> engine;
  bool shared_engine = false;
  Metadata metadata;

  // A reader of its own sizes its ring slots for the largest extent on disk.
  IoEngine& engine_for(const Metadata& md) {
    if (!engine) {
      IoOptions o = io;
      for (const FileInfo& f : md.files) o.extent_size = std::max<std::size_t>(o.extent_size, f.extent_size);
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

FileSystemReader::FileSystemReader(std::filesystem::path dir, std::shared_ptr<IoEngine> engine)
    : impl_(std::make_unique<Impl>()) {
  impl_->dir = std::move(dir);
  impl_->io = engine->options();
  impl_->engine = std::move(engine);
  impl_->shared_engine = true;
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
  impl_->metadata = decode_metadata(read_small_file(path), path.string());
  return impl_->metadata;
}

void FileSystemReader::set_up_storage_reader(const Metadata& metadata, bool) {
  impl_->metadata = metadata;
}

LoadPlan FileSystemReader::prepare_local_plan(LoadPlan plan) { return plan; }

std::vector<LoadPlan> FileSystemReader::prepare_global_plan(std::vector<LoadPlan> plans) {
  return plans;
}

namespace {

const ChunkStorageMetadata& stored_chunk(const Metadata& md, const MetadataIndex& index,
                                         const TensorStorageMetadata** tensor) {
  auto it = md.state_dict_metadata.find(index.fqn);
  if (it == md.state_dict_metadata.end() ||
      !std::holds_alternative<TensorStorageMetadata>(it->second)) {
    throw Error(ErrorCode::kNotFound, index.fqn, "no stored tensor of that name");
  }
  const auto& t = std::get<TensorStorageMetadata>(it->second);
  *tensor = &t;
  const Shape zero(t.size.size(), 0);
  const Shape& offset = index.offset ? *index.offset : zero;
  if (index.index && *index.index < t.chunks.size() && t.chunks[*index.index].offsets == offset) {
    return t.chunks[*index.index];
  }
  for (const auto& c : t.chunks) {
    if (c.offsets == offset) return c;
  }
  throw Error(ErrorCode::kNotFound, index.fqn, "no stored chunk at the requested offset");
}

bool box_inside(const Shape& offsets, const Shape& lengths, const Shape& sizes) {
  if (offsets.size() != sizes.size() || lengths.size() != sizes.size()) return false;
  for (std::size_t d = 0; d < sizes.size(); ++d) {
    if (offsets[d] < 0 || lengths[d] < 0 || offsets[d] + lengths[d] > sizes[d]) return false;
  }
  return true;
}

}  // namespace

void FileSystemReader::read_data(const LoadPlan& plan, LoadPlanner& planner) {
  const Metadata& md = impl_->metadata;
  IoEngine& engine = impl_->engine_for(md);

  std::map<std::string, std::size_t> task_of;  // file -> position in tasks
  std::vector<detail::FileReadTask> tasks;
  for (const FileInfo& f : md.files) {
    task_of.emplace(f.relative_path, tasks.size());
    tasks.push_back({f, {}, f.size, false});
  }
  for (const auto& [index, info] : md.storage_data) {  // the header ends where data begins
    auto it = task_of.find(info.relative_path);
    if (it != task_of.end()) tasks[it->second].header_bytes = std::min(tasks[it->second].header_bytes, info.offset);
  }

  std::list<Bytes> blobs;  // BYTE_IO destinations, stable addresses
  std::vector<std::pair<const ReadItem*, Bytes*>> blob_items;
  std::vector<std::pair<const ReadItem*, TensorView>> tensor_items;
  for (const ReadItem& item : plan.items) {
    auto found = md.storage_data.find(item.storage_index);
    if (found == md.storage_data.end()) {
      throw Error(ErrorCode::kCorrupt, item.storage_index.fqn,
                  "metadata.json records no storage for this item");
    }
    const StorageInfo& where = found->second;
    auto t = task_of.find(where.relative_path);
    if (t == task_of.end()) {
      throw Error(ErrorCode::kCorrupt, item.storage_index.fqn,
                  "stored in " + where.relative_path + ", a file metadata.json does not list");
    }
    auto& runs = tasks[t->second].runs;
    if (item.type == LoadItemType::BYTE_IO) {
      Bytes& blob = blobs.emplace_back(where.length);
      blob_items.emplace_back(&item, &blob);
      runs.push_back({where.offset, where.length, blob.data()});
      continue;
    }
    const TensorStorageMetadata* stored = nullptr;
    const ChunkStorageMetadata& chunk = stored_chunk(md, item.storage_index, &stored);
    TensorView dest = planner.resolve_tensor(item);
    if (dest.dtype != stored->properties.dtype) {
      throw Error(ErrorCode::kMismatch, item.dest_index.fqn,
                  "stored as " + std::string(dtype_name(stored->properties.dtype)) +
                      ", destination is " + std::string(dtype_name(dest.dtype)));
    }
    if (!box_inside(item.storage_offsets, item.lengths, chunk.sizes) ||
        !box_inside(item.dest_offsets, item.lengths, dest.shape)) {
      throw Error(ErrorCode::kInvalidArgument, item.dest_index.fqn,
                  "read item box lies outside its stored chunk or its destination");
    }
    const std::size_t element = dtype_size(dest.dtype);
    if (where.length != static_cast<std::uint64_t>(numel(chunk.sizes)) * element) {
      throw Error(ErrorCode::kCorrupt, item.storage_index.fqn,
                  "stored byte length does not match the chunk's shape");
    }
    detail::append_box_runs(runs, where.offset, chunk.sizes, item.storage_offsets,
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
