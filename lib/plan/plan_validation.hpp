// lib/plan/plan_validation.hpp — the checks the default planners make of
// what they are given (shards, global plans).
#pragma once

#include <string>

#include "ringckpt/metadata.hpp"
#include "ringckpt/tensor.hpp"

namespace ringckpt::detail {

// Throws Error(kInvalidArgument, fqn) unless `shard` has the dtype of `st`
// and lies inside its global shape.
void check_shard(const std::string& fqn, const ShardedTensor& st, const Shard& shard);

// Throws Error(kInvalidArgument, fqn) unless the chunks of each tensor of
// `metadata` lie inside it and tile it exactly once (find_tiling_fault).
void validate_tensors(const Metadata& metadata);

}  // namespace ringckpt::detail
