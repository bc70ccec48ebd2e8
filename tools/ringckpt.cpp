// ringckpt.cpp — the `ringckpt` command: finds the subcommand and runs it.
//
// Exit status, for every subcommand: 0 done, 1 the checked thing does not
// hold (or a ringckpt::Error), 2 a bad argument (one line on stderr).

#include <cstdio>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "commands.hpp"
#include "ringckpt/error.hpp"

namespace po = boost::program_options;

namespace ringckpt::tools {
namespace {

struct Subcommand {
  const char* name;
  const char* summary;
  int (*run)(const std::vector<std::string>& args);
};

constexpr Subcommand kSubcommands[] = {
    {"inspect", "list what a checkpoint holds: entries, dtypes, shapes, files, totals",
     run_inspect},
    {"verify", "re-read every extent of a checkpoint and check its XXH3 checksum", run_verify},
    {"demo", "save, verify and load a synthetic transformer checkpoint, and time it", run_demo},
    {"bench", "measure save and load throughput against the raw device and write()", run_bench},
};

void print_usage(std::ostream& out, const po::options_description& options) {
  out << "usage: ringckpt [--help] SUBCOMMAND [ARGS...]\n\n"
         "Saves and loads deep-learning checkpoints through io_uring, every extent\n"
         "XXH3-verified.\n\n"
         "Subcommands:\n";
  for (const auto& sub : kSubcommands) {
    char line[160];
    std::snprintf(line, sizeof line, "  %-9s %s\n", sub.name, sub.summary);
    out << line;
  }
  out << "\nRun 'ringckpt SUBCOMMAND --help' for a subcommand's options.\n\n" << options;
}

int run_main(int argc, char** argv) {
  po::options_description options("Options");
  options.add_options()("help,h", "print this help and exit");

  const std::vector<std::string> args(argv + 1, argv + argc);
  // The first word that is not an option names the subcommand; everything
  // after it belongs to the subcommand and is parsed there.
  if (!args.empty() && !args[0].empty() && args[0][0] != '-') {
    std::string name = args[0];
    std::vector<std::string> rest(args.begin() + 1, args.end());
    if (name == "help") {  // `ringckpt help [SUBCOMMAND]`
      if (rest.empty()) {
        print_usage(std::cout, options);
        return 0;
      }
      name = rest[0];
      rest = {"--help"};
    }
    for (const auto& sub : kSubcommands) {
      if (name == sub.name) return sub.run(rest);
    }
    std::cerr << "ringckpt: unknown subcommand '" << name
              << "' (expected inspect, verify, demo or bench; see ringckpt --help)\n";
    return 2;
  }

  po::variables_map values;
  try {
    po::store(po::command_line_parser(args).options(options).run(), values);
    po::notify(values);
  } catch (const po::error& e) {
    std::cerr << "ringckpt: " << e.what() << " (see ringckpt --help)\n";
    return 2;
  }
  if (values.count("help")) {
    print_usage(std::cout, options);
    return 0;
  }
  std::cerr << "ringckpt: missing subcommand (expected inspect, verify, demo or bench; "
               "see ringckpt --help)\n";
  return 2;
}

}  // namespace

std::optional<int> parse_command_line(const std::string& command, const std::string& usage,
                                      const std::string& description,
                                      const po::options_description& options,
                                      const po::options_description& hidden,
                                      const po::positional_options_description& positional,
                                      const std::vector<std::string>& args,
                                      po::variables_map& values) {
  po::options_description visible("Options");
  for (const auto& option : options.options()) visible.add(option);  // one group, no blank line
  visible.add_options()("help,h", "print this help and exit");
  po::options_description all;
  all.add(visible).add(hidden);
  try {
    po::store(po::command_line_parser(args).options(all).positional(positional).run(), values);
    if (values.count("help")) {
      std::cout << "usage: ringckpt " << command << ' ' << usage << "\n\n"
                << description << "\n\n"
                << visible;
      return 0;
    }
    po::notify(values);
  } catch (const po::error& e) {
    return bad_argument(command, std::string(e.what()) + " (see ringckpt " + command + " --help)");
  }
  return std::nullopt;
}

int bad_argument(const std::string& command, const std::string& message) {
  std::cerr << "ringckpt " << command << ": " << message << '\n';
  return 2;
}

}  // namespace ringckpt::tools

int main(int argc, char** argv) {
  try {
    return ringckpt::tools::run_main(argc, argv);
  } catch (const ringckpt::Error& e) {
    std::cerr << "ringckpt: " << e.what() << '\n';
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "ringckpt: " << e.what() << '\n';
    return 1;
  }
}
