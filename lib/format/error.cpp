#include "ringckpt/error.hpp"

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

}  // namespace ringckpt
