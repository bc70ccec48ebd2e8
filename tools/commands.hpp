// tools/commands.hpp — the subcommands of the ringckpt tool. Each parses its
// own arguments (Boost.Program_options) and returns the exit status: 0 done,
// 1 the checked thing does not hold, 2 a bad argument (one-line error).
#pragma once

#include <string>
#include <vector>

namespace ringckpt::tools {

int run_inspect(const std::vector<std::string>& args);
int run_verify(const std::vector<std::string>& args);
int run_demo(const std::vector<std::string>& args);
int run_bench(const std::vector<std::string>& args);

}  // namespace ringckpt::tools
