// load_planner.cpp — DCP's default load planner: each requested tensor or
// shard is read from the stored chunks it intersects (resharding from any
// world size to any other).
#include "ringckpt/default_planner.hpp"

#include <algorithm>
#include <cstdint>
#include <deque>
#include <span>
#include <string>
#include <variant>

#include "format/dtype_cast.hpp"
#include "format/huge_pages.hpp"
#include "format/message_text.hpp"
#include "format/tensor_geometry.hpp"
#include "plan/chunk_index.hpp"
#include "plan/plan_validation.hpp"
#include "ringckpt/error.hpp"

namespace ringckpt {
namespace {

// Reserves `n` elements of `v`, backed by huge pages where the kernel will:
// a resharding plan's items fill hundreds of MB, written once, and faulting
// them in 4 KiB at a time costs more than making them.
template <typename T>
void reserve_advised(std::vector<T>& v, std::size_t n) {
  v.reserve(n);
  // Below two huge pages a vector may sit in the malloc heap: left alone.
  const std::size_t bytes = n * sizeof(T);
  if (bytes >= 2 * detail::kHugePageBytes) detail::advise_huge_pages(v.data(), bytes);
}

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

ReadItem bytes_read_item(const Fqn& fqn) {
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
void append_read_items(std::vector<ReadItem>& out, const Fqn& fqn,
                       const TensorStorageMetadata& stored, const MetadataIndex* dest_index,
                       const Shape& dest_offsets, const Shape& dest_sizes,
                       std::span<const std::size_t> positions) {
  const std::size_t ndim = dest_offsets.size();
  for (std::size_t c : positions) {
    const auto& chunk = stored.chunks[c];
    Shape at_dest(ndim), at_storage(ndim), lengths(ndim);  // in place up to kInline dims
    for (std::size_t d = 0; d < ndim; ++d) {  // no overflow: see REQUIRES
      const std::int64_t lo = std::max(chunk.offsets[d], dest_offsets[d]);
      const std::int64_t hi = std::min(chunk.offsets[d] + chunk.sizes[d],
                                       dest_offsets[d] + dest_sizes[d]);
      at_dest[d] = lo - dest_offsets[d];
      at_storage[d] = lo - chunk.offsets[d];
      lengths[d] = hi - lo;
    }
    // Made in place from its members: each byte of the item written once.
    out.emplace_back(LoadItemType::TENSOR,
                     dest_index ? *dest_index : MetadataIndex{fqn, dest_offsets, std::nullopt},
                     std::move(at_dest), MetadataIndex{fqn, chunk.offsets, c},
                     std::move(at_storage), std::move(lengths));
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
  // Two passes, so that the plan's items are made once, in place, in a
  // vector reserved to their exact count: the first checks every entry and
  // finds the chunks each box meets, the second makes the items.
  // A box's items share the name of its entry: one Fqn (one string) for
  // every item of every shard of a tensor.
  struct Box {
    const Fqn* fqn;  // in names
    const TensorStorageMetadata* stored;  // null: a bytes entry
    const Shape* offsets;                 // null: the whole tensor (zeros)
    const Shape* sizes;
    std::size_t positions_end;  // its chunks: positions[previous end, positions_end)
  };
  std::vector<Box> boxes;
  std::vector<std::size_t> positions;  // the chunks meeting each box, box after box
  std::deque<Fqn> names;               // stable addresses: the boxes point into it
  {
    // Reserved up front (a page is touched only as it fills): a box per
    // shard, and chunks + boxes meetings per tensor, which bounds them when
    // both are cut along one dimension (a finer cut only grows the vector).
    std::size_t box_count = 0, meeting_count = 0;
    for (const auto& entry : *state_dict_) {
      const auto* st = std::get_if<ShardedTensor>(&entry.value);
      const std::size_t shards = st ? st->shards.size() : 1;
      box_count += shards;
      auto it = metadata_->state_dict_metadata.find(entry.fqn);
      if (it == metadata_->state_dict_metadata.end()) continue;
      if (const auto* tm = std::get_if<TensorStorageMetadata>(&it->second)) {
        meeting_count += shards + tm->chunks.size();
      }
    }
    reserve_advised(boxes, box_count);
    reserve_advised(positions, meeting_count);
  }
  for (const auto& entry : *state_dict_) {
    const std::string& fqn = entry.fqn;
    const Fqn* name = nullptr;  // made once an entry is to be read
    auto named = [&] { return name ? name : (name = &names.emplace_back(fqn)); };
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
      boxes.push_back({named(), nullptr, nullptr, nullptr, positions.size()});
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
      chunks.find_intersecting(Shape(t->shape.size(), 0), t->shape, positions);
      boxes.push_back({named(), &tm, nullptr, &t->shape, positions.size()});
    } else {
      const auto& st = std::get<ShardedTensor>(entry.value);
      check_matches(fqn, tm, st.global_shape, st.dtype, options_.strict_dtype);
      for (const auto& shard : st.shards) check_shard(fqn, st, shard);
      if (st.shards.empty()) continue;
      detail::ChunkIndex chunks(fqn, tm, st.global_shape.size());  // once for all shards
      for (const auto& shard : st.shards) {
        chunks.find_intersecting(shard.offsets, shard.local.shape, positions);
        boxes.push_back({named(), &tm, &shard.offsets, &shard.local.shape, positions.size()});
      }
    }
  }
  LoadPlan plan;
  std::size_t count = positions.size();
  for (const Box& box : boxes) count += box.stored == nullptr;
  reserve_advised(plan.items, count);
  std::size_t begin = 0;
  for (const Box& box : boxes) {
    if (box.stored == nullptr) {
      plan.items.push_back(bytes_read_item(*box.fqn));
      continue;
    }
    const std::span<const std::size_t> found(positions.data() + begin, box.positions_end - begin);
    begin = box.positions_end;
    if (box.offsets != nullptr) {
      append_read_items(plan.items, *box.fqn, *box.stored, nullptr, *box.offsets, *box.sizes,
                        found);
    } else {
      append_read_items(plan.items, *box.fqn, *box.stored, nullptr, Shape(box.sizes->size(), 0),
                        *box.sizes, found);
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

std::vector<ReadItem> read_items_for_box(const Fqn& fqn,
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
