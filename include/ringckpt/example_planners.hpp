// ringckpt/example_planners.hpp — the example planners of DCP's docstrings
// (torch/distributed/checkpoint/planner.py), as library classes. Each shows
// one way to extend the default planners; each is usable as is.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "ringckpt/default_planner.hpp"

namespace ringckpt {

// DCP's RenamePlanner:
//     def set_up_planner(self, state_dict, storage_meta, is_coordinator):
//         super().set_up_planner({"foo_" + k: v for k, v in state_dict.items()}, ...)
// Saves every entry under prefix + its name. The renamed dict is the
// planner's own: its tensors alias the caller's memory. REQUIRES: the planner
// outlives the save's staging (as the state dict does).
class RenameSavePlanner : public DefaultSavePlanner {
 public:
  explicit RenameSavePlanner(std::string prefix, Options options = {})
      : DefaultSavePlanner(options), prefix_(std::move(prefix)) {}

  void set_up_planner(const StateDict& state_dict, bool is_coordinator) override;

 private:
  std::string prefix_;
  StateDict renamed_;  // read by resolve_data until the save is staged
};

// The load side of RenamePlanner (DCP's load example: `self.original_state_dict
// [fqn[4:]] = torch.load(value)`): loads the checkpoint's prefix + k into the
// caller's entry k; the caller's dict keeps its own names.
class RenameLoadPlanner : public DefaultLoadPlanner {
 public:
  explicit RenameLoadPlanner(std::string prefix, Options options = {})
      : DefaultLoadPlanner(options), prefix_(std::move(prefix)) {}

  void set_up_planner(StateDict& state_dict, const Metadata& metadata,
                      bool is_coordinator) override;
  // A blob is a value, not a view: it goes to the caller's entry. Throws
  // Error(kNotFound) naming the key if the caller has no such blob.
  Bytes* resolve_bytes(const ReadItem& item) override;

 private:
  std::string prefix_;
  StateDict* original_ = nullptr;
  StateDict renamed_;  // views of the caller's tensors under prefixed names
};

// DCP's FP16Planner:
//     def create_local_plan(self):
//         plan = super().create_local_plan()
//         for p in plan: if p.tensor_data is not None:
//             p.tensor_data.properties.dtype = torch.float16
//     def resolve_data(self, write_item):
//         item = super().resolve_data(write_item)
//         return item if write_item.type == WriteItemType.BYTE_IO else item.to(torch.float16)
// Stores every F32 tensor as `stored` (F16, or BF16), converted while staging
// (round to nearest even): staging asks for any byte range of an item, so
// conversion, copy and checksum are one pass. Other dtypes are stored as they
// are (DCP's example would round integers too). DefaultLoadPlanner casts the
// values back into F32 buffers on load.
class FP16Planner : public DefaultSavePlanner {
 public:
  // Throws Error(kInvalidArgument) unless stored is F16 or BF16.
  explicit FP16Planner(DType stored = DType::F16, Options options = {});

  SavePlan create_local_plan() override;
  ItemData resolve_data(const WriteItem& item) override;

 private:
  DType stored_;
};

// DCP's DDPLoadBalancingPlanner: every rank holds every item (DDP replicates
// the model) and create_global_plan decides who writes what. Here each item
// goes to one of the ranks that hold it so that bytes balance: biggest first,
// each to the holder with the fewest bytes so far (LPT; ties to the lower
// rank), so the ranks end within one largest item of each other. The default
// global plan then builds and validates the metadata.
class LoadBalancingPlanner : public DefaultSavePlanner {
 public:
  using DefaultSavePlanner::DefaultSavePlanner;

  std::pair<std::vector<SavePlan>, Metadata> create_global_plan(
      std::vector<SavePlan> all_plans) override;
};

// DCP's SaveExtraDataPlanner:
//     def create_local_plan(self):
//         return replace(super().create_local_plan(), planner_data="per-rank-data")
//     def create_global_plan(self, all_plans):
//         global_plan, metadata = super().create_global_plan(all_plans)
//         return global_plan, replace(metadata,
//                                     planner_data=[p.planner_data for p in global_plan])
// Each rank's `rank_data` travels in its local plan; the committed metadata's
// planner_data holds every rank's entries as "<rank>/<key>" (rank_data() reads
// them back). set_up_planner is not told the rank, so the planner is.
class SaveExtraDataPlanner : public DefaultSavePlanner {
 public:
  SaveExtraDataPlanner(int rank, std::map<std::string, std::string> rank_data,
                       Options options = {})
      : DefaultSavePlanner(options), rank_(rank), rank_data_(std::move(rank_data)) {}

  SavePlan create_local_plan() override;
  std::pair<std::vector<SavePlan>, Metadata> create_global_plan(
      std::vector<SavePlan> all_plans) override;

  // The entries rank `rank` saved, read from a committed checkpoint's metadata.
  static std::map<std::string, std::string> rank_data(const Metadata& metadata, int rank);

 private:
  int rank_;
  std::map<std::string, std::string> rank_data_;
};

// DCP's MetaModelMaterialize: loads into a model whose tensors have no memory
// yet. Every checkpoint entry the caller's state dict lacks is added to it (a
// TensorView with null data, or empty Bytes), and so is an entry the caller
// gives with null data (a "meta" tensor or shard); resolve_tensor allocates
// each such destination through `allocate` when its first item is read and
// points the state dict's view at it (DCP allocates in resolve_tensor and
// swaps in commit_tensor). A tensor with no elements is never allocated.
// The memory is the caller's: ringckpt never frees it.
class MetaModelMaterialize : public DefaultLoadPlanner {
 public:
  // Returns memory for numel(shape) elements of dtype, or null (an Error).
  using Allocator = std::function<void*(const std::string& fqn, DType dtype, const Shape& shape)>;

  explicit MetaModelMaterialize(Allocator allocate, Options options = {})
      : DefaultLoadPlanner(options), allocate_(std::move(allocate)) {}

  void set_up_planner(StateDict& state_dict, const Metadata& metadata,
                      bool is_coordinator) override;
  TensorView resolve_tensor(const ReadItem& item) override;

  // Destinations allocated so far.
  std::size_t allocations() const noexcept { return allocations_; }

 private:
  void materialize(const std::string& fqn, TensorView& view);

  Allocator allocate_;
  std::size_t allocations_ = 0;
};

}  // namespace ringckpt
