// tools/bench_options.hpp — the command line of `ringckpt bench`.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "synthetic.hpp"

namespace ringckpt::tools::bench {

inline constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;

// A bad command line: said in one line, exit 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct BenchOptions {
  ModelKind model = ModelKind::transformer;
  std::string model_name = "transformer";
  std::uint64_t size = 256 * kMiB;
  unsigned repeat = 3;
  std::optional<std::filesystem::path> dir;
  std::uint64_t extent_size = 8 * kMiB;  // a positive multiple of kAlignment, <= 1 GiB
  unsigned queue_depth = 16;
  bool json = false;
  bool keep = false;
  std::uint64_t seed = 1;
  // --train
  std::uint64_t train_steps = 0;  // 0: no training simulation
  double step_ms = 100;
  std::uint64_t every = 10;
  // --ranks (under mpirun; 0: not this run)
  unsigned ranks = 0;
  bool device_only = false;  // --device-only: the N writers alone (a baseline for other tools)
  // --plan-ranks (0: not this run)
  unsigned plan_ranks = 0;
  unsigned entries = 1000;
};

// Parses the arguments after `bench` (Boost.Program_options). Returns nullopt
// after --help (printed on stdout); a bad argument is UsageError.
std::optional<BenchOptions> parse_options(const std::vector<std::string>& args);

}  // namespace ringckpt::tools::bench
