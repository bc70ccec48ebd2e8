// tools/cmd_bench.cpp — `ringckpt bench`: ringckpt's save and load paths
// measured against the limits of the same machine, in the same invocation
// (bench_phases.cpp), or a training-loop simulation with --train
// (bench_train.cpp).
#include <iostream>
#include <optional>

#include "bench_options.hpp"
#include "bench_runs.hpp"
#include "commands.hpp"

namespace ringckpt::tools {

int run_bench(const std::vector<std::string>& args) {
  try {
    std::optional<bench::BenchOptions> o = bench::parse_options(args);
    if (!o) return 0;
    if (o->train_steps > 0) return bench::run_train(*o);
    if (o->ranks > 0) return bench::run_ranks_bench(*o);
    if (o->plan_ranks > 0) return bench::run_plan_bench(*o);
    return bench::run_main_bench(*o);
  } catch (const bench::UsageError& e) {
    std::cerr << "ringckpt bench: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "ringckpt bench: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace ringckpt::tools
