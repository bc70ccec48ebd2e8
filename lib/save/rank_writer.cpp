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
void remove_unlisted_data_files(const CheckpointDirectory& dir,
                                const std::set<std::string>& keep) noexcept {
  try {
    for (const std::string& name : dir.list()) {
      if (!is_data_file_name(name) || keep.contains(name)) continue;
      const auto entry = dir.stat(name);
      if (!entry || !entry->regular) continue;
      if (dir.remove(name)) kill_point("old-removal");  // tests only
    }
  } catch (const std::exception&) {
    // Listing failed (or out of memory): the leftovers stay; the next save retries.
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
  handle_.reset();
  created_->clear();
}

IoEngine& RankWriter::engine() {
  if (!engine_) engine_ = std::make_shared<IoEngine>(io_);
  return *engine_;
}

const CheckpointDirectory& RankWriter::directory() {
  if (!handle_) {
    handle_ = std::make_shared<const CheckpointDirectory>(CheckpointDirectory::create(dir_));
  }
  return *handle_;
}

void RankWriter::set_up(bool is_coordinator) {
  // The one handle of this save: every file is named relative to it from now on.
  handle_ = std::make_shared<const CheckpointDirectory>(CheckpointDirectory::create(dir_));
  if (!is_coordinator) return;
  // With overwrite the old checkpoint stays whole until commit() replaced it.
  // A symbolic link at metadata.json is no checkpoint (load refuses it): the
  // commit replaces the link itself.
  const auto existing = handle_->stat(kMetadataFile);
  if (!overwrite_ && existing && !existing->symlink) {
    throw Error(ErrorCode::kAlreadyExists, handle_->path_of(kMetadataFile).string(),
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
  directory();
  return SaveJob::start(engine(), handle_, plan, planner, std::exchange(layout_, {}),
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
  // A stale temporary ({name}.tmp) of a killed commit, or a link planted in
  // its place, is removed by write_file_atomically before it writes.
  const CheckpointDirectory& dir = directory();
  dir.write_file_atomically(kMetadataFile, encode_metadata(metadata, results));
  kill_point("renamed");  // tests only (kill_points.hpp)
  std::set<std::string> keep;
  for (const auto& r : results) {
    for (const auto& f : r.files) keep.insert(f.relative_path);
    for (const auto& item : r.items) keep.insert(item.storage_data.relative_path);
  }
  for (const auto& f : metadata.files) keep.insert(f.relative_path);
  for (const auto& [index, info] : metadata.storage_data) keep.insert(info.relative_path);
  remove_unlisted_data_files(dir, keep);
  handle_.reset();  // the save is over: its directory descriptor is closed now
}

void RankWriter::abort() noexcept {
  // Only in the directory this save opened (no handle: nothing was created).
  if (handle_) {
    for (const std::string& name : *created_) handle_->remove(name);
  }
  handle_.reset();
  created_->clear();
}

}  // namespace ringckpt::detail
