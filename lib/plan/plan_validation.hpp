// lib/plan/plan_validation.hpp — the checks the default planners make of
// what they are given (shards, global plans).
#pragma once

#include <string>

#include <vector>

#include "ringckpt/metadata.hpp"
#include "ringckpt/plan.hpp"
#include "ringckpt/tensor.hpp"

namespace ringckpt::detail {

// Throws Error(kInvalidArgument, fqn) unless `shard` has the dtype of `st`
// and lies inside its global shape.
void check_shard(const std::string& fqn, const ShardedTensor& st, const Shard& shard);

// Throws Error(kInvalidArgument, fqn) unless every rank's plan agrees, for each
// fqn, on tensor-or-bytes and on a tensor's dtype and global shape (naming the
// two ranks that disagree). Defined in save_planner.cpp.
void check_plans_consistent(const std::vector<SavePlan>& plans);

// Throws Error(kInvalidArgument, fqn) unless the chunks of each tensor of
// `metadata` lie inside it and tile it exactly once (find_tiling_fault).
void validate_tensors(const Metadata& metadata);

}  // namespace ringckpt::detail
