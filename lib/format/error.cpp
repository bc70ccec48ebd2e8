#include "ringckpt/error.hpp"

#include <boost/system/system_error.hpp>

#include <cerrno>
#include <filesystem>
#include <new>
#include <stdexcept>
#include <system_error>

#include "format/error_translation.hpp"

namespace ringckpt {

std::string_view to_string(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::kInvalidArgument: return "invalid argument";
    case ErrorCode::kNotFound: return "not found";
    case ErrorCode::kAlreadyExists: return "already exists";
    case ErrorCode::kCorrupt: return "corrupt";
    case ErrorCode::kMismatch: return "mismatch";
    case ErrorCode::kIo: return "I/O error";
    case ErrorCode::kCancelled: return "cancelled";
  }
  return "error";
}

static std::string describe(const std::string& where, const std::string& message) {
  return where.empty() ? message : where + ": " + message;
}

Error::Error(ErrorCode code, std::string where, std::string message)
    : std::runtime_error(describe(where, message)),
      code_(code),
      where_(std::move(where)),
      message_(std::move(message)) {}

namespace detail {
namespace {

// The code of an operating-system error, as data_file's errors use them.
ErrorCode code_of_errno(int err) {
  switch (err) {
    case ENOENT: return ErrorCode::kNotFound;
    case EEXIST: return ErrorCode::kAlreadyExists;
    case ECANCELED: return ErrorCode::kCancelled;
    default: return ErrorCode::kIo;
  }
}

ErrorCode code_of(const std::error_code& ec) {
  const bool os = ec.category() == std::generic_category() || ec.category() == std::system_category();
  return os ? code_of_errno(ec.value()) : ErrorCode::kIo;
}

ErrorCode code_of(const boost::system::error_code& ec) {
  const bool os = ec.category() == boost::system::generic_category() ||
                  ec.category() == boost::system::system_category();
  return os ? code_of_errno(ec.value()) : ErrorCode::kIo;
}

}  // namespace

Error as_error(const std::exception_ptr& error, const std::string& where) {
  try {
    std::rethrow_exception(error);
  } catch (const Error& e) {
    return e;
  } catch (const std::bad_alloc& e) {
    return Error(ErrorCode::kIo, where, std::string("out of memory (") + e.what() + ")");
  } catch (const std::length_error& e) {
    return Error(ErrorCode::kIo, where, std::string("out of memory: a size too large (") +
                                            e.what() + ")");
  } catch (const std::filesystem::filesystem_error& e) {
    const std::string path = e.path1().empty() ? where : e.path1().string();
    return Error(code_of(e.code()), path, e.what());
  } catch (const std::system_error& e) {
    return Error(code_of(e.code()), where, e.what());
  } catch (const boost::system::system_error& e) {
    return Error(code_of(e.code()), where, e.what());
  } catch (const std::exception& e) {
    return Error(ErrorCode::kInvalidArgument, where, e.what());
  } catch (...) {
    return Error(ErrorCode::kInvalidArgument, where, "unknown exception");
  }
}

std::exception_ptr as_error_ptr(const std::exception_ptr& error, const std::string& where) {
  if (!error) return error;
  try {
    return std::make_exception_ptr(as_error(error, where));
  } catch (...) {
    return std::current_exception();  // out of memory copying the strings
  }
}

void rethrow_as_error(const std::string& where) { throw as_error(std::current_exception(), where); }

}  // namespace detail
}  // namespace ringckpt
