// python_errors.hpp — ringckpt::Error as Python sees it: the pure Python class
// ringckpt.errors.Error, raised with the code, where and message of the C++ one.
#pragma once

#include <pybind11/pybind11.h>

#include <exception>
#include <string>

#include "ringckpt/error.hpp"

namespace ringckpt::python {

namespace py = pybind11;

// Imports ringckpt.errors.Error (held for the life of the process: it must
// outlive every completion that may still raise it) and registers the
// translator that raises it for every ringckpt::Error and for the failures the
// library itself translates (bad_alloc, file-system and system errors).
// REQUIRES: the GIL is held; called once, at module init.
void init_errors(py::module_& module);

// The Python name of `code`: "invalid_argument", "not_found", ...
const char* code_name(ErrorCode code) noexcept;

// The ringckpt::Error a ringckpt.errors.Error object stands for (an unknown
// code reads as kIo). REQUIRES: the GIL is held.
Error error_from_object(py::handle error);

// A ringckpt.errors.Error object (not raised) for `error`.
// REQUIRES: the GIL is held.
py::object error_object(const Error& error);

// The same for any exception, translated as the library translates it
// (detail::as_error); `where` names the directory when the exception does not.
// REQUIRES: the GIL is held; error is not null.
py::object error_object(const std::exception_ptr& error, const std::string& where);

// True once the interpreter is finalizing (or gone): no Python code may run and
// the GIL must not be taken from a thread Python does not know.
bool interpreter_finalizing() noexcept;

}  // namespace ringckpt::python
