// lib/io/slot_engine.hpp — the one loop that hands ring slots to the extents
// of a job (a save or a read), in order, and ends the job exactly once.
//
// Extents 0, 1, 2, ... each take one slot from a SlotSource, so no more
// extents are in flight than there are slots; when the source is empty the
// engine waits for the next release (back-pressure). The job supplies hooks:
// `start` begins work on an extent in its slot, and every extent so begun ends
// with one end_extent(). The first failure (or a cancel) stops the handing
// out; extents in flight drain and return their slots; then `done` runs once,
// with the first error or nullptr.
//
// Exceptions never escape: every piece of work the engine runs or wraps for
// the job (start, post, the I/O completions made by io_completion) that throws
// ends its extent with that exception as the job's error. So a job built on
// the engine always reaches `done`, and no waiter hangs.
//
// Thread-safety: every method may be called from any thread. One lock per
// extent event (slot given, extent ended); nothing per staged byte.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/post.hpp>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "io/io_fault_injection.hpp"
#include "io/slot_source.hpp"

namespace ringckpt::detail {

class SlotEngine {
 public:
  // `start` and `done` are required; `stopping` may be empty.
  struct Hooks {
    // Begins extent `e` in `slot`, on the executor. Never called once the
    // engine is stopping. The extent then ends with end_extent(e, slot) —
    // here, or later from a post() or io_completion() step.
    std::function<void(std::size_t e, unsigned slot)> start;
    // Once, outside every lock, when the engine begins to stop (first error
    // or cancel): end the extents the job holds back (may be empty).
    std::function<void()> stopping;
    // Once, on the executor, after the last begun extent has ended: nullptr
    // if every extent ended well, else the first error.
    std::function<void(std::exception_ptr)> done;
  };

  // `slots` must outlive the engine.
  SlotEngine(SlotSource& slots, boost::asio::any_io_executor executor, Hooks hooks);
  SlotEngine(const SlotEngine&) = delete;
  SlotEngine& operator=(const SlotEngine&) = delete;

  // Starts handing slots to extents 0 .. extent_count - 1. Every asynchronous
  // step holds `owner` (the object that owns this engine) alive.
  // REQUIRES: called once.
  void start(std::size_t extent_count, std::shared_ptr<void> owner);

  // Extent e, begun in `slot`, has finished: returns the slot. With an error,
  // the job fails (fail(error)). An extent that already ended is not ended
  // again (only its error, if any, is recorded).
  void end_extent(std::size_t e, unsigned slot, std::exception_ptr error = nullptr);
  // Stops handing out slots; the first error is the job's error. Also after
  // `done` (a save's fdatasync stage): the error is still recorded.
  void fail(std::exception_ptr error);
  bool stopping() const;
  // The first error, or nullptr.
  std::exception_ptr error() const;

  // Runs step() for extent e now; if it throws, e ends with that error.
  template <class F>
  void run(std::size_t e, unsigned slot, F&& step) noexcept {
    try {
      std::forward<F>(step)();
    } catch (...) {
      end_extent(e, slot, std::current_exception());
    }
  }
  // Runs step() later on the executor, as run() does.
  template <class F>
  void post(std::size_t e, unsigned slot, F step) {
    boost::asio::post(executor_, [keep = owner_.lock(), this, e, slot,
                                  step = std::move(step)]() mutable { run(e, slot, step); });
  }
  // Wraps the completion of an I/O operation of extent e (for UringQueue):
  // as run(), and a test-injected fault (io/io_fault_injection.hpp) throws
  // before `step` runs.
  template <class F>
  std::function<void(std::int64_t)> io_completion(std::size_t e, unsigned slot, F step) {
    return [keep = owner_.lock(), this, e, slot, step = std::move(step)](std::int64_t result) {
      run(e, slot, [&] {
        check_injected_io_fault();
        step(result);
      });
    };
  }
  // Wraps the completion of an I/O operation of no extent (a save's
  // fdatasync): if `step` (or an injected fault) throws, the job fails;
  // `then` runs afterwards in any case and must not throw.
  std::function<void(std::int64_t)> io_completion(std::function<void(std::int64_t)> step,
                                                  std::function<void()> then);

 private:
  static constexpr std::size_t kNoExtent = static_cast<std::size_t>(-1);

  void acquire_next();
  void on_slot(unsigned slot);
  void begin_extent(std::size_t e, unsigned slot);
  // Posts `done` if the job has come to its end. REQUIRES: mu_ not held.
  void check_done();

  SlotSource& slots_;
  boost::asio::any_io_executor executor_;
  Hooks hooks_;
  std::weak_ptr<void> owner_;  // set by start()

  mutable std::mutex mu_;
  std::vector<std::size_t> extent_in_slot_;  // guarded by mu_; kNoExtent when not ours
  std::size_t count_ = 0;                    // guarded by mu_
  std::size_t next_ = 0;                     // guarded by mu_; next extent to take a slot
  std::size_t outstanding_ = 0;              // guarded by mu_; extents holding a slot
  bool started_ = false;                     // guarded by mu_
  bool acquiring_ = false;                   // guarded by mu_; a slot request is pending
  bool stopping_ = false;                    // guarded by mu_; only ever becomes true
  bool done_ = false;                        // guarded by mu_; `done` has been posted
  std::exception_ptr error_;                 // guarded by mu_; the first error
};

}  // namespace ringckpt::detail
