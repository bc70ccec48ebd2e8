// reshard_plan.cpp — the load planner's time for a resharding plan: 500
// tensors, each saved as 1,024 row shards, loaded as 256 row shards
// (issue 10: 0.69 s before the chunk index, by trying every pair).
//
// Two figures, each the median of --runs runs, no I/O (planning only):
//   all ranks: one DefaultLoadPlanner asked for all 256 shards of every
//              tensor (the work of all 256 loading ranks together);
//   one rank:  asked for one shard of every tensor (what each loading rank
//              plans; the index is built once per tensor there too).
// and, of the first, the part spent finding the chunks (building the 500
// indexes, querying them for the 128,000 boxes); the rest makes the 512,000
// ReadItems, in place and with no heap block of their own (Shape holds up to
// 4 dimensions in place, and an item's names share its tensor's Fqn). And
// the same for tensors cut as columns and as blocks. The scenario and the
// all-ranks figure are in reshard_scenario.hpp (`reshard_plan_ms`).
// Exits 1 if a plan does not hold one read item per stored chunk.
//
//   build/bench/reshard_plan [--runs N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <malloc.h>
#include <string>
#include <thread>
#include <vector>

#include "plan/chunk_index.hpp"
#include "reshard_scenario.hpp"
#include "ringckpt/default_planner.hpp"

using namespace ringckpt;
using namespace ringckpt::reshard_scenario;

namespace {

// The median time of `runs` searches for the chunks of every shard in `sd`,
// index built once per tensor, in milliseconds.
double median_search_ms(const StateDict& sd, const Metadata& m, int runs,
                        std::size_t expected_chunks) {
  std::vector<double> ms;
  std::vector<std::size_t> found;
  for (int r = 0; r < runs; ++r) {
    found.clear();
    const auto t0 = std::chrono::steady_clock::now();
    for (const auto& entry : sd) {
      const auto& tm = std::get<TensorStorageMetadata>(m.state_dict_metadata.at(entry.fqn));
      const auto& st = std::get<ShardedTensor>(entry.value);
      detail::ChunkIndex index(entry.fqn, tm, st.global_shape.size());
      for (const auto& shard : st.shards) {
        index.find_intersecting(shard.offsets, shard.local.shape, found);
      }
    }
    const auto t1 = std::chrono::steady_clock::now();
    if (found.size() != expected_chunks) {
      std::fprintf(stderr, "reshard_plan: %zu chunks found, %zu expected\n", found.size(),
                   expected_chunks);
      std::exit(1);
    }
    ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  return median_of(std::move(ms));
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("model name")) return line.substr(line.find(':') + 2);
  }
  return "unknown CPU";
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 7;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--runs" && i + 1 < argc) {
      runs = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: %s [--runs N]\n", argv[0]);
      return 2;
    }
  }
  try {
    const Metadata m = saved_metadata(kSavedRows);
    StateDict all = loading_state_dict(kLoadedRows, -1);
    StateDict one = loading_state_dict(kLoadedRows, 0);
    std::printf("machine: %s, %u hardware threads\n", cpu_model().c_str(),
                std::thread::hardware_concurrency());
    std::printf("case: %d tensors [%lld, %lld] F32, saved as 1,024 row shards, loaded as 256\n",
                kTensors, static_cast<long long>(kSide), static_cast<long long>(kSide));
    const std::size_t items = all_ranks_items(kSavedRows);
    const double all_ms = median_plan_ms(all, m, runs, items);
    const double one_ms = median_plan_ms(one, m, runs, items / kLoadedRows.count());
    std::printf("all ranks' plan: %.1f ms median of %d (issue 10 baseline 690 ms, %.1fx)\n",
                all_ms, runs, 690.0 / all_ms);
    std::printf("  finding the chunks (500 indexes, 128,000 boxes): %.1f ms\n",
                median_search_ms(all, m, runs, items));
    std::printf("one rank's plan: %.2f ms median of %d\n", one_ms, runs);
    // Other cuts, the same chunk and box counts.
    const Metadata mc = saved_metadata(kSavedCols);
    StateDict cols = loading_state_dict(kLoadedCols, -1);
    std::printf("1,024 column shards loaded as 256: all ranks' plan %.1f ms, finding the chunks %.1f ms\n",
                median_plan_ms(cols, mc, runs, all_ranks_items(kSavedCols)),
                median_search_ms(cols, mc, runs, all_ranks_items(kSavedCols)));
    const Metadata mb = saved_metadata(kSavedBlocks);
    StateDict blocks16 = loading_state_dict(kLoadedBlocks, -1);
    std::printf("32 x 32 blocks loaded as 16 x 16: all ranks' plan %.1f ms, finding the chunks %.1f ms\n",
                median_plan_ms(blocks16, mb, runs, all_ranks_items(kSavedBlocks)),
                median_search_ms(blocks16, mb, runs, all_ranks_items(kSavedBlocks)));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "reshard_plan: %s\n", e.what());
    return 1;
  }
  return 0;
}
