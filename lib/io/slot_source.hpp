// lib/io/slot_source.hpp — what a SlotEngine borrows slots from: a fixed set
// of numbered buffers, lent one at a time. StagingRing is the real one; tests
// use fakes.
#pragma once

#include <cstddef>
#include <functional>

namespace ringckpt {

class SlotSource {
 public:
  using Handler = std::function<void(unsigned slot)>;

  // Slots are numbered 0 .. slot_count() - 1.
  virtual std::size_t slot_count() const noexcept = 0;
  // Gives a free slot to `handler`: at once on the calling thread if one is
  // free, otherwise on the thread that next releases one. The handler must be
  // short (post real work) and must not throw.
  virtual void async_acquire(Handler handler) = 0;
  // Returns a slot. REQUIRES: the caller owns it.
  virtual void release(unsigned slot) = 0;

 protected:
  ~SlotSource() = default;
};

}  // namespace ringckpt
