#include "save/rank_writer.hpp"

#include <future>
#include <set>
#include <utility>

#include "format/metadata_json.hpp"
#include "io/data_file.hpp"
#include "io/io_engine.hpp"
#include "io/kill_points.hpp"
#include "ringckpt/error.hpp"

namespace ringckpt::detail {
namespace {

// After a commit: removes from dir every regular file named like a data file
// (is_data_file_name) that `keep` does not list, i.e. the older generation
// and what killed saves left. Never follows a link; a file it cannot remove
// stays (the checkpoint is committed whatever happens here).
void remove_unlisted_data_files(const std::filesystem::path& dir,
                                const std::set<std::string>& keep) noexcept {
  std::error_code ec;
  std::filesystem::directory_iterator it(dir, ec);
  for (; !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!is_data_file_name(name) || keep.contains(name)) continue;
    std::error_code ignored;
    if (it->symlink_status(ignored).type() != std::filesystem::file_type::regular) continue;
    if (std::filesystem::remove(it->path(), ignored)) kill_point("old-removal");  // tests only
  }
}

}  // namespace

RankWriter::RankWriter(std::filesystem::path dir, std::shared_ptr<IoEngine> engine,
                       bool overwrite)
    : dir_(std::move(dir)), io_(engine->options()), engine_(std::move(engine)),
      overwrite_(overwrite) {}

RankWriter::RankWriter(std::filesystem::path dir, IoOptions io, bool overwrite)
    : dir_(std::move(dir)), io_(std::move(io)), overwrite_(overwrite) {}

RankWriter::~RankWriter() = default;

void RankWriter::reset(std::filesystem::path dir) {
  dir_ = std::move(dir);
  created_->clear();
}

IoEngine& RankWriter::engine() {
  if (!engine_) engine_ = std::make_shared<IoEngine>(io_);
  return *engine_;
}

void RankWriter::set_up(bool is_coordinator) {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec || !std::filesystem::is_directory(dir_)) {
    throw Error(ErrorCode::kIo, dir_.string(),
                "cannot create the checkpoint directory: " +
                    (ec ? ec.message() : std::string("not a directory")));
  }
  if (!is_coordinator) return;
  // With overwrite the old checkpoint stays whole until commit() replaced it.
  if (!overwrite_ && std::filesystem::exists(dir_ / kMetadataFile)) {
    throw Error(ErrorCode::kAlreadyExists, (dir_ / kMetadataFile).string(),
                "a checkpoint is already saved here; ask for overwrite to replace it");
  }
}

const SaveLayout& RankWriter::lay_out(const SavePlan& plan, std::string_view prefix) {
  layout_ = plan_layout(plan, prefix, engine().options().max_file_bytes);
  return layout_;
}

std::shared_ptr<SaveJob> RankWriter::start(const SavePlan& plan, SavePlanner& planner,
                                           SaveJob::Callbacks callbacks) {
  created_->clear();
  std::vector<std::string> names;
  for (const auto& f : layout_.files) names.push_back(f.relative_path);
  // The job creates every file of the layout; on failure it removes those it
  // created itself. Only a job that succeeded leaves files for abort().
  callbacks.written = [created = created_, names = std::move(names),
                       written = std::move(callbacks.written)](std::exception_ptr error,
                                                               WriteResults results) mutable {
    if (!error) *created = std::move(names);
    written(error, std::move(results));
  };
  return SaveJob::start(engine(), dir_, plan, planner, std::exchange(layout_, {}),
                        std::move(callbacks));
}

WriteResults RankWriter::write(const SavePlan& plan, std::string_view prefix,
                               SavePlanner& planner) {
  std::promise<WriteResults> done;
  lay_out(plan, prefix);
  auto job = start(plan, planner,
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

void RankWriter::commit(const Metadata& metadata, const std::vector<WriteResults>& results) {
  // A stale temporary (write_file_atomically's {name}.tmp) of a killed
  // commit; only the committing save writes it, so it is no one's now.
  const std::filesystem::path stale = dir_ / (std::string(kMetadataFile) + ".tmp");
  std::error_code ec;
  if (std::filesystem::symlink_status(stale, ec).type() == std::filesystem::file_type::regular) {
    std::filesystem::remove(stale, ec);
  }
  write_file_atomically(dir_, kMetadataFile, encode_metadata(metadata, results));
  kill_point("renamed");  // tests only (kill_points.hpp)
  std::set<std::string> keep;
  for (const auto& r : results) {
    for (const auto& f : r.files) keep.insert(f.relative_path);
    for (const auto& item : r.items) keep.insert(item.storage_data.relative_path);
  }
  for (const auto& f : metadata.files) keep.insert(f.relative_path);
  for (const auto& [index, info] : metadata.storage_data) keep.insert(info.relative_path);
  remove_unlisted_data_files(dir_, keep);
}

void RankWriter::abort() noexcept {
  for (const std::string& name : *created_) {
    std::error_code ignored;
    std::filesystem::remove(dir_ / name, ignored);
  }
  created_->clear();
}

}  // namespace ringckpt::detail
