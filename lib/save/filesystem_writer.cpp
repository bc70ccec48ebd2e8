#include "ringckpt/filesystem_writer.hpp"

#include <future>
#include <regex>

#include "format/metadata_json.hpp"
#include "io/data_file.hpp"
#include "io/io_engine.hpp"
#include "plan/layout.hpp"
#include "ringckpt/error.hpp"
#include "save/save_job.hpp"

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
  write_file_atomically(impl_->dir, kMetadataFile, encode_metadata(metadata, results));
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

}  // namespace ringckpt
