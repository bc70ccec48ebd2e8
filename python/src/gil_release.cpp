#include "gil_release.hpp"

#include <chrono>
#include <thread>

#include "python_errors.hpp"

namespace ringckpt::python {

GilRelease::~GilRelease() noexcept(false) {
  if (interpreter_finalizing()) {
    for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
  }
  PyEval_RestoreThread(state_);
}

}  // namespace ringckpt::python
