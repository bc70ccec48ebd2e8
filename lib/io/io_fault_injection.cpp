// io_fault_injection.cpp — test-only faults in I/O completions.
#include "io/io_fault_injection.hpp"

#include <atomic>
#include <string>

#include "ringckpt/error.hpp"

namespace ringckpt::detail {
namespace {

// Completions left until the injected fault; 0: none armed.
std::atomic<std::uint64_t> countdown{0};

}  // namespace

void inject_io_completion_fault(std::uint64_t nth) noexcept {
  countdown.store(nth, std::memory_order_relaxed);
}

void check_injected_io_fault() {
  std::uint64_t left = countdown.load(std::memory_order_relaxed);
  while (left != 0) {
    if (countdown.compare_exchange_weak(left, left - 1, std::memory_order_relaxed)) {
      if (left == 1) {
        throw Error(ErrorCode::kIo, "io fault injection",
                    "an injected fault in an I/O completion");
      }
      return;
    }
  }
}

}  // namespace ringckpt::detail
