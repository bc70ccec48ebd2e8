// gil_release.hpp — releasing the GIL around ringckpt's work, safely at exit.
#pragma once

#include <Python.h>

namespace ringckpt::python {

// Releases the GIL for its scope, as py::gil_scoped_release does, except when
// the scope ends while the interpreter is finalizing: CPython 3.11 ends a
// thread that retakes the GIL then with pthread_exit from inside
// PyEval_RestoreThread, and that unwind through a noexcept destructor aborts
// the process. A (daemon) thread that comes back from ringckpt during
// finalization is parked instead, until the process exits. The destructor is
// noexcept(false) so that the forced unwind of a finalization that begins
// between the check and the restore passes through it.
class GilRelease {
 public:
  GilRelease() noexcept : state_(PyEval_SaveThread()) {}
  ~GilRelease() noexcept(false);
  GilRelease(const GilRelease&) = delete;
  GilRelease& operator=(const GilRelease&) = delete;

 private:
  PyThreadState* state_;
};

}  // namespace ringckpt::python
