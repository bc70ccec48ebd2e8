// py_checkpointer.hpp — ringckpt::Checkpointer as the Python class
// ringckpt._core.Checkpointer, and its SaveHandle.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>
#include <optional>
#include <string>

#include "ringckpt/checkpointer.hpp"
#include "state_items.hpp"

namespace ringckpt::python {

namespace py = pybind11;

class PySaveHandle {
 public:
  explicit PySaveHandle(SaveHandle handle) : handle_(std::move(handle)) {}
  // Stops the save unless committed (ringckpt::SaveHandle::cancel).
  void cancel() { handle_.cancel(); }

 private:
  SaveHandle handle_;
};

// Owns a C++ Checkpointer until close(). Every method runs with the GIL held
// and releases it while ringckpt works; a method that needs the Checkpointer
// copies the shared_ptr first, so that a close() from another thread during a
// blocking save or load defers the destruction to that call's end.
class PyCheckpointer {
 public:
  // Constructs the C++ Checkpointer with the GIL released (it pre-faults the
  // ring) and registers itself for the close at interpreter exit.
  // `coordinator`: None (this process alone) or an object with the methods
  // PythonCoordinator calls (a collective then: every rank constructs).
  PyCheckpointer(const CheckpointerOptions& options, const py::object& coordinator);
  // What close() does.
  ~PyCheckpointer();
  PyCheckpointer(const PyCheckpointer&) = delete;
  PyCheckpointer& operator=(const PyCheckpointer&) = delete;

  // `refusal`: None, or a ringckpt.Error this rank met before it could take
  // part (see refusing_planners.hpp): the save or load then fails with it on
  // every rank.
  PySaveHandle async_save(py::object items, const std::string& dir, py::object on_staged,
                          py::object on_committed, const std::optional<std::string>& mode,
                          bool overwrite, const py::object& refusal);
  void save(StateItems& items, const std::string& dir, const std::optional<std::string>& mode,
            bool overwrite, const py::object& refusal);
  void load(StateItems& items, const std::string& dir, const py::object& refusal);
  py::dict report() const;
  // {"cold": saves planned from scratch, "cached": saves that reused the plan}.
  py::dict plan_cache() const;

  // Destroys the C++ Checkpointer: saves not yet committed are cancelled, its
  // threads stopped (see checkpointer_teardown.hpp for where). Idempotent.
  void close();

  // The C++ Checkpointer, leaving this one closed. REQUIRES: the GIL is held.
  std::shared_ptr<Checkpointer> take() noexcept { return std::move(impl_); }

 private:
  // The Checkpointer; throws Error(kInvalidArgument, "Checkpointer") once closed.
  std::shared_ptr<Checkpointer> open() const;

  // Null once closed; guarded by the GIL. Its deleter is destroy_checkpointer.
  std::shared_ptr<Checkpointer> impl_;
};

void bind_checkpointer(py::module_& module);

}  // namespace ringckpt::python
