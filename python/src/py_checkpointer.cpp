#include "py_checkpointer.hpp"

#include <pybind11/stl.h>

#include <utility>

#include "checkpointer_teardown.hpp"
#include "gil_release.hpp"
#include "io_options_args.hpp"
#include "py_coordinator.hpp"
#include "python_errors.hpp"
#include "refusing_planners.hpp"
#include "ringckpt/error.hpp"
#include "save_callbacks.hpp"

namespace ringckpt::python {

namespace {

// Runs f with the GIL released and drops `checkpointer` before taking it back:
// if a concurrent close() left this the last reference, ~Checkpointer must not
// run with the GIL held.
template <typename F>
decltype(auto) without_gil(std::shared_ptr<Checkpointer> checkpointer, F&& f) {
  GilRelease release;
  struct Drop {
    std::shared_ptr<Checkpointer>& held;
    ~Drop() { held.reset(); }
  } drop{checkpointer};
  return f(*checkpointer);
}

void check_callable(const py::object& callback, const char* name) {
  if (!callback.is_none() && !PyCallable_Check(callback.ptr())) {
    throw Error(ErrorCode::kInvalidArgument, name, "must be callable or None");
  }
}

}  // namespace

PyCheckpointer::PyCheckpointer(const CheckpointerOptions& options,
                               const py::object& coordinator) {
  if (coordinator.is_none()) {
    GilRelease release;
    impl_ = std::shared_ptr<Checkpointer>(new Checkpointer(options), destroy_checkpointer);
  } else {
    PythonCoordinator ranks(coordinator);
    GilRelease release;  // the constructor's collectives take it back, call by call
    impl_ = std::shared_ptr<Checkpointer>(new Checkpointer(options, ranks), destroy_checkpointer);
  }
  register_checkpointer(this);
}

PyCheckpointer::~PyCheckpointer() { close(); }

void PyCheckpointer::close() {
  unregister_checkpointer(this);
  std::shared_ptr<Checkpointer> closing = std::move(impl_);
  closing.reset();  // destroy_checkpointer releases the GIL, or hands it to a thread
}

std::shared_ptr<Checkpointer> PyCheckpointer::open() const {
  if (!impl_) throw Error(ErrorCode::kInvalidArgument, "Checkpointer", "the checkpointer is closed");
  return impl_;
}

PySaveHandle PyCheckpointer::async_save(py::object items, const std::string& dir,
                                        py::object on_staged, py::object on_committed,
                                        const std::optional<std::string>& mode, bool overwrite,
                                        const py::object& refusal) {
  StateItems& state = items.cast<StateItems&>();
  check_callable(on_staged, "on_staged");
  check_callable(on_committed, "on_committed");
  AsyncSaveOptions options;
  options.mode = optional_staging_mode_from(mode);
  options.overwrite = overwrite;
  std::shared_ptr<RefusingSavePlanner> refusing;
  if (!refusal.is_none()) {
    refusing = std::make_shared<RefusingSavePlanner>(error_from_object(refusal));
    options.planner = refusing.get();
  }
  auto callbacks = std::make_shared<SaveCallbacks>(std::move(items), std::move(on_staged),
                                                   std::move(on_committed), dir);
  SaveHandle handle = without_gil(open(), [&](Checkpointer& checkpointer) {
    return checkpointer.async_save(state.state_dict(), dir, options);
  });
  SaveCallbacks::attach(callbacks, handle);
  // The planner must outlive the save: the committed completion is its end.
  if (refusing) handle.async_wait_committed([refusing](std::exception_ptr) {});
  return PySaveHandle(std::move(handle));
}

void PyCheckpointer::save(StateItems& items, const std::string& dir,
                          const std::optional<std::string>& mode, bool overwrite,
                          const py::object& refusal) {
  AsyncSaveOptions options;
  options.mode = optional_staging_mode_from(mode);
  options.overwrite = overwrite;
  std::optional<RefusingSavePlanner> refusing;
  if (!refusal.is_none()) options.planner = &refusing.emplace(error_from_object(refusal));
  without_gil(open(), [&](Checkpointer& checkpointer) {
    checkpointer.save(items.state_dict(), dir, options);
  });
}

void PyCheckpointer::load(StateItems& items, const std::string& dir, const py::object& refusal) {
  std::optional<RefusingLoadPlanner> refusing;
  LoadPlanner* planner = nullptr;
  if (!refusal.is_none()) planner = &refusing.emplace(error_from_object(refusal));
  without_gil(open(), [&](Checkpointer& checkpointer) {
    checkpointer.load(items.state_dict(), dir, planner);
  });
}

py::dict PyCheckpointer::plan_cache() const {
  const PlanCacheReport r = open()->plan_cache();
  py::dict out;
  out["cold"] = r.cold;
  out["cached"] = r.cached;
  return out;
}

py::dict PyCheckpointer::report() const {
  IoReport io = open()->report();
  py::dict out;
  out["direct_io"] = io.direct_io;
  out["registered_buffers"] = io.registered_buffers;
  out["notes"] = py::cast(io.notes);
  return out;
}

void bind_checkpointer(py::module_& module) {
  py::class_<PySaveHandle>(module, "SaveHandle", "One save in flight.")
      .def("cancel", &PySaveHandle::cancel, py::call_guard<GilRelease>());

  py::class_<PyCheckpointer>(module, "Checkpointer",
                             "The long-lived checkpointer: a staging ring, io_uring and threads.")
      .def(py::init([](const py::kwargs& keywords) {
             py::dict rest(keywords);  // a copy: mode is not an IoOptions keyword
             CheckpointerOptions options;
             if (rest.contains("mode")) {
               py::object mode = rest.attr("pop")("mode");
               if (!py::isinstance<py::str>(mode)) {
                 throw Error(ErrorCode::kInvalidArgument, "mode", "must be a str");
               }
               options.default_mode = staging_mode_from(mode.cast<std::string>());
             }
             py::object coordinator = py::none();
             if (rest.contains("coordinator")) coordinator = rest.attr("pop")("coordinator");
             options.io = io_options_from(py::kwargs(rest));
             return std::make_unique<PyCheckpointer>(options, coordinator);
           }),
           "Checkpointer(*, ring_bytes=256<<20, extent_size=8<<20, queue_depth=16, "
           "staging_threads=2, direct_io=True, register_buffers=True, max_file_bytes=0, "
           "mode='lazy')")
      .def("async_save", &PyCheckpointer::async_save, py::arg("items"), py::arg("dir"),
           py::arg("on_staged"), py::arg("on_committed"), py::kw_only(),
           py::arg("mode") = py::none(), py::arg("overwrite") = false,
           py::arg("refusal") = py::none())
      .def("save", &PyCheckpointer::save, py::arg("items"), py::arg("dir"), py::kw_only(),
           py::arg("mode") = py::none(), py::arg("overwrite") = false,
           py::arg("refusal") = py::none())
      .def("load", &PyCheckpointer::load, py::arg("items"), py::arg("dir"), py::kw_only(),
           py::arg("refusal") = py::none())
      .def("report", &PyCheckpointer::report)
      .def("plan_cache", &PyCheckpointer::plan_cache)
      .def("close", &PyCheckpointer::close)
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PyCheckpointer& self, const py::args&) { self.close(); });
}

}  // namespace ringckpt::python
