// lib/io/staging_ring.hpp — the ring of aligned buffers that staging fills and
// the I/O thread drains.
//
// All slots are allocated (IoMemory: on huge pages, pre-faulted) and (by
// UringQueue) registered once, at construction; saves and loads only borrow
// them. A slot is either free or owned by exactly one borrower.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <vector>

#include "io/io_memory.hpp"
#include "io/slot_source.hpp"

namespace ringckpt {

class StagingRing final : public SlotSource {
 public:
  // slot_bytes: a multiple of kAlignment. Throws Error(kIo) if the memory
  // cannot be had.
  StagingRing(std::size_t slot_bytes, std::size_t slot_count);
  StagingRing(const StagingRing&) = delete;
  StagingRing& operator=(const StagingRing&) = delete;

  std::size_t slot_bytes() const noexcept { return slot_bytes_; }
  std::size_t slot_count() const noexcept override { return slot_count_; }
  std::size_t total_bytes() const noexcept { return slot_bytes_ * slot_count_; }
  std::byte* slot_data(unsigned slot) const noexcept {
    return memory_.data() + slot * slot_bytes_;
  }
  // One iovec per slot, in slot order (for io_uring_register_buffers).
  std::vector<iovec> iovecs() const;

  // Gives a free slot to `handler`: at once on the calling thread if one is
  // free, otherwise on the thread that next releases one. Waiters are served
  // first come, first served. The handler must be short (post real work).
  void async_acquire(Handler handler) override;
  // Returns a slot. REQUIRES: the caller owns it.
  void release(unsigned slot) override;
  std::size_t free_count() const;

 private:
  IoMemory memory_;  // the slots, back to back
  std::size_t slot_bytes_;
  std::size_t slot_count_;
  mutable std::mutex mu_;
  std::vector<unsigned> free_;     // guarded by mu_
  std::deque<Handler> waiters_;    // guarded by mu_; non-empty only if free_ is empty
};

}  // namespace ringckpt
