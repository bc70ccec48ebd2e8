// global_plan.cpp — the coordinator's cold global save plan for R ranks x E
// entries (issue 10: 1,024 x 1,000 under 1 s, each rank's payload under
// 32 KB). Scenario in global_plan_scenario.hpp.
//
// Figures for 1,024 x 1,000 on the 2-core CI machine: at commit 8d3e76d, with
// JSON plans, 167 KB a rank, 4.8 s to encode and decode the local plans, 1.1 s
// for the global plan and 0.9 s for the metadata round trip; with wire
// version 1 (commit 7afb272), 32,030 bytes a rank and 1.26 s for the
// coordinator's part (create_global_plan 1.06 s); with wire version 2 and the
// global plan numbering fqns, 13,416 bytes a rank and 0.57-0.60 s.
//
// Prints each rank's encoded local plan size (median, max), then the median of
// --runs runs of the coordinator's part (decode the R local plans, create the
// global plan, prepare it for the FileSystemWriter, encode the R global
// plans), with each step's median. Planning only: no I/O, no threads.
// Exits 1 if a run does not plan what the scenario holds.
//
//   build/bench/global_plan [--ranks R] [--entries E] [--runs N]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "global_plan_scenario.hpp"

using namespace ringckpt;

namespace {

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int int_arg(int argc, char** argv, int& i) {
  if (i + 1 >= argc) {
    std::fprintf(stderr, "%s needs a value\n", argv[i]);
    std::exit(2);
  }
  const int v = std::atoi(argv[++i]);
  if (v <= 0) {
    std::fprintf(stderr, "%s must be a positive number\n", argv[i - 1]);
    std::exit(2);
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  int ranks = 1024, entries = 1000, runs = 5;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--ranks") ranks = int_arg(argc, argv, i);
    else if (a == "--entries") entries = int_arg(argc, argv, i);
    else if (a == "--runs") runs = int_arg(argc, argv, i);
    else {
      std::fprintf(stderr, "usage: %s [--ranks R] [--entries E] [--runs N]\n", argv[0]);
      return 2;
    }
  }

  const std::vector<std::string> locals = bench::encode_local_plans(ranks, entries);
  std::vector<double> sizes;
  for (const std::string& l : locals) sizes.push_back(static_cast<double>(l.size()));
  std::size_t sharded = 0;
  for (int e = 0; e < entries; ++e) sharded += bench::entry_is_sharded(e);
  std::printf("%d ranks x %d entries (%zu sharded over all ranks, %zu replicated)\n", ranks,
              entries, sharded, entries - sharded);
  std::printf("local plan payload: median %.0f bytes a rank, max %.0f\n", median_of(sizes),
              *std::max_element(sizes.begin(), sizes.end()));

  const std::size_t expected_items = sharded * static_cast<std::size_t>(ranks) + (entries - sharded);

  FileSystemWriter writer(std::filesystem::temp_directory_path() / "ringckpt-global-plan-bench");
  std::vector<double> total, decode, plan, prepare, encode;
  std::uint64_t global_bytes = 0;
  for (int r = 0; r < runs; ++r) {
    const bench::GlobalPlanResult res = bench::run_global_plan(locals, writer);
    if (res.items != expected_items || res.chunks != expected_items ||
        res.entries != static_cast<std::size_t>(entries)) {
      std::fprintf(stderr, "planned %zu items, %zu chunks, %zu entries; expected %zu, %zu, %d\n",
                   res.items, res.chunks, res.entries, expected_items, expected_items, entries);
      return 1;
    }
    total.push_back(res.times.total_ms());
    decode.push_back(res.times.decode_ms);
    plan.push_back(res.times.plan_ms);
    prepare.push_back(res.times.prepare_ms);
    encode.push_back(res.times.encode_ms);
    global_bytes = res.encoded_bytes;
  }
  std::printf("global plans: %zu items, %.0f bytes a rank on average\n", expected_items,
              static_cast<double>(global_bytes) / ranks);
  std::printf("coordinator, cold (median of %d): %.1f ms\n", runs, median_of(total));
  std::printf("  decode %.1f ms, create_global_plan %.1f ms, prepare_global_plan %.1f ms, "
              "encode %.1f ms (medians)\n",
              median_of(decode), median_of(plan), median_of(prepare), median_of(encode));
  return 0;
}
