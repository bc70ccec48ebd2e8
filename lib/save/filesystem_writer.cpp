#include "ringckpt/filesystem_writer.hpp"

#include <unistd.h>

#include <string>
#include <system_error>

#include "format/error_translation.hpp"
#include "io/io_engine.hpp"
#include "save/rank_writer.hpp"
#include "save/shared_engine_writer.hpp"

namespace ringckpt {

// Every step is the RankWriter's: the write path exists once. What escapes a
// step reaches the caller as an Error naming the directory.
struct FileSystemWriter::Impl {
  Impl(std::filesystem::path d, IoOptions io, bool overwrite)
      : dir(d.string()), writer(std::move(d), std::move(io), overwrite) {}
  Impl(std::filesystem::path d, std::shared_ptr<detail::IoEngine> engine, bool overwrite)
      : dir(d.string()), writer(std::move(d), std::move(engine), overwrite) {}
  std::string dir;  // the checkpoint directory, as errors name it
  detail::RankWriter writer;
  int rank = 0;
  std::string generation;  // chosen by the last prepare_global_plan; empty before
};

FileSystemWriter::FileSystemWriter(std::filesystem::path dir, IoOptions io, bool overwrite)
    : impl_(std::make_unique<Impl>(std::move(dir), std::move(io), overwrite)) {}

FileSystemWriter::FileSystemWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

FileSystemWriter::~FileSystemWriter() = default;

std::unique_ptr<FileSystemWriter> SharedEngineWriter::open(std::filesystem::path dir,
                                                           std::shared_ptr<detail::IoEngine> engine,
                                                           bool overwrite) {
  return std::unique_ptr<FileSystemWriter>(new FileSystemWriter(
      std::make_unique<FileSystemWriter::Impl>(std::move(dir), std::move(engine), overwrite)));
}

detail::RankWriter& SharedEngineWriter::rank_writer(FileSystemWriter& writer) {
  return writer.impl_->writer;
}

bool FileSystemWriter::validate_checkpoint_id(const std::filesystem::path& checkpoint_id) noexcept {
  try {
    if (checkpoint_id.empty() || checkpoint_id.native().find("://") != std::string::npos) {
      return false;
    }
    // The nearest existing ancestor (or the path itself) must be a writable
    // directory: the save creates what is missing below it.
    std::filesystem::path at = std::filesystem::absolute(checkpoint_id);
    while (true) {
      std::error_code ec;
      const auto status = std::filesystem::status(at, ec);
      if (std::filesystem::exists(status)) {
        return std::filesystem::is_directory(status) && ::access(at.c_str(), W_OK) == 0;
      }
      if (ec && ec != std::errc::no_such_file_or_directory) return false;
      if (!at.has_relative_path()) return false;  // reached the root
      at = at.parent_path();
    }
  } catch (...) {  // a path too long to build, out of memory: not usable
    return false;
  }
}

void FileSystemWriter::reset(const std::filesystem::path& checkpoint_id) {
  impl_->dir = checkpoint_id.string();
  impl_->generation.clear();
  impl_->writer.reset(checkpoint_id);
}

void FileSystemWriter::set_up_storage_writer(bool is_coordinator, int rank) {
  impl_->rank = rank;
  detail::translating_errors(impl_->dir, [&] { impl_->writer.set_up(is_coordinator); });
}

SavePlan FileSystemWriter::prepare_local_plan(SavePlan plan) { return plan; }

std::vector<SavePlan> FileSystemWriter::prepare_global_plan(std::vector<SavePlan> plans) {
  // One generation for every rank of this save.
  const std::string generation = new_save_generation();
  for (std::size_t r = 0; r < plans.size(); ++r) {
    plans[r].storage_data = data_prefix(static_cast<int>(r), generation);
  }
  impl_->generation = generation;
  return plans;
}

std::optional<StorageMeta> FileSystemWriter::storage_meta() const {
  if (impl_->generation.empty()) return std::nullopt;
  StorageMeta meta;  // load_id and modules: empty, as DCP's FileSystemWriter leaves them
  meta.checkpoint_id = impl_->dir;
  meta.save_id = impl_->generation;
  return meta;
}

WriteResults FileSystemWriter::write_data(const SavePlan& plan, SavePlanner& planner) {
  const std::string prefix = plan.storage_data.empty()
                                 ? data_prefix(impl_->rank, new_save_generation())
                                 : plan.storage_data;
  return detail::translating_errors(impl_->dir,
                                    [&] { return impl_->writer.write(plan, prefix, planner); });
}

void FileSystemWriter::finish(const Metadata& metadata, const std::vector<WriteResults>& results) {
  detail::translating_errors(impl_->dir, [&] { impl_->writer.commit(metadata, results); });
}

void FileSystemWriter::abort() noexcept { impl_->writer.abort(); }

IoReport FileSystemWriter::report() const {
  const detail::IoEngine* engine = impl_->writer.engine_if_made();
  return engine ? engine->report() : IoReport{};
}

}  // namespace ringckpt
