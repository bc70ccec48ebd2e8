// ringckpt/planner.hpp — the planner protocol of torch.distributed.checkpoint.
//
// Save:  set_up_planner -> create_local_plan (every rank)
//        -> create_global_plan (coordinator, over all local plans)
//        -> finish_plan (every rank) -> resolve_data (staging, per item).
// Load:  set_up_planner -> create_local_plan -> create_global_plan
//        -> finish_plan -> resolve_bytes or load_bytes / resolve_tensor + commit_tensor.
#pragma once

#include <span>
#include <utility>
#include <vector>

#include "ringckpt/metadata.hpp"
#include "ringckpt/plan.hpp"
#include "ringckpt/tensor.hpp"

namespace ringckpt {

class SavePlanner {
 public:
  virtual ~SavePlanner() = default;

  // The state dict must outlive the save (until its staged completion).
  virtual void set_up_planner(const StateDict& state_dict, bool is_coordinator) = 0;
  virtual SavePlan create_local_plan() = 0;
  // Coordinator only: may rewrite every rank's plan; returns the plans to hand
  // back and the metadata to commit (storage_data and files are filled later).
  virtual std::pair<std::vector<SavePlan>, Metadata> create_global_plan(
      std::vector<SavePlan> all_plans) = 0;
  virtual SavePlan finish_plan(SavePlan central_plan) = 0;
  // Called from staging threads, possibly concurrently for different items.
  virtual ItemData resolve_data(const WriteItem& item) = 0;
};

class LoadPlanner {
 public:
  virtual ~LoadPlanner() = default;

  virtual void set_up_planner(StateDict& state_dict, const Metadata& metadata,
                              bool is_coordinator) = 0;
  virtual LoadPlan create_local_plan() = 0;
  virtual std::vector<LoadPlan> create_global_plan(std::vector<LoadPlan> all_plans) = 0;
  virtual LoadPlan finish_plan(LoadPlan central_plan) = 0;
  // A BYTE_IO item's verified bytes.
  virtual void load_bytes(const ReadItem& item, std::span<const std::byte> value) = 0;
  // DCP's resolve_bytes: the Bytes that a BYTE_IO item's verified bytes are
  // to replace (moved in, not copied; load_bytes is then not called), or null
  // to receive them through load_bytes (the default). The Bytes must stay
  // valid until read_data returns.
  virtual Bytes* resolve_bytes(const ReadItem& item) {
    (void)item;
    return nullptr;
  }
  // The whole destination (a tensor, or one local shard) that the box
  // item.dest_offsets/item.lengths of item is copied into.
  virtual TensorView resolve_tensor(const ReadItem& item) = 0;
  // Called once the box of `item` has been copied into `tensor`.
  virtual void commit_tensor(const ReadItem& item, const TensorView& tensor) = 0;
};

}  // namespace ringckpt
