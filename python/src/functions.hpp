// functions.hpp — the module's functions: one-shot save and load (each with
// its own ring and io_uring), read_metadata and verify.
#pragma once

#include <pybind11/pybind11.h>

namespace ringckpt::python {

namespace py = pybind11;

void bind_functions(py::module_& module);

}  // namespace ringckpt::python
