// tools/scratch_directory.hpp — where the tools write when not told where.
#pragma once

#include <filesystem>
#include <string_view>

namespace ringckpt::tools {

// A fresh mkdtemp directory named `prefix`-XXXXXX under /var/tmp if it exists
// (usually a real disk, where O_DIRECT works), else under the system
// temporary directory. Error(kIo, pattern) if it cannot be made.
std::filesystem::path make_scratch_directory(std::string_view prefix);

}  // namespace ringckpt::tools
