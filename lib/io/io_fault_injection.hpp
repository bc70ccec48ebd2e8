// lib/io/io_fault_injection.hpp — for tests only: make an I/O completion
// throw, to prove that an exception anywhere in the pipeline ends the job
// through its failure path.
//
// The faults count the completions that SlotEngine wraps (io_completion), in
// every job of the process. Disarmed, the check is one relaxed atomic load.
#pragma once

#include <cstdint>

namespace ringckpt::detail {

// The nth I/O completion from now on (1: the next one) throws
// Error(kIo, "io fault injection", ...) before its work runs. 0 disarms.
void inject_io_completion_fault(std::uint64_t nth) noexcept;
// Throws if an injected fault is due. Called by SlotEngine's wrappers.
void check_injected_io_fault();

}  // namespace ringckpt::detail
