// ringckpt/checkpointer.hpp — the long-lived, non-blocking checkpointer a
// training program keeps for its whole run.
//
// Creating a Checkpointer allocates, pre-faults and registers the staging ring,
// sets up io_uring and starts the staging and I/O threads: the one expensive
// step. Each save then only borrows ring slots.
//
//   ringckpt::Checkpointer ckpt{{}};
//   auto h = ckpt.async_save(sd, "ckpt/step-1000");
//   h.staged.wait();      // now the training may mutate or free what sd points to
//   h.committed.get();    // durable and visible; throws ringckpt::Error on failure
//
// On many ranks (MPI, threads), every rank makes its own Checkpointer over
// the same Coordinator and asks for the same saves and loads in the same
// order; together they write one checkpoint:
//
//   ringckpt::MpiCoordinator world;                   // MPI_THREAD_MULTIPLE
//   ringckpt::Checkpointer ckpt({}, world);            // collective
//   auto h = ckpt.async_save(my_shards, "ckpt/step-1000");
#pragma once

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>

#include <cstdint>
#include <exception>
#include <filesystem>
#include <future>
#include <memory>
#include <optional>

#include "ringckpt/coordinator.hpp"
#include "ringckpt/io_options.hpp"
#include "ringckpt/metadata.hpp"
#include "ringckpt/planner.hpp"
#include "ringckpt/tensor.hpp"

namespace ringckpt {

// How a save copies the state dict into the ring.
enum class StagingMode {
  // async_save returns once every byte is copied (staged has fired): the
  // caller pays one pass of copying at memory speed. The whole state dict
  // must fit the ring, else async_save throws Error(kInvalidArgument).
  snapshot,
  // async_save returns once the save is queued; staging runs in the background as the
  // disk drains the ring, so memory stays at the ring's size however large
  // the state dict; staged fires when the last byte has been copied.
  bounded,
  // async_save returns once the save is queued; staging copies in the background while
  // the caller computes (its forward and backward passes), and the caller
  // waits for staged before it next mutates the tensors. With a ring that
  // holds the state dict, staged fires at memory speed; with a smaller one
  // the save proceeds as bounded (noted once).
  lazy,
};

struct CheckpointerOptions {
  // extent_size, ring_bytes (the staging memory), queue depth, threads.
  IoOptions io;
  // The mode of a save that does not name one. lazy suits a training loop:
  // the caller is blocked only while the save is queued.
  StagingMode default_mode = StagingMode::lazy;
  // DCP's plan caching: a save whose local plans all equal the previous
  // save's (same keys, shapes, dtypes, shards) reuses its global plan; only
  // saves with the default planner are cached.
  bool plan_caching = true;
};

// How this rank's saves were planned (plan caching).
struct PlanCacheReport {
  std::uint64_t cold = 0;    // global plan made (and sent in full)
  std::uint64_t cached = 0;  // global plan reused (a token sent each way)
};

struct AsyncSaveOptions {
  std::optional<StagingMode> mode{}; // default: CheckpointerOptions::default_mode
  bool overwrite = false;            // replace a checkpoint already in dir
  SavePlanner* planner = nullptr;    // default: DefaultSavePlanner; must outlive the save
};

using CompletionSignature = void(std::exception_ptr);
using AnyCompletionHandler = boost::asio::any_completion_handler<CompletionSignature>;

// The completion contract (every handler given to async_wait_staged,
// async_wait_committed, async_save(..., token) and async_load), after Asio's
// rules for asynchronous operations:
//  - No handler runs while a ringckpt lock is held, and none runs inside the
//    initiating call, even when the operation has already completed: it is
//    posted.
//  - A handler with an associated executor (asio::bind_executor, a
//    coroutine's, use_future's) runs on that executor; use_future's promise
//    is set on Asio's system executor. A plain callback runs on the
//    Checkpointer's completion thread, which is neither the caller's, the
//    control thread (planning, collectives, commits, loads), a staging
//    thread nor the I/O thread: a callback may call async_save, save, load,
//    cancel or the async waits, and may block on save(), load(), a
//    SaveHandle's futures or the use_future of another operation. (A
//    callback that blocks on another plain callback delays it: they share
//    the completion thread.)
//    (After ~Checkpointer, a wait on a finished save runs a plain callback on
//    Asio's system executor.)
//  - While a handler is pending, outstanding work is counted on its associated
//    executor (an io_context::run() does not return before it has run).
//  - async_save(..., token) starts the save inside its initiation: with
//    asio::deferred, nothing is planned or written until the deferred
//    operation is invoked.
//  - Every failure of a save (planning, staging, writing, commit, cancel,
//    ~Checkpointer) ends it through one path: both completions report the
//    error (those not yet delivered), no waiter is left hanging.
//
// Threads and ranks. Every save and load of a Checkpointer runs on its
// control thread, one after another in the order they were asked: its
// planning, its collectives (over the coordinator's duplicate), the wait for
// its data, its commit. So a save and a load in flight together never
// interleave their collectives, and on N ranks the same order on every rank
// is all the ranks must agree on. A lazy or bounded async_save only queues
// the save; a snapshot async_save queues it and waits until staged; load
// queues the load and waits; async_load queues it. Planning errors arrive
// through both completions (and the token); a snapshot async_save(dir)
// throws a planning error (its own, or another rank's) instead of returning.
//
// On N ranks, a save fails on every rank if it fails on one (its planner or
// storage throws, its disk is full, it is cancelled there, its Checkpointer
// is destroyed with the save pending): every rank's completions report the
// same Error, naming that rank, and nothing becomes visible. committed
// fires on every rank once rank 0 has committed metadata.json.

class SaveCompletions;  // the state of one save's completions; defined in lib/

// The two completions of one save. Both deliver failure as an exception (an
// ringckpt::Error); a save that fails or is cancelled leaves no checkpoint.
class SaveHandle {
 public:
  // Every source byte has been read: the caller may mutate or free the tensors.
  std::shared_future<void> staged;
  // Data and metadata are durable and the checkpoint is visible.
  std::shared_future<void> committed;

  // Stops the save unless it has already committed; then both completions
  // (those not yet delivered) report Error(kCancelled). Safe from any thread,
  // from a handler, and after the Checkpointer is destroyed (then a no-op).
  void cancel();

  // Asio-style waits: the token chooses futures, callbacks or coroutines
  // (asio::use_future, a lambda, asio::use_awaitable). Signature
  // void(std::exception_ptr).
  template <typename CompletionToken>
  auto async_wait_staged(CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, CompletionSignature>(
        [state = state_](AnyCompletionHandler handler) { when_staged(state, std::move(handler)); },
        token);
  }
  template <typename CompletionToken>
  auto async_wait_committed(CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, CompletionSignature>(
        [state = state_](AnyCompletionHandler handler) {
          when_committed(state, std::move(handler));
        },
        token);
  }

  SaveHandle() = default;

 private:
  friend class Checkpointer;
  explicit SaveHandle(std::shared_ptr<SaveCompletions> state);
  static void when_staged(const std::shared_ptr<SaveCompletions>& state,
                          AnyCompletionHandler handler);
  static void when_committed(const std::shared_ptr<SaveCompletions>& state,
                             AnyCompletionHandler handler);
  std::shared_ptr<SaveCompletions> state_;
};

class Checkpointer {
 public:
  // One rank: this process alone.
  explicit Checkpointer(CheckpointerOptions options = {});
  // Rank coordinator.rank() of coordinator.world_size(): a collective (it
  // calls coordinator.duplicate() on this thread, and from then on uses only
  // the duplicate, on its control thread). The coordinator may be destroyed
  // once this returns.
  Checkpointer(CheckpointerOptions options, Coordinator& coordinator);
  // Cancels saves not yet committed, waits for every thread to stop and for
  // every pending plain callback to have run; handlers bound to an executor
  // have been posted to it. On N ranks, saves and loads still queued run
  // their collectives to the end (a save as cancelled), so the other ranks
  // must reach them too. REQUIRES: not called from a plain callback (it
  // waits for the completion thread that callback runs on).
  ~Checkpointer();
  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;

  // Queues the save and returns (a snapshot save once staged); saves from any
  // number of threads run one after another, in the order asked. On N ranks
  // each rank passes its own part of the state dict (ShardedTensor shards,
  // replicated tensors), and `dir` names the same directory on every rank.
  SaveHandle async_save(const StateDict& state_dict, std::filesystem::path dir,
                        AsyncSaveOptions options = {});

  // The same, with the committed completion delivered through `token`; the
  // save starts when the initiation runs (see the contract above).
  template <typename CompletionToken>
  auto async_save(const StateDict& state_dict, std::filesystem::path dir,
                  AsyncSaveOptions options, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, CompletionSignature>(
        [this, &state_dict, dir = std::move(dir), options](AnyCompletionHandler handler) {
          start_save(state_dict, dir, options, std::move(handler));
        },
        token);
  }

  // Blocks until committed; returns the committed metadata (on ranks other
  // than 0, read back from dir's metadata.json and checked to be this save's).
  Metadata save(const StateDict& state_dict, const std::filesystem::path& dir,
                AsyncSaveOptions options = {});

  // Loads through the same ring and io_uring, every extent verified; on N
  // ranks each fills its own part, resharded as ringckpt::load does.
  void load(StateDict& state_dict, const std::filesystem::path& dir,
            LoadPlanner* planner = nullptr);

  // Queues the load; the token gets void(std::exception_ptr).
  // state_dict (and planner) must outlive the operation.
  template <typename CompletionToken>
  auto async_load(StateDict& state_dict, std::filesystem::path dir, LoadPlanner* planner,
                  CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, CompletionSignature>(
        [this, &state_dict, dir = std::move(dir), planner](AnyCompletionHandler handler) {
          start_load(state_dict, dir, planner, std::move(handler));
        },
        token);
  }

  const CheckpointerOptions& options() const noexcept;
  IoReport report() const;
  PlanCacheReport plan_cache() const;
  int rank() const noexcept;
  int world_size() const noexcept;

 private:
  void start_save(const StateDict& state_dict, std::filesystem::path dir,
                  const AsyncSaveOptions& options, AnyCompletionHandler handler);
  void start_load(StateDict& state_dict, std::filesystem::path dir, LoadPlanner* planner,
                  AnyCompletionHandler handler);
  struct Impl;
  std::shared_ptr<Impl> impl_;  // shared so that a SaveHandle's cancel can tell it is gone
};

}  // namespace ringckpt
