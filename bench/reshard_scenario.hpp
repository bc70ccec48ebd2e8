// reshard_scenario.hpp — issue 10's resharding case, as inline functions that
// any benchmark (bench/reshard_plan, `ringckpt bench`) can include: 500
// tensors [8192, 8192] F32 named as a transformer's are, each saved as 1,024
// row shards and loaded as 256 (or cut as columns or blocks), and the time
// a DefaultLoadPlanner takes to plan their load. Public headers only.
#pragma once

#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ringckpt/default_planner.hpp"
#include "ringckpt/error.hpp"

namespace ringckpt::reshard_scenario {

inline constexpr int kTensors = 500;
inline constexpr std::int64_t kSide = 8192;  // every tensor is [kSide, kSide] F32

// How a tensor is cut: `rows` x `cols` equal blocks.
struct Grid {
  std::int64_t rows, cols;
  constexpr std::int64_t count() const { return rows * cols; }
};

inline constexpr Grid kSavedRows{1024, 1}, kLoadedRows{256, 1};
inline constexpr Grid kSavedCols{1, 1024}, kLoadedCols{1, 256};
inline constexpr Grid kSavedBlocks{32, 32}, kLoadedBlocks{16, 16};

// The blocks of `grid`, row-major.
inline std::vector<ChunkStorageMetadata> blocks(Grid grid) {
  std::vector<ChunkStorageMetadata> out;
  out.reserve(static_cast<std::size_t>(grid.count()));
  const std::int64_t h = kSide / grid.rows, w = kSide / grid.cols;
  for (std::int64_t r = 0; r < grid.rows; ++r) {
    for (std::int64_t c = 0; c < grid.cols; ++c) out.push_back({{r * h, c * w}, {h, w}});
  }
  return out;
}

inline std::string tensor_name(int i) {
  static const char* const kParts[] = {"attention.wq.weight", "attention.wk.weight",
                                       "attention.wv.weight", "attention.wo.weight",
                                       "feed_forward.w1.weight"};
  return "model.layers." + std::to_string(i / 5) + "." + kParts[i % 5];
}

// The Metadata of the saved checkpoint: every tensor stored as the blocks of
// `saved` (no storage_data: planning reads none).
inline Metadata saved_metadata(Grid saved = kSavedRows) {
  Metadata m;
  for (int i = 0; i < kTensors; ++i) {
    TensorStorageMetadata tm;
    tm.properties.dtype = DType::F32;
    tm.size = {kSide, kSide};
    tm.chunks = blocks(saved);
    m.state_dict_metadata.emplace(tensor_name(i), std::move(tm));
  }
  return m;
}

// The state dict of the loading rank `rank` (of loaded.count() ranks), or
// of all ranks together if rank < 0; its shards have no memory (planning
// only).
inline StateDict loading_state_dict(Grid loaded = kLoadedRows, int rank = -1) {
  StateDict sd;
  const auto boxes = blocks(loaded);
  for (int i = 0; i < kTensors; ++i) {
    ShardedTensor st;
    st.dtype = DType::F32;
    st.global_shape = {kSide, kSide};
    for (std::size_t s = 0; s < boxes.size(); ++s) {
      if (rank >= 0 && s != static_cast<std::size_t>(rank)) continue;
      st.shards.push_back({TensorView{nullptr, DType::F32, boxes[s].sizes}, boxes[s].offsets});
    }
    sd.add(tensor_name(i), std::move(st));
  }
  return sd;
}

// The read items a plan of all ranks holds: one per stored chunk (each saved
// chunk lies inside one loaded box when the saved grid refines the loaded).
inline std::size_t all_ranks_items(Grid saved = kSavedRows) {
  return static_cast<std::size_t>(kTensors * saved.count());
}

inline double median_of(std::vector<double> ms) {
  std::ranges::sort(ms);
  return ms[ms.size() / 2];
}

// The median time, in milliseconds, of `runs` plans of `sd` against `m` by
// a fresh DefaultLoadPlanner (set_up_planner and create_local_plan; no I/O).
// Throws Error(kMismatch) if a plan does not hold `expected_items` items.
// Between runs the plan is freed and the heap trimmed outside the timed
// part, so that no run pays for the previous one's frees (a load plans once).
inline double median_plan_ms(StateDict& sd, const Metadata& m, int runs,
                             std::size_t expected_items) {
  std::vector<double> ms;
  for (int r = 0; r < std::max(runs, 1); ++r) {
    {
      DefaultLoadPlanner planner;
      const auto t0 = std::chrono::steady_clock::now();
      planner.set_up_planner(sd, m, true);
      const LoadPlan plan = planner.create_local_plan();
      const auto t1 = std::chrono::steady_clock::now();
      if (plan.items.size() != expected_items) {
        throw Error(ErrorCode::kMismatch, "reshard scenario",
                    std::to_string(plan.items.size()) + " read items planned, " +
                        std::to_string(expected_items) + " expected");
      }
      ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    malloc_trim(0);
  }
  return median_of(std::move(ms));
}

// Issue 10's figure (`reshard_plan_ms`): the median time of `runs` plans by
// one DefaultLoadPlanner asked for all 256 row shards of every tensor saved
// as 1,024 (512,000 read items: the work of all 256 loading ranks).
inline double reshard_plan_ms(int runs) {
  const Metadata m = saved_metadata(kSavedRows);
  StateDict all = loading_state_dict(kLoadedRows, -1);
  return median_plan_ms(all, m, runs, all_ranks_items(kSavedRows));
}

}  // namespace ringckpt::reshard_scenario
