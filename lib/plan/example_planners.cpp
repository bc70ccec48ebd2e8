// example_planners.cpp — DCP's docstring planners (example_planners.hpp).
#include "ringckpt/example_planners.hpp"

#include <algorithm>
#include <numeric>
#include <string>
#include <utility>
#include <variant>

#include "format/dtype_cast.hpp"
#include "plan/plan_validation.hpp"
#include "ringckpt/error.hpp"

namespace ringckpt {

// ---------------------------------------------------------------------------
// RenamePlanner

void RenameSavePlanner::set_up_planner(const StateDict& state_dict, bool is_coordinator) {
  renamed_ = StateDict{};
  for (const auto& entry : state_dict) renamed_.add(prefix_ + entry.fqn, entry.value);
  DefaultSavePlanner::set_up_planner(renamed_, is_coordinator);
}

void RenameLoadPlanner::set_up_planner(StateDict& state_dict, const Metadata& metadata,
                                       bool is_coordinator) {
  original_ = &state_dict;
  renamed_ = StateDict{};
  for (const auto& entry : state_dict) renamed_.add(prefix_ + entry.fqn, entry.value);
  DefaultLoadPlanner::set_up_planner(renamed_, metadata, is_coordinator);
}

Bytes* RenameLoadPlanner::resolve_bytes(const ReadItem& item) {
  const std::string& fqn = item.dest_index.fqn;
  StateValue* v = original_ != nullptr && fqn.starts_with(prefix_)
                      ? original_->find(std::string_view(fqn).substr(prefix_.size()))
                      : nullptr;
  Bytes* b = v ? std::get_if<Bytes>(v) : nullptr;
  if (b == nullptr) {
    throw Error(ErrorCode::kNotFound, fqn,
                "no blob named without the prefix \"" + prefix_ + "\" to load into");
  }
  return b;
}

// ---------------------------------------------------------------------------
// FP16Planner

FP16Planner::FP16Planner(DType stored, Options options)
    : DefaultSavePlanner(options), stored_(stored) {
  if (stored != DType::F16 && stored != DType::BF16) {
    throw Error(ErrorCode::kInvalidArgument, "FP16Planner",
                "stores F32 as F16 or BF16, not " + std::string(dtype_name(stored)));
  }
}

SavePlan FP16Planner::create_local_plan() {
  SavePlan plan = DefaultSavePlanner::create_local_plan();
  for (auto& item : plan.items) {
    if (item.tensor_data && item.tensor_data->properties.dtype == DType::F32) {
      item.tensor_data->properties.dtype = stored_;
    }
  }
  return plan;
}

ItemData FP16Planner::resolve_data(const WriteItem& item) {
  const StateValue* v = state_dict_ ? state_dict_->find(item.index.fqn) : nullptr;
  DType source = DType::U8;
  if (const auto* t = v ? std::get_if<TensorView>(v) : nullptr) source = t->dtype;
  if (const auto* st = v ? std::get_if<ShardedTensor>(v) : nullptr) source = st->dtype;
  if (!item.tensor_data || item.tensor_data->properties.dtype != stored_ || source != DType::F32) {
    return DefaultSavePlanner::resolve_data(item);
  }
  const std::span<const std::byte> f32 = lookup_bytes(item.index);
  const DType stored = stored_;
  return ItemData::produced(f32.size() / 2, [f32, stored](std::uint64_t offset,
                                                          std::span<std::byte> out) {
    detail::cast_byte_range(DType::F32, f32, stored, offset, out);
  });
}

// ---------------------------------------------------------------------------
// LoadBalancingPlanner

std::pair<std::vector<SavePlan>, Metadata> LoadBalancingPlanner::create_global_plan(
    std::vector<SavePlan> all_plans) {
  // Before anything is dropped: the default global plan checks consistency
  // only among the items it still sees.
  detail::check_plans_consistent(all_plans);
  struct Item {
    MetadataIndex index;
    std::uint64_t bytes;
    std::vector<std::size_t> holders;  // ascending, distinct
  };
  std::vector<Item> items;
  std::map<MetadataIndex, std::size_t> seen;
  for (std::size_t r = 0; r < all_plans.size(); ++r) {
    for (const auto& item : all_plans[r].items) {
      auto [it, inserted] = seen.try_emplace(item.index, items.size());
      if (inserted) items.push_back({item.index, item.nbytes(), {}});
      auto& holders = items[it->second].holders;
      if (holders.empty() || holders.back() != r) holders.push_back(r);
    }
  }
  std::vector<std::size_t> order(items.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return items[a].bytes > items[b].bytes; });
  std::vector<std::uint64_t> planned(all_plans.size(), 0);
  std::map<MetadataIndex, std::size_t> owner;
  for (std::size_t i : order) {
    std::size_t best = items[i].holders.front();
    for (std::size_t r : items[i].holders) {
      if (planned[r] < planned[best]) best = r;  // strict: ties keep the lower rank
    }
    planned[best] += items[i].bytes;
    owner[items[i].index] = best;
  }
  for (std::size_t r = 0; r < all_plans.size(); ++r) {
    std::vector<WriteItem> kept;
    for (auto& item : all_plans[r].items) {
      auto it = owner.find(item.index);
      // A rank's own duplicate is kept too, for validation to refuse.
      if (it != owner.end() && it->second == r) kept.push_back(std::move(item));
    }
    all_plans[r].items = std::move(kept);
  }
  return DefaultSavePlanner::create_global_plan(std::move(all_plans));
}

// ---------------------------------------------------------------------------
// SaveExtraDataPlanner

SavePlan SaveExtraDataPlanner::create_local_plan() {
  SavePlan plan = DefaultSavePlanner::create_local_plan();
  plan.planner_data = rank_data_;
  return plan;
}

std::pair<std::vector<SavePlan>, Metadata> SaveExtraDataPlanner::create_global_plan(
    std::vector<SavePlan> all_plans) {
  auto [global_plan, metadata] = DefaultSavePlanner::create_global_plan(std::move(all_plans));
  metadata.planner_data.clear();  // replaced by the merged per-rank data, as DCP's example
  for (std::size_t r = 0; r < global_plan.size(); ++r) {
    for (const auto& [key, value] : global_plan[r].planner_data) {
      metadata.planner_data[std::to_string(r) + "/" + key] = value;
    }
  }
  return {std::move(global_plan), std::move(metadata)};
}

std::map<std::string, std::string> SaveExtraDataPlanner::rank_data(const Metadata& metadata,
                                                                   int rank) {
  const std::string prefix = std::to_string(rank) + "/";
  std::map<std::string, std::string> out;
  for (const auto& [key, value] : metadata.planner_data) {
    if (key.starts_with(prefix)) out.emplace(key.substr(prefix.size()), value);
  }
  return out;
}

// ---------------------------------------------------------------------------
// MetaModelMaterialize

void MetaModelMaterialize::set_up_planner(StateDict& state_dict, const Metadata& metadata,
                                          bool is_coordinator) {
  for (const auto& [fqn, item] : metadata.state_dict_metadata) {
    if (state_dict.contains(fqn)) continue;  // what the caller brought, it keeps
    if (const auto* t = std::get_if<TensorStorageMetadata>(&item)) {
      state_dict.add(fqn, TensorView{nullptr, t->properties.dtype, t->size});
    } else {
      state_dict.add(fqn, Bytes{});
    }
  }
  DefaultLoadPlanner::set_up_planner(state_dict, metadata, is_coordinator);
}

void MetaModelMaterialize::materialize(const std::string& fqn, TensorView& view) {
  if (view.data != nullptr || view.nbytes() == 0) return;
  view.data = allocate_(fqn, view.dtype, view.shape);
  if (view.data == nullptr) {
    throw Error(ErrorCode::kInvalidArgument, fqn,
                "the allocator returned no memory for " + std::to_string(view.nbytes()) +
                    " bytes");
  }
  ++allocations_;
}

TensorView MetaModelMaterialize::resolve_tensor(const ReadItem& item) {
  const std::string& fqn = item.dest_index.fqn;
  if (StateValue* v = state_dict_ ? state_dict_->find(fqn) : nullptr) {
    if (auto* t = std::get_if<TensorView>(v)) {
      materialize(fqn, *t);
    } else if (auto* st = std::get_if<ShardedTensor>(v)) {
      for (auto& shard : st->shards) {
        if (item.dest_index.offset && shard.offsets == *item.dest_index.offset) {
          materialize(fqn, shard.local);
        }
      }
    }
  }
  return DefaultLoadPlanner::resolve_tensor(item);
}

}  // namespace ringckpt
