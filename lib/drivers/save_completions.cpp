#include "drivers/save_completions.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/system_executor.hpp>

namespace ringckpt {

// ------------------------------------------------------ CompletionPoster

void CompletionPoster::post(AnyCompletionHandler handler, std::exception_ptr error) {
  const auto own = thread_.get_executor();
  const auto ex = boost::asio::get_associated_executor(handler, own);
  const auto* target = ex.target<decltype(own)>();
  const bool plain = target != nullptr && *target == own;
  auto bound = boost::asio::append(std::move(handler), error);
  std::lock_guard lock(mu_);
  if (plain && !closed_) {
    boost::asio::post(thread_, std::move(bound));
    return;
  }
  // A handler with an executor of its own is handed to it from Asio's system
  // executor, never through thread_: a plain callback that blocks thread_ on
  // this operation's future (use_future's promise executor runs inline) must
  // not wait for itself. After close(), plain callbacks take the same path.
  boost::asio::post(boost::asio::system_executor(), std::move(bound));
}

void CompletionPoster::close() {
  {
    std::lock_guard lock(mu_);
    closed_ = true;
  }
  thread_.join();  // runs out of work: everything posted before closed_ has run
}

PendingHandler::PendingHandler(AnyCompletionHandler h)
    : handler(std::move(h)),
      work(boost::asio::prefer(boost::asio::get_associated_executor(handler),
                               boost::asio::execution::outstanding_work.tracked)) {}

// ------------------------------------------------------- SaveCompletions

SaveCompletions::SaveCompletions(std::shared_ptr<CompletionPoster> poster)
    : poster_(std::move(poster)) {}

void SaveCompletions::when(Side& side, AnyCompletionHandler handler) {
  std::exception_ptr error;
  {
    std::lock_guard lock(mu_);
    if (!side.done) {
      side.waiters.emplace_back(std::move(handler));
      return;
    }
    error = side.error;
  }
  poster_->post(std::move(handler), error);  // already complete: posted, not run here
}

void SaveCompletions::when_staged(AnyCompletionHandler handler) {
  when(staged_side_, std::move(handler));
}

void SaveCompletions::when_committed(AnyCompletionHandler handler) {
  when(committed_side_, std::move(handler));
}

bool SaveCompletions::complete(Side& side, std::promise<void>& promise,
                               std::exception_ptr error, bool clear_cancel) {
  std::vector<PendingHandler> waiters;
  std::function<void()> cancel;  // destroyed outside mu_
  {
    std::lock_guard lock(mu_);
    if (side.done) return false;
    side.done = true;
    side.error = error;
    waiters.swap(side.waiters);
    if (clear_cancel) cancel.swap(cancel_);
  }
  if (error) {
    promise.set_exception(error);
  } else {
    promise.set_value();
  }
  for (auto& w : waiters) poster_->post(std::move(w.handler), error);
  return true;
}

void SaveCompletions::complete_staged(std::exception_ptr error) {
  complete(staged_side_, staged_promise_, error, false);
}

void SaveCompletions::complete_committed(std::exception_ptr error) {
  complete(staged_side_, staged_promise_, error, false);  // a save that ends ends both
  complete(committed_side_, committed_promise_, error, true);
}

void SaveCompletions::set_cancel(std::function<void()> cancel) {
  std::lock_guard lock(mu_);
  if (!committed_side_.done) cancel_ = std::move(cancel);
}

void SaveCompletions::cancel() {
  std::function<void()> fn;
  {
    std::lock_guard lock(mu_);
    fn = cancel_;
  }
  if (fn) fn();
}

}  // namespace ringckpt
