// ringckpt/error.hpp — the one error type: what went wrong, and where.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace ringckpt {

// What kind of fault an Error reports. Callers branch on the code; people read
// the message.
enum class ErrorCode {
  kInvalidArgument,  // the caller asked for something that cannot be done
  kNotFound,         // a file, directory or state-dict key is missing
  kAlreadyExists,    // a checkpoint is already there and overwrite was not asked
  kCorrupt,          // bytes on disk disagree with their checksum or header
  kMismatch,         // the checkpoint holds a key with another shape or dtype
  kIo,               // the operating system refused a read, write or sync
  kCancelled,        // the operation was cancelled before it committed
};

std::string_view to_string(ErrorCode code) noexcept;

// Every failure in ringckpt is thrown (or delivered through a future) as an
// Error. what() reads "<where>: <message>", where <where> is the file or key at
// fault; where() and message() give the two parts apart.
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, std::string where, std::string message);

  ErrorCode code() const noexcept { return code_; }
  const std::string& where() const noexcept { return where_; }
  const std::string& message() const noexcept { return message_; }

 private:
  ErrorCode code_;
  std::string where_;
  std::string message_;
};

}  // namespace ringckpt
