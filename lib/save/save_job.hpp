// lib/save/save_job.hpp — one save of one rank, through the staging ring and
// io_uring: stage (copy + XXH3 per extent) -> write -> fdatasync.
//
// The job walks the extents of its files in plan order, taking one ring slot
// per extent (so staging waits when every slot is in flight), fills the slot
// on a staging thread, and hands it to the I/O thread to write at its fixed
// offset. It never calls back upstream: it reports through two callbacks.
#pragma once

#include <exception>
#include <filesystem>
#include <functional>
#include <memory>

#include "io/data_file.hpp"
#include "plan/layout.hpp"
#include "ringckpt/planner.hpp"
#include "ringckpt/storage.hpp"

namespace ringckpt::detail {

class IoEngine;

class SaveJob {
 public:
  struct Callbacks {
    // Once, when every source byte has been read (or with the error that
    // stopped the save first).
    std::function<void(std::exception_ptr)> staged;
    // Once, last: the data files are durable (fdatasync) and closed, or the
    // save failed and the files it created are removed.
    std::function<void(std::exception_ptr, WriteResults)> written;
  };

  // Starts at once: creates the layout's files in `dir` (by name, relative to
  // its handle). The engine, planner and plan items must outlive the job
  // (until `written` has run). REQUIRES: dir is open.
  static std::shared_ptr<SaveJob> start(IoEngine& engine,
                                        std::shared_ptr<const CheckpointDirectory> dir,
                                        const SavePlan& plan, SavePlanner& planner,
                                        SaveLayout layout, Callbacks callbacks);
  // Stops the save; both callbacks then report Error(kCancelled) unless they
  // already ran.
  virtual void cancel() = 0;
  virtual ~SaveJob() = default;
};

// Error(kCancelled) naming `dir`: how every save that is cancelled before it
// committed fails (SaveJob::cancel, and the Checkpointer's queued saves).
std::exception_ptr save_cancelled(const std::filesystem::path& dir);

}  // namespace ringckpt::detail
