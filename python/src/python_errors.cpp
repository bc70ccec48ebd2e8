#include "python_errors.hpp"

#include <boost/system/system_error.hpp>

#include <filesystem>
#include <new>
#include <stdexcept>
#include <system_error>

#include "format/error_translation.hpp"

namespace ringckpt::python {

namespace {

// ringckpt.errors.Error. A strong reference deliberately never released: a
// completion thread may build an Error object until the interpreter finalizes.
// Written once at module init, with the GIL held; read with the GIL held.
PyObject* g_error_class = nullptr;

void raise(const Error& error) {
  py::object value = error_object(error);
  PyErr_SetObject(g_error_class, value.ptr());
}

}  // namespace

const char* code_name(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::kInvalidArgument: return "invalid_argument";
    case ErrorCode::kNotFound: return "not_found";
    case ErrorCode::kAlreadyExists: return "already_exists";
    case ErrorCode::kCorrupt: return "corrupt";
    case ErrorCode::kMismatch: return "mismatch";
    case ErrorCode::kIo: return "io";
    case ErrorCode::kCancelled: return "cancelled";
  }
  return "io";
}

Error error_from_object(py::handle error) {
  const auto name = error.attr("code").cast<std::string>();
  ErrorCode code = ErrorCode::kIo;
  for (ErrorCode c : {ErrorCode::kInvalidArgument, ErrorCode::kNotFound,
                      ErrorCode::kAlreadyExists, ErrorCode::kCorrupt, ErrorCode::kMismatch,
                      ErrorCode::kIo, ErrorCode::kCancelled}) {
    if (name == code_name(c)) code = c;
  }
  return Error(code, error.attr("where").cast<std::string>(),
               error.attr("message").cast<std::string>());
}

py::object error_object(const Error& error) {
  py::handle cls(g_error_class);
  return cls(code_name(error.code()), error.where(), error.message());
}

py::object error_object(const std::exception_ptr& error, const std::string& where) {
  return error_object(detail::as_error(error, where));
}

bool interpreter_finalizing() noexcept {
  if (!Py_IsInitialized()) return true;
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing() != 0;
#else
  return _Py_IsFinalizing() != 0;
#endif
}

void init_errors(py::module_& module) {
  py::object cls = py::module_::import("ringckpt.errors").attr("Error");
  g_error_class = cls.release().ptr();
  module.attr("Error") = py::handle(g_error_class);

  // Only the exceptions the library itself turns into an Error are caught
  // here; pybind11's own (error_already_set, cast errors, ...) and any other
  // are rethrown to the translators after this one.
  py::register_exception_translator([](std::exception_ptr thrown) {
    try {
      if (thrown) std::rethrow_exception(thrown);
    } catch (const Error& error) {
      raise(error);
    } catch (const std::bad_alloc&) {
      raise(detail::as_error(std::current_exception(), ""));
    } catch (const std::length_error&) {
      raise(detail::as_error(std::current_exception(), ""));
    } catch (const std::filesystem::filesystem_error&) {
      raise(detail::as_error(std::current_exception(), ""));
    } catch (const std::system_error&) {
      raise(detail::as_error(std::current_exception(), ""));
    } catch (const boost::system::system_error&) {
      raise(detail::as_error(std::current_exception(), ""));
    }
  });
}

}  // namespace ringckpt::python
