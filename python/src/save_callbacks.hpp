// save_callbacks.hpp — the Python side of one async_save: its two callbacks
// and the StateItems it reads, kept alive until both completions have run.
#pragma once

#include <pybind11/pybind11.h>

#include <exception>
#include <memory>
#include <string>

#include "ringckpt/checkpointer.hpp"

namespace ringckpt::python {

namespace py = pybind11;

class SaveCallbacks {
 public:
  enum Completion { kStaged = 0, kCommitted = 1 };

  // on_staged / on_committed: callables of one argument, or None.
  // REQUIRES: the GIL is held.
  SaveCallbacks(py::object items, py::object on_staged, py::object on_committed,
                std::string dir);
  // Drops what is still held: with the GIL taken, inside a CallbackScope (the
  // last reference to a Checkpointer may go with them), or leaked once the
  // interpreter is finalizing.
  ~SaveCallbacks();
  SaveCallbacks(const SaveCallbacks&) = delete;
  SaveCallbacks& operator=(const SaveCallbacks&) = delete;

  // Calls the callback of `which` once, with None or a ringckpt.errors.Error,
  // holding the GIL inside a CallbackScope; a callback that raises is reported
  // through sys.unraisablehook. The items are dropped after the second
  // completion. Skipped once the interpreter is finalizing.
  // REQUIRES: the GIL is not held by this thread.
  void deliver(Completion which, const std::exception_ptr& error) noexcept;

  // Registers deliver for both completions of `handle` (plain callbacks: they
  // run on the Checkpointer's completion thread, never inside this call).
  static void attach(const std::shared_ptr<SaveCallbacks>& callbacks, SaveHandle& handle);

 private:
  // Guarded by the GIL.
  py::object items_;
  py::object callbacks_[2];
  int pending_ = 2;
  const std::string dir_;  // names the checkpoint in a translated error
};

}  // namespace ringckpt::python
