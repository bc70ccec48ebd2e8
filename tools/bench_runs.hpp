// tools/bench_runs.hpp — the two runs of `ringckpt bench`. Each returns the
// exit status: 0 when every checkpoint verified and loaded back intact, 1 if
// not; a bad setting is UsageError, any other failure an exception.
#pragma once

#include "bench_options.hpp"

namespace ringckpt::tools::bench {

// The phases, interleaved run by run (device, naive, memcpy, sync, snapshot,
// lazy, bounded, device-read, load; then again), then the report.
int run_main_bench(const BenchOptions& o);

// --train: a training-loop simulation with a lazy save every K steps.
int run_train(const BenchOptions& o);

// --ranks N, under mpirun: every rank saves its shard of one model into one
// checkpoint (sync and lazy) against N writers of the same bytes; rank 0
// reports.
int run_ranks_bench(const BenchOptions& o);

// --plan-ranks R: planning only, ranks as threads.
int run_plan_bench(const BenchOptions& o);

}  // namespace ringckpt::tools::bench
