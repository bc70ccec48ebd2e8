// load_planner.cpp — DCP's default load planner: each requested tensor or
// shard is read from the stored chunks it intersects (resharding from any
// world size to any other).
#include "ringckpt/default_planner.hpp"

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <variant>

#include "format/dtype_cast.hpp"
#include "format/message_text.hpp"
#include "format/tensor_geometry.hpp"
#include "plan/chunk_index.hpp"
#include "plan/plan_validation.hpp"
#include "ringckpt/error.hpp"

namespace ringckpt {
namespace {

using detail::check_shard;
using detail::chunk_str;
using detail::shape_str;
using detail::tensor_str;

// ---------------------------------------------------------------------------
// Load planning.

std::string value_kind(const StateValue& v) {
  return std::holds_alternative<Bytes>(v) ? "bytes" : "a tensor";
}

// Checks that the state dict asks for the shape the checkpoint holds, and a
// dtype it holds or (unless strict) one a load casts to.
void check_matches(const std::string& fqn, const TensorStorageMetadata& tm, const Shape& shape,
                   DType dtype, bool strict_dtype) {
  const DType stored = tm.properties.dtype;
  const bool castable = !strict_dtype && detail::is_castable_float(stored) &&
                        detail::is_castable_float(dtype);
  if (tm.size != shape || (stored != dtype && !castable)) {
    const bool only_dtype = tm.size == shape;
    throw Error(ErrorCode::kMismatch, fqn,
                "checkpoint holds shape " + tensor_str(tm.size, stored) +
                    ", the state dict asks for " + tensor_str(shape, dtype) +
                    (only_dtype ? (strict_dtype ? " (strict_dtype: no cast)"
                                                : " (only floating dtypes are cast)")
                                : ""));
  }
}

ReadItem bytes_read_item(const std::string& fqn) {
  ReadItem item;
  item.type = LoadItemType::BYTE_IO;
  item.dest_index = MetadataIndex{fqn, std::nullopt, std::nullopt};
  item.storage_index = MetadataIndex{fqn, std::nullopt, std::nullopt};
  return item;
}

// Appends to `out` the read items of the stored chunks at `positions` (each
// meeting the box, as ChunkIndex::find_intersecting returns them), in that
// order: the destination box is [dest_offsets, dest_offsets + dest_sizes) of
// dest_index's tensor or shard, dest_index being {fqn, dest_offsets} when
// null. REQUIRES: the box and the chunks have the same rank and no end
// overflows (the index checked both).
void append_read_items(std::vector<ReadItem>& out, const std::string& fqn,
                       const TensorStorageMetadata& stored, const MetadataIndex* dest_index,
                       const Shape& dest_offsets, const Shape& dest_sizes,
                       std::span<const std::size_t> positions) {
  const std::size_t ndim = dest_offsets.size();
  for (std::size_t c : positions) {
    const auto& chunk = stored.chunks[c];
    ReadItem& item = out.emplace_back();
    item.type = LoadItemType::TENSOR;
    if (dest_index) {
      item.dest_index = *dest_index;
    } else {
      item.dest_index.fqn = fqn;
      item.dest_index.offset = dest_offsets;
    }
    item.storage_index.fqn = fqn;
    item.storage_index.offset = chunk.offsets;
    item.storage_index.index = c;
    item.dest_offsets.resize(ndim);
    item.storage_offsets.resize(ndim);
    item.lengths.resize(ndim);
    for (std::size_t d = 0; d < ndim; ++d) {  // no overflow: see REQUIRES
      const std::int64_t lo = std::max(chunk.offsets[d], dest_offsets[d]);
      const std::int64_t hi = std::min(chunk.offsets[d] + chunk.sizes[d],
                                       dest_offsets[d] + dest_sizes[d]);
      item.dest_offsets[d] = lo - dest_offsets[d];
      item.storage_offsets[d] = lo - chunk.offsets[d];
      item.lengths[d] = hi - lo;
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// DefaultLoadPlanner

void DefaultLoadPlanner::set_up_planner(StateDict& state_dict, const Metadata& metadata,
                                        bool is_coordinator) {
  state_dict_ = &state_dict;
  metadata_ = &metadata;
  is_coordinator_ = is_coordinator;
  cast_from_.clear();
  casts_.clear();
}

LoadPlan DefaultLoadPlanner::create_local_plan() {
  if (state_dict_ == nullptr || metadata_ == nullptr) {
    throw Error(ErrorCode::kInvalidArgument, "DefaultLoadPlanner", "set_up_planner was not called");
  }
  LoadPlan plan;
  plan.items.reserve(state_dict_->size());
  std::vector<std::size_t> positions;  // the chunks meeting one box
  // Appends the items of one box of `fqn`, found through `chunks`.
  auto plan_box = [&](const std::string& fqn, const TensorStorageMetadata& tm,
                      detail::ChunkIndex& chunks, const Shape& offsets,
                      const Shape& sizes) {
    positions.clear();
    chunks.find_intersecting(offsets, sizes, positions);
    append_read_items(plan.items, fqn, tm, nullptr, offsets, sizes, positions);
  };
  for (const auto& entry : *state_dict_) {
    const std::string& fqn = entry.fqn;
    auto it = metadata_->state_dict_metadata.find(fqn);
    if (it == metadata_->state_dict_metadata.end()) {
      if (options_.allow_partial_load) continue;
      throw Error(ErrorCode::kNotFound, fqn, "missing from the checkpoint");
    }
    const bool stored_bytes = std::holds_alternative<BytesStorageMetadata>(it->second);
    if (stored_bytes != std::holds_alternative<Bytes>(entry.value)) {
      throw Error(ErrorCode::kMismatch, fqn,
                  "checkpoint holds " + std::string(stored_bytes ? "bytes" : "a tensor") +
                      ", the state dict asks for " + value_kind(entry.value));
    }
    if (stored_bytes) {
      plan.items.push_back(bytes_read_item(fqn));
      continue;
    }
    const auto& tm = std::get<TensorStorageMetadata>(it->second);
    const DType wanted = std::holds_alternative<TensorView>(entry.value)
                             ? std::get<TensorView>(entry.value).dtype
                             : std::get<ShardedTensor>(entry.value).dtype;
    if (wanted != tm.properties.dtype) cast_from_[fqn] = tm.properties.dtype;  // checked below
    if (const auto* t = std::get_if<TensorView>(&entry.value)) {
      check_matches(fqn, tm, t->shape, t->dtype, options_.strict_dtype);
      detail::ChunkIndex chunks(fqn, tm, t->shape.size());
      plan_box(fqn, tm, chunks, Shape(t->shape.size(), 0), t->shape);
    } else {
      const auto& st = std::get<ShardedTensor>(entry.value);
      check_matches(fqn, tm, st.global_shape, st.dtype, options_.strict_dtype);
      for (const auto& shard : st.shards) check_shard(fqn, st, shard);
      if (st.shards.empty()) continue;
      detail::ChunkIndex chunks(fqn, tm, st.global_shape.size());  // once for all shards
      for (const auto& shard : st.shards) {
        plan_box(fqn, tm, chunks, shard.offsets, shard.local.shape);
      }
    }
  }
  return plan;
}

std::vector<LoadPlan> DefaultLoadPlanner::create_global_plan(std::vector<LoadPlan> all_plans) {
  return all_plans;
}

LoadPlan DefaultLoadPlanner::finish_plan(LoadPlan central_plan) { return central_plan; }

void DefaultLoadPlanner::load_bytes(const ReadItem& item, std::span<const std::byte> value) {
  StateValue* v = state_dict_ ? state_dict_->find(item.dest_index.fqn) : nullptr;
  if (v == nullptr) {
    throw Error(ErrorCode::kNotFound, item.dest_index.fqn, "not in the state dict being loaded");
  }
  auto* b = std::get_if<Bytes>(v);
  if (b == nullptr) {
    throw Error(ErrorCode::kMismatch, item.dest_index.fqn,
                "bytes were read for it, the state dict holds a tensor");
  }
  b->assign(value.begin(), value.end());
}

TensorView DefaultLoadPlanner::destination(const ReadItem& item) const {
  const MetadataIndex& dest = item.dest_index;
  const StateValue* v = state_dict_ ? state_dict_->find(dest.fqn) : nullptr;
  if (v == nullptr) {
    throw Error(ErrorCode::kNotFound, dest.fqn, "not in the state dict being loaded");
  }
  if (const auto* t = std::get_if<TensorView>(v)) return *t;
  if (const auto* st = std::get_if<ShardedTensor>(v)) {
    if (dest.offset) {
      const auto shard = detail::find_chunk_at(
          st->shards.size(), [&](std::size_t i) -> const Shape& { return st->shards[i].offsets; },
          *dest.offset, std::nullopt);
      if (shard) return st->shards[*shard].local;
    }
    throw Error(ErrorCode::kNotFound, dest.fqn,
                "no local shard at offsets " + (dest.offset ? shape_str(*dest.offset) : "[]"));
  }
  throw Error(ErrorCode::kMismatch, dest.fqn, "a tensor was read for it, the state dict holds bytes");
}

TensorView DefaultLoadPlanner::resolve_tensor(const ReadItem& item) {
  TensorView dest = destination(item);
  const auto from_it = cast_from_.find(item.dest_index.fqn);
  if (from_it == cast_from_.end() || from_it->second == dest.dtype) return dest;
  // A cast create_local_plan allowed: read into a buffer of the stored
  // dtype, shaped as the destination.
  const DType from = from_it->second;
  if (options_.strict_dtype || !detail::is_castable_float(from) ||
      !detail::is_castable_float(dest.dtype)) {
    return dest;  // the reader names the mismatch
  }
  CastBuffer& cast = casts_[item.dest_index];
  if (cast.stored.empty()) {
    cast.stored.resize(static_cast<std::size_t>(dest.numel()) * dtype_size(from));
  }
  ++cast.uncommitted;
  return TensorView{cast.stored.data(), from, dest.shape};
}

void DefaultLoadPlanner::commit_tensor(const ReadItem& item, const TensorView& tensor) {
  auto it = casts_.find(item.dest_index);
  if (it == casts_.end()) return;
  detail::cast_box(tensor, destination(item), item.dest_offsets, item.lengths);
  if (--it->second.uncommitted == 0) casts_.erase(it);
}

// ---------------------------------------------------------------------------

std::vector<ReadItem> read_items_for_box(const std::string& fqn,
                                         const TensorStorageMetadata& stored,
                                         const MetadataIndex& dest_index,
                                         const ChunkStorageMetadata& dest) {
  std::vector<std::size_t> positions;
  detail::ChunkIndex chunks(fqn, stored, dest.offsets.size());
  chunks.find_intersecting(dest.offsets, dest.sizes, positions);  // checks the box's rank
  std::vector<ReadItem> items;
  items.reserve(positions.size());
  append_read_items(items, fqn, stored, &dest_index, dest.offsets, dest.sizes, positions);
  return items;
}

}  // namespace ringckpt
