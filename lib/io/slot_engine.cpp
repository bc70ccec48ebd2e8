// slot_engine.cpp — the one loop that hands ring slots to a job's extents.
#include "io/slot_engine.hpp"

#include "io/io_fault_injection.hpp"

namespace ringckpt::detail {

SlotEngine::SlotEngine(SlotSource& slots, boost::asio::any_io_executor executor, Hooks hooks)
    : slots_(slots),
      executor_(std::move(executor)),
      hooks_(std::move(hooks)),
      extent_in_slot_(slots.slot_count(), kNoExtent) {}

void SlotEngine::start(std::size_t extent_count, std::shared_ptr<void> owner) {
  owner_ = owner;
  {
    std::lock_guard lock(mu_);
    count_ = extent_count;
    started_ = true;
  }
  acquire_next();
}

void SlotEngine::acquire_next() {
  bool more;
  {
    std::lock_guard lock(mu_);
    more = !stopping_ && next_ < count_;
    acquiring_ = more;
  }
  if (!more) {
    check_done();
    return;
  }
  slots_.async_acquire([keep = owner_.lock(), this](unsigned slot) { on_slot(slot); });
}

// Runs on whichever thread freed the slot: bookkeeping only, work is posted.
void SlotEngine::on_slot(unsigned slot) {
  std::size_t e = kNoExtent;
  {
    std::lock_guard lock(mu_);
    acquiring_ = false;
    if (!stopping_) {
      e = next_++;
      ++outstanding_;
      extent_in_slot_[slot] = e;
    }
  }
  if (e == kNoExtent) {
    slots_.release(slot);
    check_done();
    return;
  }
  try {
    boost::asio::post(executor_, [keep = owner_.lock(), this, e, slot] { begin_extent(e, slot); });
    boost::asio::post(executor_, [keep = owner_.lock(), this] { acquire_next(); });
  } catch (...) {  // no memory for the task: this thread must not throw
    end_extent(e, slot, std::current_exception());
  }
}

void SlotEngine::begin_extent(std::size_t e, unsigned slot) {
  if (stopping()) {
    end_extent(e, slot);
    return;
  }
  run(e, slot, [&] { hooks_.start(e, slot); });
}

void SlotEngine::end_extent(std::size_t e, unsigned slot, std::exception_ptr error) {
  if (error) fail(std::move(error));
  {
    std::lock_guard lock(mu_);
    if (slot >= extent_in_slot_.size() || extent_in_slot_[slot] != e) return;  // ended already
    extent_in_slot_[slot] = kNoExtent;
    --outstanding_;
  }
  slots_.release(slot);
  check_done();
}

void SlotEngine::fail(std::exception_ptr error) {
  bool first;
  {
    std::lock_guard lock(mu_);
    if (!error_) error_ = std::move(error);
    first = !stopping_;
    stopping_ = true;
  }
  if (first && hooks_.stopping) hooks_.stopping();
  check_done();
}

bool SlotEngine::stopping() const {
  std::lock_guard lock(mu_);
  return stopping_;
}

std::exception_ptr SlotEngine::error() const {
  std::lock_guard lock(mu_);
  return error_;
}

void SlotEngine::check_done() {
  std::exception_ptr error;
  {
    std::lock_guard lock(mu_);
    if (!started_ || done_ || acquiring_ || outstanding_ > 0) return;
    if (!stopping_ && next_ < count_) return;  // the acquire chain goes on
    done_ = true;
    error = error_;
  }
  boost::asio::post(executor_, [keep = owner_.lock(), this, error] { hooks_.done(error); });
}

std::function<void(std::int64_t)> SlotEngine::io_completion(
    std::function<void(std::int64_t)> step, std::function<void()> then) {
  return [keep = owner_.lock(), this, step = std::move(step),
          then = std::move(then)](std::int64_t result) {
    try {
      check_injected_io_fault();
      step(result);
    } catch (...) {
      fail(std::current_exception());
    }
    then();
  };
}

}  // namespace ringckpt::detail
