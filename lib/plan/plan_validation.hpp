// lib/plan/plan_validation.hpp — the checks the default planners make of
// what they are given (shards, global plans), and how their messages print
// shapes and chunks.
#pragma once

#include <string>

#include "ringckpt/metadata.hpp"
#include "ringckpt/tensor.hpp"

namespace ringckpt::detail {

// "[2, 3]".
std::string shape_str(const Shape& shape);
// "[2, 3] F32".
std::string tensor_str(const Shape& shape, DType dtype);
// "offsets [0, 0] sizes [2, 3]".
std::string chunk_str(const Shape& offsets, const Shape& sizes);
std::string chunk_str(const ChunkStorageMetadata& chunk);

// Throws Error(kInvalidArgument, fqn) unless `shard` has the dtype of `st`
// and lies inside its global shape.
void check_shard(const std::string& fqn, const ShardedTensor& st, const Shard& shard);

// Throws Error(kInvalidArgument, fqn) unless the chunks of each tensor of
// `metadata` lie inside it and tile it exactly once (find_tiling_fault).
void validate_tensors(const Metadata& metadata);

}  // namespace ringckpt::detail
