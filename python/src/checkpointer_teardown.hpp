// checkpointer_teardown.hpp — destroying a C++ Checkpointer from Python without
// a deadlock between the GIL and ringckpt's threads.
//
// ~Checkpointer cancels what is in flight and waits for its threads and for
// every pending plain callback; those callbacks take the GIL. So:
//  - it never runs with the GIL held (destroy_checkpointer releases it);
//  - it never runs on a thread that is delivering a callback (it would wait
//    for itself): there it is handed to a detached thread;
//  - at interpreter exit every open Checkpointer is closed (an atexit function
//    registered at module init), and the detached destructions are awaited,
//    before finalization makes the GIL unavailable to ringckpt's threads.
#pragma once

#include <pybind11/pybind11.h>

#include "ringckpt/checkpointer.hpp"

namespace ringckpt::python {

namespace py = pybind11;

class PyCheckpointer;

// Marks the current thread as delivering a ringckpt callback for its scope.
// Nests.
class CallbackScope {
 public:
  CallbackScope() noexcept;
  ~CallbackScope();
  CallbackScope(const CallbackScope&) = delete;
  CallbackScope& operator=(const CallbackScope&) = delete;
};

// The deleter of every shared_ptr<Checkpointer> the bindings hold: runs
// ~Checkpointer with the GIL released, or on a detached thread when called
// inside a CallbackScope.
void destroy_checkpointer(Checkpointer* checkpointer) noexcept;

// The open PyCheckpointers, closed by close_all_checkpointers.
// REQUIRES (both): the GIL is held.
void register_checkpointer(PyCheckpointer* checkpointer);
void unregister_checkpointer(PyCheckpointer* checkpointer) noexcept;

// Closes every registered Checkpointer and waits for the detached destructions.
// REQUIRES: the GIL is held (it is released while waiting).
void close_all_checkpointers();

// In a child forked from a process with open Checkpointers: their threads
// were not forked, so joining them would fail. Each is leaked (never
// destroyed) and its PyCheckpointer left closed.
void forget_all_checkpointers() noexcept;

// Registers close_all_checkpointers with Python's atexit, and
// forget_all_checkpointers to run in a forked child (os.register_at_fork).
void install_atexit_close(py::module_& module);

}  // namespace ringckpt::python
