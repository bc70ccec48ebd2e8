// bench/global_plan_scenario.hpp — the coordinator's cold global save plan at
// scale (issue 10): R ranks each holding E entries named as a transformer's
// are, half of them row shards of tensors split over all R ranks, half
// replicated (the same whole tensor on every rank). Planning only: no data
// (nullptr), no I/O, no threads.
//
//   global_plan_state_dict(r, R, E)  rank r's StateDict
//   encode_local_plans(R, E)         every rank's encoded local plan, as its
//                                    DefaultSavePlanner and FileSystemWriter
//                                    make it
//   run_global_plan(locals, ...)     the coordinator's part, timed: decode the
//                                    R local plans, DefaultSavePlanner::
//                                    create_global_plan, FileSystemWriter::
//                                    prepare_global_plan, encode the R plans
// Used by bench/global_plan.cpp (and `ringckpt bench --plan-ranks R --entries E`).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "plan/wire_codec.hpp"
#include "ringckpt/default_planner.hpp"
#include "ringckpt/filesystem_writer.hpp"

namespace ringckpt::bench {

// A layer's entries in state-dict order; the first kShardedParts are row
// sharded over all ranks, the rest replicated.
inline constexpr const char* kLayerParts[] = {
    "attention.wq.weight",    "attention.wk.weight",    "attention.wv.weight",
    "attention.wo.weight",    "feed_forward.w1.weight", "feed_forward.w2.weight",
    "feed_forward.w3.weight", "attention_norm.weight",  "ffn_norm.weight",
    "attention.inner_attention.rope.freqs"};
inline constexpr int kPartsPerLayer = 10;
inline constexpr int kShardedParts = 5;
inline constexpr std::int64_t kShardRows = 16;  // rows of a sharded tensor per rank
inline constexpr std::int64_t kDim = 4096, kHidden = 11008;

inline std::string entry_name(int e) {
  return "model.layers." + std::to_string(e / kPartsPerLayer) + "." +
         kLayerParts[e % kPartsPerLayer];
}

inline bool entry_is_sharded(int e) { return e % kPartsPerLayer < kShardedParts; }

// Rank `rank`'s state dict of `ranks` ranks x `entries` entries.
// REQUIRES: 0 <= rank < ranks.
inline StateDict global_plan_state_dict(int rank, int ranks, int entries) {
  StateDict sd;
  for (int e = 0; e < entries; ++e) {
    const int part = e % kPartsPerLayer;
    if (entry_is_sharded(e)) {
      const std::int64_t cols = part == 4 ? kHidden : kDim;
      ShardedTensor st;
      st.dtype = DType::BF16;
      st.global_shape = {kShardRows * ranks, cols};
      st.shards.push_back(Shard{TensorView{nullptr, DType::BF16, {kShardRows, cols}},
                                {kShardRows * rank, 0}});
      sd.add(entry_name(e), std::move(st));
    } else {
      Shape shape;
      if (part == 5) shape = {kDim, kHidden};
      else if (part == 6) shape = {kHidden, kDim};
      else if (part == 9) shape = {64};
      else shape = {kDim};
      sd.add(entry_name(e), TensorView{nullptr, DType::BF16, shape});
    }
  }
  return sd;
}

// Every rank's local plan, encoded as a rank sends it to the coordinator.
inline std::vector<std::string> encode_local_plans(int ranks, int entries) {
  std::vector<std::string> out;
  out.reserve(static_cast<std::size_t>(ranks));
  FileSystemWriter writer(std::filesystem::temp_directory_path() / "ringckpt-global-plan-bench");
  for (int r = 0; r < ranks; ++r) {
    const StateDict sd = global_plan_state_dict(r, ranks, entries);
    DefaultSavePlanner planner;
    planner.set_up_planner(sd, r == 0);
    out.push_back(wire::encode(writer.prepare_local_plan(planner.create_local_plan())));
  }
  return out;
}

// Milliseconds of each step of the coordinator's part.
struct GlobalPlanTimes {
  double decode_ms = 0, plan_ms = 0, prepare_ms = 0, encode_ms = 0;
  double total_ms() const { return decode_ms + plan_ms + prepare_ms + encode_ms; }
};

// What one run planned: enough to check it did the work.
struct GlobalPlanResult {
  GlobalPlanTimes times;
  std::size_t items = 0;           // write items in all global plans
  std::size_t chunks = 0;          // chunks in the metadata
  std::size_t entries = 0;         // state-dict entries in the metadata
  std::uint64_t encoded_bytes = 0; // of all encoded global plans
};

// The coordinator's part, from the encoded local plans to the encoded global
// plans, timed step by step. `writer` is only asked to prepare_global_plan.
inline GlobalPlanResult run_global_plan(const std::vector<std::string>& locals,
                                        StorageWriter& writer) {
  using Clock = std::chrono::steady_clock;
  const auto ms = [](Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
  };
  GlobalPlanResult result;
  const auto t0 = Clock::now();
  std::vector<SavePlan> plans;
  plans.reserve(locals.size());
  for (std::size_t r = 0; r < locals.size(); ++r) {
    plans.push_back(
        wire::decode_save_plan(locals[r], "local save plan from rank " + std::to_string(r)));
  }
  const auto t1 = Clock::now();
  DefaultSavePlanner planner;
  auto [global, metadata] = planner.create_global_plan(std::move(plans));
  const auto t2 = Clock::now();
  global = writer.prepare_global_plan(std::move(global));
  const auto t3 = Clock::now();
  std::vector<std::string> encoded;
  encoded.reserve(global.size());
  for (const SavePlan& plan : global) encoded.push_back(wire::encode(plan));
  const auto t4 = Clock::now();
  result.times = {ms(t0, t1), ms(t1, t2), ms(t2, t3), ms(t3, t4)};
  for (const SavePlan& plan : global) result.items += plan.items.size();
  for (const auto& [fqn, sm] : metadata.state_dict_metadata) {
    if (const auto* t = std::get_if<TensorStorageMetadata>(&sm)) result.chunks += t->chunks.size();
  }
  result.entries = metadata.state_dict_metadata.size();
  for (const std::string& e : encoded) result.encoded_bytes += e.size();
  return result;  // the plans and metadata are freed after the last timer
}

}  // namespace ringckpt::bench
