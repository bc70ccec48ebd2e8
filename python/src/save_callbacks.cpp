#include "save_callbacks.hpp"

#include <utility>

#include "checkpointer_teardown.hpp"
#include "python_errors.hpp"

namespace ringckpt::python {

SaveCallbacks::SaveCallbacks(py::object items, py::object on_staged, py::object on_committed,
                             std::string dir)
    : items_(std::move(items)),
      callbacks_{std::move(on_staged), std::move(on_committed)},
      dir_(std::move(dir)) {}

SaveCallbacks::~SaveCallbacks() {
  // No other reference exists, so the fields may be read without the GIL.
  if (!items_ && !callbacks_[0] && !callbacks_[1]) return;
  if (interpreter_finalizing()) {
    // Python objects cannot be released now; the process is ending.
    (void)items_.release();
    (void)callbacks_[0].release();
    (void)callbacks_[1].release();
    return;
  }
  py::gil_scoped_acquire gil;
  CallbackScope scope;
  items_ = py::object();
  callbacks_[0] = py::object();
  callbacks_[1] = py::object();
}

void SaveCallbacks::deliver(Completion which, const std::exception_ptr& error) noexcept {
  if (interpreter_finalizing()) return;
  py::gil_scoped_acquire gil;
  // Declared before the objects below, so that it outlives their release:
  // dropping them may destroy a Checkpointer (see checkpointer_teardown.hpp).
  CallbackScope scope;
  py::object callback = std::move(callbacks_[which]);
  py::object items;
  if (--pending_ == 0) items = std::move(items_);
  if (!callback || callback.is_none()) return;
  try {
    py::object argument = error ? error_object(error, dir_) : py::none();
    callback(argument);
  } catch (py::error_already_set& raised) {
    raised.discard_as_unraisable(callback);
  } catch (const std::exception& failure) {
    PyErr_SetString(PyExc_RuntimeError, failure.what());
    PyErr_WriteUnraisable(callback.ptr());
  }
}

void SaveCallbacks::attach(const std::shared_ptr<SaveCallbacks>& callbacks, SaveHandle& handle) {
  handle.async_wait_staged(
      [callbacks](std::exception_ptr error) { callbacks->deliver(kStaged, error); });
  handle.async_wait_committed(
      [callbacks](std::exception_ptr error) { callbacks->deliver(kCommitted, error); });
}

}  // namespace ringckpt::python
