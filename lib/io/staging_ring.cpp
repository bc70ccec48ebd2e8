// staging_ring.cpp — the ring of aligned buffers that staging fills and the
// I/O thread drains.
#include "io/staging_ring.hpp"

#include <limits>
#include <string>
#include <utility>

#include "ringckpt/error.hpp"
#include "ringckpt/io_options.hpp"

namespace ringckpt {
namespace {

std::size_t checked_total(std::size_t slot_bytes, std::size_t slot_count) {
  if (slot_bytes == 0 || slot_bytes % kAlignment != 0)
    throw Error(ErrorCode::kInvalidArgument, "staging ring",
                "slot size " + std::to_string(slot_bytes) + " is not a positive multiple of " +
                    std::to_string(kAlignment));
  if (slot_count == 0)
    throw Error(ErrorCode::kInvalidArgument, "staging ring", "slot count must be positive");
  if (slot_count > std::numeric_limits<unsigned>::max() ||
      slot_bytes > std::numeric_limits<std::size_t>::max() / slot_count)
    throw Error(ErrorCode::kInvalidArgument, "staging ring",
                std::to_string(slot_count) + " slots of " + std::to_string(slot_bytes) +
                    " bytes is too much memory");
  return slot_bytes * slot_count;
}

}  // namespace

StagingRing::StagingRing(std::size_t slot_bytes, std::size_t slot_count)
    : memory_(checked_total(slot_bytes, slot_count), "staging ring"),
      slot_bytes_(slot_bytes),
      slot_count_(slot_count) {
  // free_ is a stack: slot 0 is handed out first.
  free_.reserve(slot_count);
  for (std::size_t i = slot_count; i-- > 0;) free_.push_back(static_cast<unsigned>(i));
}

std::vector<iovec> StagingRing::iovecs() const {
  std::vector<iovec> v(slot_count_);
  for (std::size_t i = 0; i < slot_count_; ++i)
    v[i] = iovec{slot_data(static_cast<unsigned>(i)), slot_bytes_};
  return v;
}

void StagingRing::async_acquire(Handler handler) {
  unsigned slot;
  {
    std::lock_guard lock(mu_);
    if (free_.empty()) {
      waiters_.push_back(std::move(handler));
      return;
    }
    slot = free_.back();
    free_.pop_back();
  }
  handler(slot);  // outside the lock: the handler may acquire or release
}

void StagingRing::release(unsigned slot) {
  Handler next;
  {
    std::lock_guard lock(mu_);
    if (waiters_.empty()) {
      free_.push_back(slot);
      return;
    }
    // Invariant: waiters exist only while no slot is free, so the released
    // slot passes straight to the oldest waiter.
    next = std::move(waiters_.front());
    waiters_.pop_front();
  }
  next(slot);
}

std::size_t StagingRing::free_count() const {
  std::lock_guard lock(mu_);
  return free_.size();
}

}  // namespace ringckpt
