#include "ringckpt/filesystem_reader.hpp"

#include <algorithm>
#include <list>
#include <map>
#include <new>
#include <span>
#include <string_view>
#include <utility>

#include "format/metadata_json.hpp"
#include "io/data_file.hpp"
#include "io/io_engine.hpp"
#include "format/tensor_geometry.hpp"
#include "load/extent_reader.hpp"
#include "load/metadata_file.hpp"
#include "load/read_index.hpp"
#include "load/shared_engine_reader.hpp"
#include "ringckpt/error.hpp"

namespace ringckpt {

using detail::IoEngine;
using detail::ReadIndex;

// ---------------------------------------------------------------- reader

struct FileSystemReader::Impl {
  std::filesystem::path dir;
  // The directory as this load opened it (read_metadata, or the first step
  // that needs it after a reset): every file is read relative to it, so the
  // files read are those of the directory opened at the start.
  CheckpointDirectory handle;
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

  // Frees the text of metadata.json. (Assigning an empty string would keep
  // the buffer: libstdc++ copies a short string into the existing capacity.)
  void release_metadata_text() { std::string().swap(metadata_text); }

  const ReadIndex& current_index() {
    if (!indexed) {
      try {
        index.build(decode_metadata(metadata_text, metadata_path));
      } catch (const std::bad_alloc&) {
        throw Error(ErrorCode::kIo, metadata_path, "out of memory decoding the metadata");
      }
      indexed = true;
      release_metadata_text();
    }
    return index;
  }

  const CheckpointDirectory& directory() {
    if (!handle.is_open()) handle = detail::open_checkpoint_directory(dir);
    return handle;
  }

  // A reader of its own sizes its ring slots for the largest extent on disk.
  IoEngine& engine_for(const std::vector<FileInfo>& files) {
    if (!engine) engine = std::make_shared<IoEngine>(detail::read_options(io, files));
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

bool FileSystemReader::validate_checkpoint_id(const std::filesystem::path& checkpoint_id) noexcept {
  try {
    if (checkpoint_id.empty() || checkpoint_id.native().find("://") != std::string::npos) {
      return false;
    }
    std::error_code ec;
    return std::filesystem::is_directory(std::filesystem::symlink_status(checkpoint_id, ec)) &&
           std::filesystem::is_regular_file(
               std::filesystem::symlink_status(checkpoint_id / kMetadataFile, ec));
  } catch (...) {  // a path too long to build, out of memory: not usable
    return false;
  }
}

void FileSystemReader::reset(const std::filesystem::path& checkpoint_id) {
  impl_->dir = checkpoint_id;
  impl_->handle = CheckpointDirectory();
}

Metadata FileSystemReader::read_metadata() {
  // A load starts here: the directory is opened afresh, and read_data reads
  // from this handle. Bounded (IoOptions::max_metadata_bytes), never
  // blocking, never through a link.
  impl_->handle = CheckpointDirectory();
  impl_->handle = detail::open_checkpoint_directory(impl_->dir);
  const CheckpointDirectory& dir = impl_->handle;
  std::string text;
  Metadata md = detail::read_metadata_file(dir, impl_->io.max_metadata_bytes, text);
  impl_->metadata_text = std::move(text);
  impl_->metadata_path = dir.path_of(kMetadataFile).string();
  impl_->indexed = false;
  return md;
}

void FileSystemReader::set_up_storage_reader(const Metadata& metadata, bool) {
  // The text is freed before the index is built, so that the two are never
  // held at once; keeps no reference to `metadata`.
  impl_->release_metadata_text();
  impl_->indexed = true;
  try {
    impl_->index.build(metadata);
  } catch (...) {
    impl_->index = ReadIndex();  // nothing half built is read by
    throw;
  }
}

LoadPlan FileSystemReader::prepare_local_plan(LoadPlan plan) { return plan; }

std::vector<LoadPlan> FileSystemReader::prepare_global_plan(std::vector<LoadPlan> plans) {
  return plans;
}

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
    if (!detail::box_inside(item.storage_offsets, item.lengths, sizes) ||
        !detail::box_inside(item.dest_offsets, item.lengths, dest.shape)) {
      throw Error(ErrorCode::kInvalidArgument, item.dest_index.fqn,
                  "read item box lies outside its stored chunk or its destination");
    }
    const std::size_t element = dtype_size(dest.dtype);
    chunk_sizes.assign(sizes.begin(), sizes.end());
    if (detail::shape_bytes(sizes, element) != where->length) {
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
  detail::read_extents(engine, impl_->directory(), needed, nullptr);
  for (auto& [item, blob] : blob_items) {
    if (Bytes* dest = planner.resolve_bytes(*item)) {
      *dest = std::move(*blob);
    } else {
      planner.load_bytes(*item, *blob);
    }
  }
  for (auto& [item, view] : tensor_items) planner.commit_tensor(*item, view);
}

IoReport FileSystemReader::report() const {
  return impl_->engine ? impl_->engine->report() : IoReport{};
}

}  // namespace ringckpt
