// tools/scratch_directory.cpp — a fresh temporary directory on a real disk.
#include "scratch_directory.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <system_error>

#include "ringckpt/error.hpp"

namespace ringckpt::tools {

std::filesystem::path make_scratch_directory(std::string_view prefix) {
  std::filesystem::path parent = "/var/tmp";
  std::error_code ec;
  if (!std::filesystem::is_directory(parent, ec)) parent = std::filesystem::temp_directory_path();
  std::string pattern = (parent / (std::string(prefix) + "-XXXXXX")).string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    throw Error(ErrorCode::kIo, pattern,
                std::string("cannot create a temporary directory: ") + std::strerror(errno));
  }
  return pattern;
}

}  // namespace ringckpt::tools
