// plan_validation.cpp — the checks of shards and of global save plans, and
// validate_global_plan.
#include "plan/plan_validation.hpp"

#include <variant>

#include "format/message_text.hpp"
#include "format/tensor_geometry.hpp"
#include "ringckpt/default_planner.hpp"
#include "ringckpt/error.hpp"

namespace ringckpt {
namespace detail {
namespace {

std::string u128_str(unsigned __int128 v) {
  if (v == 0) return "0";
  std::string out;
  while (v != 0) {
    out.insert(out.begin(), static_cast<char>('0' + static_cast<int>(v % 10)));
    v /= 10;
  }
  return out;
}

// Checks that the chunks of `tm` lie inside its global shape and tile it
// exactly once.
void validate_tensor(const std::string& fqn, const TensorStorageMetadata& tm) {
  const auto fault = find_tiling_fault(tm.size, tm.chunks);
  if (!fault) return;
  using Kind = TilingFault::Kind;
  const Shape& global = tm.size;
  std::string msg;
  switch (fault->kind) {
    case Kind::bad_shape:
      msg = "global shape " + shape_str(global) + " is negative or too large";
      break;
    case Kind::rank:
      msg = "chunk " + chunk_str(tm.chunks[*fault->chunk]) + " does not have the " +
            std::to_string(global.size()) + " dimensions of the global shape " + shape_str(global);
      break;
    case Kind::outside:
      msg = "chunk " + chunk_str(tm.chunks[*fault->chunk]) + " lies outside the global shape " +
            shape_str(global);
      break;
    case Kind::too_complex:
      msg = "chunks split " + std::to_string(fault->split_dims) +
            " dimensions; too many chunks or dimensions to check";
      break;
    case Kind::overlap:
    case Kind::gap:
    case Kind::overlap_and_gap:
      msg = fault->kind == Kind::overlap ? "chunks overlap"
            : fault->kind == Kind::gap   ? "chunks leave a gap"
                                         : "chunks overlap and leave gaps";
      msg += " (they hold " + u128_str(fault->held) + " elements of " +
             std::to_string(fault->total) + ")";
      if (fault->chunk) msg += "; see chunk " + chunk_str(tm.chunks[*fault->chunk]);
      break;
  }
  throw Error(ErrorCode::kInvalidArgument, fqn, msg);
}

}  // namespace

void check_shard(const std::string& fqn, const ShardedTensor& st, const Shard& shard) {
  if (shard.local.dtype != st.dtype) {
    throw Error(ErrorCode::kInvalidArgument, fqn,
                "shard at offsets " + shape_str(shard.offsets) + " is " +
                    std::string(dtype_name(shard.local.dtype)) + ", the tensor is " +
                    std::string(dtype_name(st.dtype)));
  }
  if (!box_inside(shard.offsets, shard.local.shape, st.global_shape)) {
    throw Error(ErrorCode::kInvalidArgument, fqn,
                "shard at offsets " + shape_str(shard.offsets) + " of shape " +
                    shape_str(shard.local.shape) + " lies outside the global shape " +
                    shape_str(st.global_shape));
  }
}

void validate_tensors(const Metadata& metadata) {
  for (const auto& [fqn, sm] : metadata.state_dict_metadata) {
    if (const auto* tm = std::get_if<TensorStorageMetadata>(&sm)) validate_tensor(fqn, *tm);
  }
}

}  // namespace detail

void validate_global_plan(const std::vector<SavePlan>& plans, const Metadata& metadata) {
  detail::validate_tensors(metadata);
  // Every planned item must be described by the metadata, as the same kind.
  for (const auto& plan : plans) {
    for (const auto& item : plan.items) {
      auto it = metadata.state_dict_metadata.find(item.index.fqn);
      if (it == metadata.state_dict_metadata.end()) {
        throw Error(ErrorCode::kInvalidArgument, item.index.fqn,
                    "planned for writing but missing from the metadata");
      }
      const bool bytes = item.type == WriteItemType::BYTE_IO;
      if (bytes != std::holds_alternative<BytesStorageMetadata>(it->second)) {
        throw Error(ErrorCode::kInvalidArgument, item.index.fqn,
                    "planned as " + std::string(bytes ? "bytes" : "a tensor") +
                        " but the metadata says otherwise");
      }
    }
  }
}

}  // namespace ringckpt
