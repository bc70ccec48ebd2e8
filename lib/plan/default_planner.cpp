// default_planner.cpp — DCP's default save and load planners, and the check
// that a global save plan tiles every tensor exactly once.
#include "ringckpt/default_planner.hpp"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>

#include "format/message_text.hpp"
#include "ringckpt/error.hpp"

namespace ringckpt {
namespace {

// Ranks that split more dimensions than this cannot be checked: each chunk
// contributes 2^d corners.
constexpr std::size_t kMaxSplitDims = 16;

// ---------------------------------------------------------------------------
// Formatting for messages.


std::string shape_str(const Shape& shape) { return detail::shape_string(shape, ", "); }

std::string tensor_str(const Shape& shape, DType dtype) {
  return shape_str(shape) + " " + std::string(dtype_name(dtype));
}

std::string chunk_str(const Shape& offsets, const Shape& sizes) {
  return "offsets " + shape_str(offsets) + " sizes " + shape_str(sizes);
}

std::string chunk_str(const ChunkStorageMetadata& chunk) {
  return chunk_str(chunk.offsets, chunk.sizes);
}

std::string u128_str(unsigned __int128 v) {
  if (v == 0) return "0";
  std::string out;
  while (v != 0) {
    out.insert(out.begin(), static_cast<char>('0' + static_cast<int>(v % 10)));
    v /= 10;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Shapes and boxes.

Shape zeros(std::size_t ndim) { return Shape(ndim, 0); }

bool has_negative(const Shape& shape) {
  return std::any_of(shape.begin(), shape.end(), [](std::int64_t d) { return d < 0; });
}

// The number of elements of `shape`, or nullopt if a dimension is negative or
// the product does not fit in int64.
std::optional<std::int64_t> checked_numel(const Shape& shape) {
  std::int64_t n = 1;
  for (std::int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) return std::nullopt;
  }
  return n;
}

// True if the box [offsets, offsets + sizes) has the rank of `global` and lies
// inside [0, global) in every dimension. Pre: global has no negative dimension.
bool box_within(const Shape& offsets, const Shape& sizes, const Shape& global) {
  if (offsets.size() != global.size() || sizes.size() != global.size()) return false;
  for (std::size_t d = 0; d < global.size(); ++d) {
    // global[d] - sizes[d] cannot overflow: both are non-negative.
    if (offsets[d] < 0 || sizes[d] < 0 || offsets[d] > global[d] - sizes[d]) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------
// The signed-corner test.
//
// The indicator of a box [lo, hi) is the sum over its 2^d corners c of
// sign(c) * H(x >= c), where sign(c) = (-1)^(number of coordinates taken from
// hi) and H(x >= c) is the orthant indicator. Orthant indicators at distinct
// points are linearly independent, so boxes whose indicators sum to that of
// the global box (exactly-once tiling) are recognised by every point's summed
// weight being zero.

class CornerSum {
 public:
  static constexpr std::size_t kGlobal = static_cast<std::size_t>(-1);

  explicit CornerSum(std::vector<std::size_t> dims) : dims_(std::move(dims)) {}

  // Adds weight * indicator of the box [lo, hi), restricted to dims_; `owner`
  // names the chunk (kGlobal for the global box).
  void add_box(const Shape& lo, const Shape& hi, int weight, std::size_t owner) {
    const std::size_t k = dims_.size();
    for (std::uint32_t mask = 0; mask < (std::uint32_t{1} << k); ++mask) {
      for (std::size_t j = 0; j < k; ++j) {
        coords_.push_back(((mask >> j) & 1) ? hi[dims_[j]] : lo[dims_[j]]);
      }
      weights_.push_back(std::popcount(mask) % 2 == 0 ? weight : -weight);
      owners_.push_back(owner);
    }
  }

  struct Verdict {
    bool exact = true;                 // every aggregated weight is zero
    std::optional<std::size_t> chunk;  // a chunk at a point of nonzero weight
  };

  // Aggregates equal points (by sorting) and reports the first nonzero one.
  Verdict verdict() const {
    const std::size_t k = dims_.size();
    std::vector<std::size_t> order(weights_.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    auto point = [&](std::size_t i) { return coords_.begin() + static_cast<std::ptrdiff_t>(i * k); };
    auto less = [&](std::size_t a, std::size_t b) {
      return std::lexicographical_compare(point(a), point(a) + static_cast<std::ptrdiff_t>(k),
                                          point(b), point(b) + static_cast<std::ptrdiff_t>(k));
    };
    std::sort(order.begin(), order.end(), less);

    Verdict v;
    for (std::size_t begin = 0; begin < order.size();) {
      std::size_t end = begin + 1;
      while (end < order.size() && !less(order[begin], order[end])) ++end;
      std::int64_t sum = 0;
      std::optional<std::size_t> chunk;
      for (std::size_t i = begin; i < end; ++i) {
        sum += weights_[order[i]];
        if (owners_[order[i]] != kGlobal && !chunk) chunk = owners_[order[i]];
      }
      if (sum != 0) {
        v.exact = false;
        if (chunk) {
          v.chunk = chunk;
          return v;
        }
      }
      begin = end;
    }
    return v;
  }

 private:
  std::vector<std::size_t> dims_;     // the dimensions that take part
  std::vector<std::int64_t> coords_;  // dims_.size() coordinates per corner
  std::vector<int> weights_;
  std::vector<std::size_t> owners_;
};

Shape box_end(const ChunkStorageMetadata& chunk) {
  Shape hi(chunk.offsets.size());
  for (std::size_t d = 0; d < hi.size(); ++d) hi[d] = chunk.offsets[d] + chunk.sizes[d];
  return hi;
}

// Checks that the chunks of `tm` lie inside its global shape and tile it
// exactly once.
void validate_tensor(const std::string& fqn, const TensorStorageMetadata& tm) {
  const Shape& global = tm.size;
  const std::size_t ndim = global.size();
  const auto total = checked_numel(global);
  if (!total) {
    throw Error(ErrorCode::kInvalidArgument, fqn,
                "global shape " + shape_str(global) + " is negative or too large");
  }
  for (const auto& chunk : tm.chunks) {
    if (chunk.offsets.size() != ndim || chunk.sizes.size() != ndim) {
      throw Error(ErrorCode::kInvalidArgument, fqn,
                  "chunk " + chunk_str(chunk) + " does not have the " + std::to_string(ndim) +
                      " dimensions of the global shape " + shape_str(global));
    }
    if (!box_within(chunk.offsets, chunk.sizes, global)) {
      throw Error(ErrorCode::kInvalidArgument, fqn,
                  "chunk " + chunk_str(chunk) + " lies outside the global shape " +
                      shape_str(global));
    }
  }
  // In bounds, so every chunk of an empty tensor is empty: nothing to cover.
  if (*total == 0) return;
  // One chunk in bounds tiles the tensor exactly when it is the whole tensor
  // (the common case: a tensor saved whole). Anything else takes the full test.
  if (tm.chunks.size() == 1 && tm.chunks[0].sizes == global &&
      std::all_of(tm.chunks[0].offsets.begin(), tm.chunks[0].offsets.end(),
                  [](std::int64_t o) { return o == 0; })) {
    return;
  }

  // Empty chunks cancel in the corner sum; leave them out. A non-empty chunk
  // in bounds holds at most *total elements, so its numel does not overflow.
  std::vector<std::size_t> live;
  for (std::size_t i = 0; i < tm.chunks.size(); ++i) {
    if (numel(tm.chunks[i].sizes) > 0) live.push_back(i);
  }
  // A dimension that every chunk spans fully factors out of every indicator:
  // the test holds iff it holds without it.
  std::vector<std::size_t> dims;
  for (std::size_t d = 0; d < ndim; ++d) {
    const bool split = std::any_of(live.begin(), live.end(), [&](std::size_t i) {
      return tm.chunks[i].offsets[d] != 0 || tm.chunks[i].sizes[d] != global[d];
    });
    if (split) dims.push_back(d);
  }
  if (dims.size() > kMaxSplitDims) {
    throw Error(ErrorCode::kInvalidArgument, fqn,
                "chunks split " + std::to_string(dims.size()) + " dimensions; at most " +
                    std::to_string(kMaxSplitDims) + " can be checked");
  }

  CornerSum corners(dims);
  for (std::size_t i : live) corners.add_box(tm.chunks[i].offsets, box_end(tm.chunks[i]), 1, i);
  corners.add_box(zeros(ndim), global, -1, CornerSum::kGlobal);
  const auto verdict = corners.verdict();
  if (verdict.exact) return;

  unsigned __int128 stored = 0;
  for (std::size_t i : live) stored += static_cast<std::uint64_t>(numel(tm.chunks[i].sizes));
  const auto want = static_cast<unsigned __int128>(*total);
  std::string msg = stored > want   ? "chunks overlap"
                    : stored < want ? "chunks leave a gap"
                                    : "chunks overlap and leave gaps";
  msg += " (they hold " + u128_str(stored) + " elements of " + u128_str(want) + ")";
  if (verdict.chunk) msg += "; see chunk " + chunk_str(tm.chunks[*verdict.chunk]);
  throw Error(ErrorCode::kInvalidArgument, fqn, msg);
}

// ---------------------------------------------------------------------------
// Save planning.

bool is_bytes(const WriteItem& item) { return item.type == WriteItemType::BYTE_IO; }

// Appends the item that saves t whole.
void add_tensor_item(std::vector<WriteItem>& items, const std::string& fqn, const TensorView& t) {
  if (has_negative(t.shape)) {
    throw Error(ErrorCode::kInvalidArgument, fqn,
                "shape " + shape_str(t.shape) + " has a negative dimension");
  }
  WriteItem& item = items.emplace_back();
  item.index.fqn = fqn;
  item.index.offset.emplace(t.shape.size(), 0);
  item.type = WriteItemType::TENSOR;
  TensorWriteData& td = item.tensor_data.emplace();
  td.chunk.offsets.assign(t.shape.size(), 0);
  td.chunk.sizes = t.shape;
  td.properties.dtype = t.dtype;
  td.size = t.shape;
}

// Checks a shard against its tensor's dtype and global shape.
void check_shard(const std::string& fqn, const ShardedTensor& st, const Shard& shard) {
  if (shard.local.dtype != st.dtype) {
    throw Error(ErrorCode::kInvalidArgument, fqn,
                "shard at offsets " + shape_str(shard.offsets) + " is " +
                    std::string(dtype_name(shard.local.dtype)) + ", the tensor is " +
                    std::string(dtype_name(st.dtype)));
  }
  if (has_negative(st.global_shape) ||
      !box_within(shard.offsets, shard.local.shape, st.global_shape)) {
    throw Error(ErrorCode::kInvalidArgument, fqn,
                "shard at offsets " + shape_str(shard.offsets) + " of shape " +
                    shape_str(shard.local.shape) + " lies outside the global shape " +
                    shape_str(st.global_shape));
  }
}

WriteItem shard_item(const std::string& fqn, const ShardedTensor& st, const Shard& shard) {
  check_shard(fqn, st, shard);
  WriteItem item;
  item.index = MetadataIndex{fqn, shard.offsets, std::nullopt};
  item.type = WriteItemType::SHARD;
  item.tensor_data = TensorWriteData{ChunkStorageMetadata{shard.offsets, shard.local.shape},
                                     TensorProperties{st.dtype}, st.global_shape};
  return item;
}

WriteItem bytes_item(const std::string& fqn, const Bytes& b) {
  WriteItem item;
  item.index = MetadataIndex{fqn, std::nullopt, std::nullopt};
  item.type = WriteItemType::BYTE_IO;
  item.bytes_io_size = b.size();
  return item;
}

std::string kind_str(const WriteItem& item) {
  return is_bytes(item) ? std::string("bytes")
                        : tensor_str(item.tensor_data->size, item.tensor_data->properties.dtype);
}

// A MetadataIndex by reference, hashed and compared as MetadataIndex compares
// (fqn and offset; the index hint takes no part).
struct IndexRef {
  const MetadataIndex* index;
  friend bool operator==(const IndexRef& a, const IndexRef& b) { return *a.index == *b.index; }
};

struct IndexRefHash {
  std::size_t operator()(const IndexRef& r) const noexcept {
    std::size_t h = std::hash<std::string_view>{}(r.index->fqn);
    if (r.index->offset) {
      h ^= 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
      for (std::int64_t d : *r.index->offset) {
        h ^= std::hash<std::int64_t>{}(d) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
      }
    }
    return h;
  }
};

std::size_t total_items(const std::vector<SavePlan>& plans) {
  std::size_t n = 0;
  for (const auto& plan : plans) n += plan.items.size();
  return n;
}

// Every rank must agree, for each fqn, on tensor-or-bytes and on the dtype and
// global shape of a tensor.
void check_consistent(const std::vector<SavePlan>& plans) {
  struct First {
    int rank;
    const WriteItem* item;
  };
  std::unordered_map<std::string_view, First> first;
  first.reserve(total_items(plans));
  for (std::size_t r = 0; r < plans.size(); ++r) {
    for (const auto& item : plans[r].items) {
      if (!is_bytes(item) && !item.tensor_data) {
        throw Error(ErrorCode::kInvalidArgument, item.index.fqn,
                    "rank " + std::to_string(r) + " plans a tensor item without tensor data");
      }
      auto [it, inserted] = first.try_emplace(item.index.fqn, First{static_cast<int>(r), &item});
      if (inserted) continue;
      const WriteItem& a = *it->second.item;
      const bool same = is_bytes(a) == is_bytes(item) &&
                        (is_bytes(a) || (a.tensor_data->size == item.tensor_data->size &&
                                         a.tensor_data->properties == item.tensor_data->properties));
      if (!same) {
        throw Error(ErrorCode::kInvalidArgument, item.index.fqn,
                    "rank " + std::to_string(it->second.rank) + " saves it as " + kind_str(a) +
                        ", rank " + std::to_string(r) + " as " + kind_str(item));
      }
    }
  }
}

// Keeps each item that several ranks hold (same MetadataIndex) on one of them:
// the one with the fewest planned bytes so far. Items a single rank holds are
// counted first (that rank writes them regardless); replicated items are then
// placed greedily in order of first appearance (rank-major), ties to the
// lowest rank. Within a rank nothing is removed, so a rank's own duplicates
// still reach validation. Returns whether any item was removed.
bool dedup_replicated(std::vector<SavePlan>& plans) {
  struct Group {
    std::size_t rank;                 // the first rank that holds it
    std::vector<std::size_t> others;  // later ranks, ascending, distinct
    const WriteItem* first;
    std::size_t last_rank() const { return others.empty() ? rank : others.back(); }
  };
  std::vector<Group> groups;
  groups.reserve(total_items(plans));
  std::unordered_map<IndexRef, std::size_t, IndexRefHash> group_of;
  group_of.reserve(total_items(plans));
  std::vector<std::vector<std::size_t>> item_group(plans.size());
  for (std::size_t r = 0; r < plans.size(); ++r) {
    item_group[r].reserve(plans[r].items.size());
    for (const auto& item : plans[r].items) {
      auto [it, inserted] = group_of.try_emplace(IndexRef{&item.index}, groups.size());
      if (inserted) {
        groups.push_back(Group{r, {}, &item});
      } else {
        Group& g = groups[it->second];
        const WriteItem& a = *g.first;
        if (!is_bytes(a) && a.tensor_data->chunk.sizes != item.tensor_data->chunk.sizes) {
          throw Error(ErrorCode::kInvalidArgument, item.index.fqn,
                      "ranks " + std::to_string(g.rank) + " and " + std::to_string(r) +
                          " save different chunks at offsets " +
                          shape_str(a.tensor_data->chunk.offsets) + ": sizes " +
                          shape_str(a.tensor_data->chunk.sizes) + " and " +
                          shape_str(item.tensor_data->chunk.sizes));
        }
        if (g.last_rank() != r) g.others.push_back(r);
      }
      item_group[r].push_back(it->second);
    }
  }

  std::vector<std::uint64_t> planned(plans.size(), 0);
  for (const auto& g : groups) {
    if (g.others.empty()) planned[g.rank] += g.first->nbytes();
  }
  std::vector<std::size_t> keeper(groups.size());
  for (std::size_t gi = 0; gi < groups.size(); ++gi) {
    const Group& g = groups[gi];
    std::size_t best = g.rank;
    for (std::size_t r : g.others) {
      if (planned[r] < planned[best]) best = r;  // strict: ties keep the lower rank
    }
    if (!g.others.empty()) planned[best] += g.first->nbytes();
    keeper[gi] = best;
  }

  bool removed = false;
  for (std::size_t r = 0; r < plans.size(); ++r) {
    auto& items = plans[r].items;
    const auto& groups_of_items = item_group[r];
    std::size_t keep = 0;
    for (std::size_t i = 0; i < items.size(); ++i) keep += keeper[groups_of_items[i]] == r;
    if (keep == items.size()) continue;  // nothing moves to another rank
    removed = true;
    std::vector<WriteItem> kept;
    kept.reserve(keep);
    for (std::size_t i = 0; i < items.size(); ++i) {
      if (keeper[groups_of_items[i]] == r) kept.push_back(std::move(items[i]));
    }
    items = std::move(kept);
  }
  return removed;
}

// Every item of the plans, ordered by fqn, each fqn's items in plan order
// (rank-major).
std::vector<WriteItem*> items_by_fqn(std::vector<SavePlan>& plans) {
  std::vector<WriteItem*> order;
  order.reserve(total_items(plans));
  for (auto& plan : plans) {
    for (auto& item : plan.items) order.push_back(&item);
  }
  std::stable_sort(order.begin(), order.end(), [](const WriteItem* a, const WriteItem* b) {
    return a->index.fqn < b->index.fqn;
  });
  return order;
}

// The metadata of the (deduplicated) plans. Sets each tensor item's index
// hint to its chunk's position. Pre: check_consistent passed; `order` is
// items_by_fqn(plans), so that the map is filled in key order, each insert at
// its end, and chunk positions follow plan order.
Metadata build_metadata(std::vector<SavePlan>& plans, const std::vector<WriteItem*>& order) {
  Metadata md;
  auto& items = md.state_dict_metadata;
  for (std::size_t k = 0; k < order.size();) {
    WriteItem& head = *order[k];
    std::size_t end = k + 1;
    while (end < order.size() && order[end]->index.fqn == head.index.fqn) ++end;
    // The kind and shape of the first item: check_consistent saw the rest agree.
    if (is_bytes(head)) {
      items.emplace_hint(items.end(), head.index.fqn, BytesStorageMetadata{});
    } else {
      const TensorWriteData& td = *head.tensor_data;
      auto it = items.emplace_hint(items.end(), head.index.fqn,
                                   TensorStorageMetadata{td.properties, td.size, {}});
      auto& tm = std::get<TensorStorageMetadata>(it->second);
      tm.chunks.reserve(end - k);
      for (std::size_t i = k; i < end; ++i) {
        WriteItem& item = *order[i];
        if (is_bytes(item)) continue;  // not reached: check_consistent
        item.index.index = tm.chunks.size();
        tm.chunks.push_back(item.tensor_data->chunk);
      }
    }
    k = end;
  }
  for (auto& plan : plans) {
    for (const auto& [key, value] : plan.planner_data) md.planner_data.try_emplace(key, value);
  }
  return md;
}

// check_consistent, dedup_replicated and build_metadata at once for plans in
// which no two items share an fqn (the common case): there the only fault
// check_consistent can find is a tensor item without tensor data, and there is
// nothing to deduplicate. nullopt if two items share an fqn (having changed
// nothing but index hints, which build_metadata sets again).
std::optional<Metadata> build_metadata_unique(std::vector<SavePlan>& plans) {
  Metadata md;
  auto& items = md.state_dict_metadata;
  for (std::size_t r = 0; r < plans.size(); ++r) {
    for (auto& item : plans[r].items) {
      if (!is_bytes(item) && !item.tensor_data) {
        throw Error(ErrorCode::kInvalidArgument, item.index.fqn,
                    "rank " + std::to_string(r) + " plans a tensor item without tensor data");
      }
      auto [it, inserted] = items.try_emplace(item.index.fqn);
      // The hints set so far are set again by build_metadata.
      if (!inserted) return std::nullopt;
      if (is_bytes(item)) {
        it->second = BytesStorageMetadata{};
      } else {
        const TensorWriteData& td = *item.tensor_data;
        auto& tm = std::get<TensorStorageMetadata>(it->second);
        tm.properties = td.properties;
        tm.size = td.size;
        tm.chunks.push_back(td.chunk);
        item.index.index = 0;
      }
    }
  }
  for (auto& plan : plans) {
    for (const auto& [key, value] : plan.planner_data) md.planner_data.try_emplace(key, value);
  }
  return md;
}

// The chunk test of validate_global_plan, for every tensor of `metadata`.
void validate_tensors(const Metadata& metadata) {
  for (const auto& [fqn, sm] : metadata.state_dict_metadata) {
    if (const auto* tm = std::get_if<TensorStorageMetadata>(&sm)) validate_tensor(fqn, *tm);
  }
}

// ---------------------------------------------------------------------------
// Load planning.

std::string value_kind(const StateValue& v) {
  return std::holds_alternative<Bytes>(v) ? "bytes" : "a tensor";
}

// Checks that the state dict asks for the shape and dtype the checkpoint holds.
void check_matches(const std::string& fqn, const TensorStorageMetadata& tm, const Shape& shape,
                   DType dtype) {
  if (tm.size != shape || tm.properties.dtype != dtype) {
    throw Error(ErrorCode::kMismatch, fqn,
                "checkpoint holds shape " + tensor_str(tm.size, tm.properties.dtype) +
                    ", the state dict asks for " + tensor_str(shape, dtype));
  }
}

ReadItem bytes_read_item(const std::string& fqn) {
  ReadItem item;
  item.type = LoadItemType::BYTE_IO;
  item.dest_index = MetadataIndex{fqn, std::nullopt, std::nullopt};
  item.storage_index = MetadataIndex{fqn, std::nullopt, std::nullopt};
  return item;
}

// read_items_for_box, appending to `out`: the destination box is
// [dest_offsets, dest_offsets + dest_sizes) of dest_index's tensor or shard,
// dest_index being {fqn, dest_offsets}.
void append_read_items(std::vector<ReadItem>& out, const std::string& fqn,
                       const TensorStorageMetadata& stored, const MetadataIndex* dest_index,
                       const Shape& dest_offsets, const Shape& dest_sizes) {
  const std::size_t ndim = dest_offsets.size();
  if (dest_sizes.size() != ndim) {
    throw Error(ErrorCode::kInvalidArgument, fqn,
                "destination box " + chunk_str(dest_offsets, dest_sizes) +
                    " has mismatched ranks");
  }
  for (std::size_t c = 0; c < stored.chunks.size(); ++c) {
    const auto& chunk = stored.chunks[c];
    if (chunk.offsets.size() != ndim || chunk.sizes.size() != ndim) {
      throw Error(ErrorCode::kMismatch, fqn,
                  "stored chunk " + chunk_str(chunk) + " does not have the " +
                      std::to_string(ndim) + " dimensions of the destination");
    }
    // Intersection [lo, hi) of the two boxes; empty if hi <= lo in any dim.
    // A 0-d box has no dimension and so always intersects.
    bool empty = false;
    for (std::size_t d = 0; d < ndim && !empty; ++d) {
      std::int64_t chunk_end = 0, dest_end = 0;
      if (__builtin_add_overflow(chunk.offsets[d], chunk.sizes[d], &chunk_end) ||
          __builtin_add_overflow(dest_offsets[d], dest_sizes[d], &dest_end)) {
        throw Error(ErrorCode::kInvalidArgument, fqn,
                    "box " + chunk_str(chunk) + " or " + chunk_str(dest_offsets, dest_sizes) +
                        " overflows");
      }
      empty = std::min(chunk_end, dest_end) <= std::max(chunk.offsets[d], dest_offsets[d]);
    }
    if (empty) continue;

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
    for (std::size_t d = 0; d < ndim; ++d) {  // no overflow: checked above
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

// ===========================================================================

void validate_global_plan(const std::vector<SavePlan>& plans, const Metadata& metadata) {
  validate_tensors(metadata);
  // Every planned item must be described by the metadata, as the same kind.
  for (const auto& plan : plans) {
    for (const auto& item : plan.items) {
      auto it = metadata.state_dict_metadata.find(item.index.fqn);
      if (it == metadata.state_dict_metadata.end()) {
        throw Error(ErrorCode::kInvalidArgument, item.index.fqn,
                    "planned for writing but missing from the metadata");
      }
      if (is_bytes(item) != std::holds_alternative<BytesStorageMetadata>(it->second)) {
        throw Error(ErrorCode::kInvalidArgument, item.index.fqn,
                    "planned as " + std::string(is_bytes(item) ? "bytes" : "a tensor") +
                        " but the metadata says otherwise");
      }
    }
  }
}

// ---------------------------------------------------------------------------
// DefaultSavePlanner

void DefaultSavePlanner::set_up_planner(const StateDict& state_dict, bool is_coordinator) {
  state_dict_ = &state_dict;
  is_coordinator_ = is_coordinator;
  plan_.reset();
}

SavePlan DefaultSavePlanner::create_local_plan() {
  if (state_dict_ == nullptr) {
    throw Error(ErrorCode::kInvalidArgument, "DefaultSavePlanner", "set_up_planner was not called");
  }
  SavePlan plan;
  plan.items.reserve(state_dict_->size());
  for (const auto& entry : *state_dict_) {
    if (const auto* t = std::get_if<TensorView>(&entry.value)) {
      add_tensor_item(plan.items, entry.fqn, *t);
    } else if (const auto* st = std::get_if<ShardedTensor>(&entry.value)) {
      for (const auto& shard : st->shards) plan.items.push_back(shard_item(entry.fqn, *st, shard));
    } else {
      plan.items.push_back(bytes_item(entry.fqn, std::get<Bytes>(entry.value)));
    }
  }
  return plan;
}

std::pair<std::vector<SavePlan>, Metadata> DefaultSavePlanner::create_global_plan(
    std::vector<SavePlan> all_plans) {
  std::optional<Metadata> built = build_metadata_unique(all_plans);
  if (!built) {
    check_consistent(all_plans);
    if (options_.dedup_replicated) dedup_replicated(all_plans);
    built = build_metadata(all_plans, items_by_fqn(all_plans));
  }
  Metadata metadata = std::move(*built);
  // validate_global_plan's other half (each item described by the metadata,
  // as its kind) holds by construction: build_metadata entered every item's
  // fqn as the kind that check_consistent saw all its items agree on.
  validate_tensors(metadata);
  return {std::move(all_plans), std::move(metadata)};
}

SavePlan DefaultSavePlanner::finish_plan(SavePlan central_plan) {
  plan_ = central_plan;
  return central_plan;
}

ItemData DefaultSavePlanner::resolve_data(const WriteItem& item) {
  return ItemData::view(lookup_bytes(item.index));
}

std::span<const std::byte> DefaultSavePlanner::lookup_bytes(const MetadataIndex& index) const {
  const StateValue* value = state_dict_ ? state_dict_->find(index.fqn) : nullptr;
  if (value == nullptr) {
    throw Error(ErrorCode::kNotFound, index.fqn, "not in the state dict being saved");
  }
  if (const auto* t = std::get_if<TensorView>(value)) {
    if (index.offset && (index.offset->size() != t->shape.size() ||
                         std::any_of(index.offset->begin(), index.offset->end(),
                                     [](std::int64_t o) { return o != 0; }))) {
      throw Error(ErrorCode::kNotFound, index.fqn,
                  "a whole tensor has no chunk at offsets " + shape_str(*index.offset));
    }
    return t->bytes();
  }
  if (const auto* st = std::get_if<ShardedTensor>(value)) {
    if (!index.offset) {
      throw Error(ErrorCode::kNotFound, index.fqn, "a sharded tensor needs a shard offset");
    }
    // The hint is a chunk position; it names the shard only when it matches.
    if (index.index && *index.index < st->shards.size() &&
        st->shards[*index.index].offsets == *index.offset) {
      return st->shards[*index.index].local.bytes();
    }
    for (const auto& shard : st->shards) {
      if (shard.offsets == *index.offset) return shard.local.bytes();
    }
    throw Error(ErrorCode::kNotFound, index.fqn,
                "no local shard at offsets " + shape_str(*index.offset));
  }
  const auto& b = std::get<Bytes>(*value);
  return {b.data(), b.size()};
}

// ---------------------------------------------------------------------------
// DefaultLoadPlanner

void DefaultLoadPlanner::set_up_planner(StateDict& state_dict, const Metadata& metadata,
                                        bool is_coordinator) {
  state_dict_ = &state_dict;
  metadata_ = &metadata;
  is_coordinator_ = is_coordinator;
}

LoadPlan DefaultLoadPlanner::create_local_plan() {
  if (state_dict_ == nullptr || metadata_ == nullptr) {
    throw Error(ErrorCode::kInvalidArgument, "DefaultLoadPlanner", "set_up_planner was not called");
  }
  LoadPlan plan;
  plan.items.reserve(state_dict_->size());
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
    if (const auto* t = std::get_if<TensorView>(&entry.value)) {
      check_matches(fqn, tm, t->shape, t->dtype);
      append_read_items(plan.items, fqn, tm, nullptr, zeros(t->shape.size()), t->shape);
    } else {
      const auto& st = std::get<ShardedTensor>(entry.value);
      check_matches(fqn, tm, st.global_shape, st.dtype);
      for (const auto& shard : st.shards) {
        check_shard(fqn, st, shard);
        append_read_items(plan.items, fqn, tm, nullptr, shard.offsets, shard.local.shape);
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

TensorView DefaultLoadPlanner::resolve_tensor(const ReadItem& item) {
  const MetadataIndex& dest = item.dest_index;
  const StateValue* v = state_dict_ ? state_dict_->find(dest.fqn) : nullptr;
  if (v == nullptr) {
    throw Error(ErrorCode::kNotFound, dest.fqn, "not in the state dict being loaded");
  }
  if (const auto* t = std::get_if<TensorView>(v)) return *t;
  if (const auto* st = std::get_if<ShardedTensor>(v)) {
    for (const auto& shard : st->shards) {
      if (dest.offset && shard.offsets == *dest.offset) return shard.local;
    }
    throw Error(ErrorCode::kNotFound, dest.fqn,
                "no local shard at offsets " + (dest.offset ? shape_str(*dest.offset) : "[]"));
  }
  throw Error(ErrorCode::kMismatch, dest.fqn, "a tensor was read for it, the state dict holds bytes");
}

void DefaultLoadPlanner::commit_tensor(const ReadItem&, const TensorView&) {}

// ---------------------------------------------------------------------------

std::vector<ReadItem> read_items_for_box(const std::string& fqn,
                                         const TensorStorageMetadata& stored,
                                         const MetadataIndex& dest_index,
                                         const ChunkStorageMetadata& dest) {
  std::vector<ReadItem> items;
  append_read_items(items, fqn, stored, &dest_index, dest.offsets, dest.sizes);
  return items;
}

}  // namespace ringckpt
