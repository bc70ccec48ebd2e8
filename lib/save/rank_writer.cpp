#include "save/rank_writer.hpp"

#include <future>
#include <regex>
#include <utility>

#include "format/metadata_json.hpp"
#include "io/data_file.hpp"
#include "io/io_engine.hpp"
#include "ringckpt/error.hpp"

namespace ringckpt::detail {
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

RankWriter::RankWriter(std::filesystem::path dir, std::shared_ptr<IoEngine> engine,
                       bool overwrite)
    : dir_(std::move(dir)), io_(engine->options()), engine_(std::move(engine)),
      overwrite_(overwrite) {}

RankWriter::RankWriter(std::filesystem::path dir, IoOptions io, bool overwrite)
    : dir_(std::move(dir)), io_(std::move(io)), overwrite_(overwrite) {}

RankWriter::~RankWriter() = default;

std::string RankWriter::data_prefix(int rank) { return "__" + std::to_string(rank) + "_"; }

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
  if (std::filesystem::exists(dir_ / kMetadataFile)) {
    if (!overwrite_) {
      throw Error(ErrorCode::kAlreadyExists, (dir_ / kMetadataFile).string(),
                  "a checkpoint is already saved here; ask for overwrite to replace it");
    }
    remove_old_checkpoint(dir_);
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
  write_file_atomically(dir_, kMetadataFile, encode_metadata(metadata, results));
}

void RankWriter::abort() noexcept {
  for (const std::string& name : *created_) {
    std::error_code ignored;
    std::filesystem::remove(dir_ / name, ignored);
  }
  created_->clear();
}

}  // namespace ringckpt::detail
