// lib/save/rank_writer.hpp — one rank's write of one checkpoint: the only
// code that creates, writes, commits or removes the files of a checkpoint.
//
// It owns, in order: the directory set-up, the layout of the finished plan, the
// SaveJob that stages and writes the data files, the commit (metadata.json,
// written atomically) and the clean-up of a save that will not commit.
// FileSystemWriter (and so ringckpt::save) and the Checkpointer are built on it.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "io/data_file.hpp"
#include "plan/layout.hpp"
#include "ringckpt/io_options.hpp"
#include "ringckpt/metadata.hpp"
#include "ringckpt/planner.hpp"
#include "save/save_job.hpp"

namespace ringckpt::detail {

class IoEngine;

class RankWriter {
 public:
  // Writes through `engine`, a long-lived one shared with others.
  RankWriter(std::filesystem::path dir, std::shared_ptr<IoEngine> engine, bool overwrite);
  // Writes through an engine of its own, made (with `io`) on the first write.
  RankWriter(std::filesystem::path dir, IoOptions io, bool overwrite);
  ~RankWriter();
  RankWriter(const RankWriter&) = delete;
  RankWriter& operator=(const RankWriter&) = delete;

  const std::filesystem::path& dir() const noexcept { return dir_; }
  // Points the writer at another directory and forgets the files it created.
  void reset(std::filesystem::path dir);

  // Creates the directory where missing and opens it (CheckpointDirectory):
  // every later step names its files relative to that handle, until reset().
  // On the coordinator, a directory that already holds a checkpoint is
  // refused (Error kAlreadyExists) unless overwrite was asked for; then the
  // old checkpoint stays as it is until commit() replaces it.
  void set_up(bool is_coordinator);

  // Lays `plan` out in files named {prefix}{n}.safetensors, for the next
  // start(). REQUIRES: plan outlives the job that start() begins.
  const SaveLayout& lay_out(const SavePlan& plan, std::string_view prefix);
  // Starts the SaveJob that writes the files lay_out placed; `callbacks` are
  // the job's. Returns the job (for cancel). REQUIRES: lay_out(plan) came
  // first; plan and planner outlive the job (until callbacks.written has
  // run); no other job of this writer is running.
  std::shared_ptr<SaveJob> start(const SavePlan& plan, SavePlanner& planner,
                                 SaveJob::Callbacks callbacks);
  // lay_out and start, then waits for the data to be durable; throws the
  // job's error.
  WriteResults write(const SavePlan& plan, std::string_view prefix, SavePlanner& planner);

  // Commits: metadata.json with `results` recorded, written atomically. Before
  // the rename the old checkpoint (if any) is whole; after, the new one is
  // durable. Then removes every data file (is_data_file_name) the new
  // metadata.json does not list: the old generation and leftovers of killed
  // saves. Only the coordinator commits, after every rank's data is durable.
  void commit(const Metadata& metadata, const std::vector<WriteResults>& results);
  // For a save that will not commit: removes exactly the data files this
  // writer's last job created (a job that failed has removed its own already).
  // REQUIRES: no job of this writer is running.
  void abort() noexcept;

  // The engine, made now if it is this writer's own.
  IoEngine& engine();
  // nullptr while an own engine has not been made yet.
  const IoEngine* engine_if_made() const noexcept { return engine_.get(); }

 private:
  // The directory opened by set_up (or the first step that needs it); closed
  // by commit and abort, which end the save.
  const CheckpointDirectory& directory();

  std::filesystem::path dir_;
  std::shared_ptr<const CheckpointDirectory> handle_;  // shared with the running job
  IoOptions io_;
  std::shared_ptr<IoEngine> engine_;
  bool overwrite_ = false;
  SaveLayout layout_;  // of the last lay_out; moved into the job by start
  // The data files the last job wrote whole; set when it reports success,
  // read by abort (after the job, which the REQUIRES orders).
  std::shared_ptr<std::vector<std::string>> created_ = std::make_shared<std::vector<std::string>>();
};

}  // namespace ringckpt::detail
