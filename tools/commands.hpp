// tools/commands.hpp — the subcommands of the ringckpt tool. Each parses its
// own arguments (Boost.Program_options) and returns the exit status: 0 done,
// 1 the checked thing does not hold, 2 a bad argument (one-line error).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

namespace ringckpt::tools {

int run_inspect(const std::vector<std::string>& args);
int run_verify(const std::vector<std::string>& args);
int run_demo(const std::vector<std::string>& args);
int run_bench(const std::vector<std::string>& args);

// Parses a subcommand's arguments with Boost.Program_options. `options` are
// the ones --help lists (--help itself is added); `hidden` holds the targets
// of `positional`. Returns nullopt to go on, else the exit status to return
// at once: 0 after --help (usage, description and options on stdout), 2
// after a bad argument (one line on stderr, from bad_argument).
std::optional<int> parse_command_line(
    const std::string& command, const std::string& usage, const std::string& description,
    const boost::program_options::options_description& options,
    const boost::program_options::options_description& hidden,
    const boost::program_options::positional_options_description& positional,
    const std::vector<std::string>& args, boost::program_options::variables_map& values);

// Prints "ringckpt <command>: <message>" on stderr and returns 2, the exit
// status of a bad argument.
int bad_argument(const std::string& command, const std::string& message);

}  // namespace ringckpt::tools
