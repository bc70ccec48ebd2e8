// error_translation.hpp — the one place a failure of any other type becomes
// the ringckpt::Error the caller receives: std::bad_alloc, a std::filesystem
// error, a std::system_error (thread creation), a Boost.System error (Boost.JSON,
// Boost.Asio), or anything else a planner or storage threw.
//
// Applied at the public entry points (ringckpt::save / load / read_metadata,
// verify, the Checkpointer's calls and completions, FileSystemWriter and
// FileSystemReader), where the checkpoint directory or rank is known, so that
// the message names it.
#pragma once

#include <exception>
#include <string>

#include "ringckpt/error.hpp"

namespace ringckpt::detail {

// The Error that `error` reaches the caller as. An Error is returned as it
// is; a std::filesystem error names its own path (else `where`); anything
// else names `where`. Out of memory (std::bad_alloc, std::length_error) is
// kIo; an operating-system error keeps its meaning (ENOENT is kNotFound,
// EEXIST kAlreadyExists, ECANCELED kCancelled, the rest kIo); any other
// exception is kInvalidArgument with its what().
// REQUIRES: error is not null.
Error as_error(const std::exception_ptr& error, const std::string& where);

// as_error as an exception_ptr, for completions; null stays null.
std::exception_ptr as_error_ptr(const std::exception_ptr& error, const std::string& where);

// Throws as_error(std::current_exception(), where).
// REQUIRES: called inside a catch handler.
[[noreturn]] void rethrow_as_error(const std::string& where);

// f(), with whatever it throws translated by as_error for `where`.
template <typename F>
decltype(auto) translating_errors(const std::string& where, F&& f) {
  try {
    return f();
  } catch (...) {
    rethrow_as_error(where);
  }
}

}  // namespace ringckpt::detail
