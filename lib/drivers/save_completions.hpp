// lib/drivers/save_completions.hpp — how a Checkpointer completes its
// operations: the completion thread handlers are posted to, and the two
// completions (staged, committed) of one save with the handlers waiting on
// them and the cancel hook a SaveHandle reaches.
//
// Invariants (the contract of checkpointer.hpp): a handler is always posted,
// never run by the code that completes or registers it, and never while a
// lock of this file is held; while it waits, outstanding work is counted on
// its associated executor.
#pragma once

#include <boost/asio/any_completion_executor.hpp>
#include <boost/asio/thread_pool.hpp>

#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <vector>

#include "ringckpt/checkpointer.hpp"

namespace ringckpt {

// Posts completion handlers: to its own completion thread while open, to
// Asio's system executor once closed. A handler with an associated executor
// is dispatched onto that executor from there.
class CompletionPoster {
 public:
  CompletionPoster() = default;
  CompletionPoster(const CompletionPoster&) = delete;
  CompletionPoster& operator=(const CompletionPoster&) = delete;

  // Posts handler(error); never runs it inside this call.
  void post(AnyCompletionHandler handler, std::exception_ptr error);
  // Sends later handlers to the system executor and waits until every handler
  // posted to the completion thread has run. REQUIRES: not on that thread.
  void close();

 private:
  std::mutex mu_;
  bool closed_ = false;                 // guarded by mu_
  boost::asio::thread_pool thread_{1};  // posted to under mu_ while !closed_
};

// A handler not yet completed, holding outstanding work on its associated
// executor until it is posted.
struct PendingHandler {
  explicit PendingHandler(AnyCompletionHandler h);
  AnyCompletionHandler handler;
  boost::asio::any_completion_executor work;  // outstanding_work.tracked
};

// The completions of one save. Each completes once (later calls are
// ignored); committed completes staged first if it has not.
class SaveCompletions {
 public:
  explicit SaveCompletions(std::shared_ptr<CompletionPoster> poster);

  const std::shared_future<void>& staged() const noexcept { return staged_; }
  const std::shared_future<void>& committed() const noexcept { return committed_; }

  // Posts handler once the completion happens (at once if it has).
  void when_staged(AnyCompletionHandler handler);
  void when_committed(AnyCompletionHandler handler);
  // REQUIRES: the caller holds no lock a handler might take (none runs here,
  // but the promise's waiters wake).
  void complete_staged(std::exception_ptr error);
  void complete_committed(std::exception_ptr error);

  // The hook SaveHandle::cancel runs; cleared once committed.
  void set_cancel(std::function<void()> cancel);
  void cancel();

 private:
  struct Side {
    bool done = false;
    std::exception_ptr error;
    std::vector<PendingHandler> waiters;
  };
  void when(Side& side, AnyCompletionHandler handler);
  // Returns false if `side` had completed already.
  bool complete(Side& side, std::promise<void>& promise, std::exception_ptr error,
                bool clear_cancel);

  std::shared_ptr<CompletionPoster> poster_;
  std::promise<void> staged_promise_;
  std::promise<void> committed_promise_;
  std::shared_future<void> staged_ = staged_promise_.get_future().share();
  std::shared_future<void> committed_ = committed_promise_.get_future().share();

  std::mutex mu_;
  Side staged_side_;               // guarded by mu_
  Side committed_side_;            // guarded by mu_
  std::function<void()> cancel_;   // guarded by mu_
};

}  // namespace ringckpt
