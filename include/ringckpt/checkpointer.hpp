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
#pragma once

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>

#include <exception>
#include <filesystem>
#include <future>
#include <memory>
#include <optional>

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
  // async_save returns after planning; staging runs in the background as the
  // disk drains the ring, so memory stays at the ring's size however large
  // the state dict; staged fires when the last byte has been copied.
  bounded,
  // async_save returns after planning; staging copies in the background while
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
  // the caller is blocked only for planning.
  StagingMode default_mode = StagingMode::lazy;
};

struct AsyncSaveOptions {
  std::optional<StagingMode> mode;   // default: CheckpointerOptions::default_mode
  bool overwrite = false;            // replace a checkpoint already in dir
  SavePlanner* planner = nullptr;    // default: DefaultSavePlanner; must outlive the save
};

using CompletionSignature = void(std::exception_ptr);
using AnyCompletionHandler = boost::asio::any_completion_handler<CompletionSignature>;

// The two completions of one save. Both deliver failure as an exception (an
// ringckpt::Error); a save that fails or is cancelled leaves no checkpoint.
class SaveHandle {
 public:
  // Every source byte has been read: the caller may mutate or free the tensors.
  std::shared_future<void> staged;
  // Data and metadata are durable and the checkpoint is visible.
  std::shared_future<void> committed;

  // Stops the save unless it has already committed; then both completions
  // (those not yet delivered) report Error(kCancelled).
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

  struct State;
  explicit SaveHandle(std::shared_ptr<State> state);
  SaveHandle() = default;

 private:
  static void when_staged(const std::shared_ptr<State>& state, AnyCompletionHandler handler);
  static void when_committed(const std::shared_ptr<State>& state, AnyCompletionHandler handler);
  std::shared_ptr<State> state_;
};

class Checkpointer {
 public:
  explicit Checkpointer(CheckpointerOptions options = {});
  // Cancels saves not yet committed and waits for every thread to stop.
  ~Checkpointer();
  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;

  // Plans the save on the calling thread and returns; saves from any number
  // of threads are queued and run one after another, in the order asked.
  SaveHandle async_save(const StateDict& state_dict, std::filesystem::path dir,
                        AsyncSaveOptions options = {});

  // The same, with the committed completion delivered through `token`.
  template <typename CompletionToken>
  auto async_save(const StateDict& state_dict, std::filesystem::path dir,
                  AsyncSaveOptions options, CompletionToken&& token) {
    SaveHandle handle = async_save(state_dict, std::move(dir), options);
    return handle.async_wait_committed(std::forward<CompletionToken>(token));
  }

  // Blocks until committed; returns the committed metadata.
  Metadata save(const StateDict& state_dict, const std::filesystem::path& dir,
                AsyncSaveOptions options = {});

  // Loads through the same ring and io_uring, every extent verified.
  void load(StateDict& state_dict, const std::filesystem::path& dir,
            LoadPlanner* planner = nullptr);

  // Loads on a background thread; the token gets void(std::exception_ptr).
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

 private:
  void start_load(StateDict& state_dict, std::filesystem::path dir, LoadPlanner* planner,
                  AnyCompletionHandler handler);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ringckpt
