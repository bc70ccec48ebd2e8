// save_planner.cpp — DCP's default save planner: a plan item per tensor,
// shard and blob; the global plan checks that ranks agree, drops replicas
// (optionally) and builds the metadata.
#include "ringckpt/default_planner.hpp"

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>

#include "format/message_text.hpp"
#include "format/tensor_geometry.hpp"
#include "plan/plan_validation.hpp"
#include "ringckpt/error.hpp"

namespace ringckpt {
namespace {

using detail::check_shard;
using detail::shape_str;
using detail::tensor_str;

// ---------------------------------------------------------------------------
// Save planning.

bool is_bytes(const WriteItem& item) { return item.type == WriteItemType::BYTE_IO; }

// Appends the item that saves t whole.
void add_tensor_item(std::vector<WriteItem>& items, const std::string& fqn, const TensorView& t) {
  if (std::any_of(t.shape.begin(), t.shape.end(), [](std::int64_t d) { return d < 0; })) {
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
// lowest rank; to_lowest_rank keeps every one on the lowest rank that holds
// it instead. Within a rank nothing is removed, so a rank's own duplicates
// still reach validation. Returns whether any item was removed.
bool dedup_replicated(std::vector<SavePlan>& plans, bool to_lowest_rank) {
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
    std::size_t best = g.rank;  // the lowest holder: ranks are visited in order
    for (std::size_t r : g.others) {
      if (to_lowest_rank) break;
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
}  // namespace

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

void detail::check_plans_consistent(const std::vector<SavePlan>& plans) {
  check_consistent(plans);
}

std::pair<std::vector<SavePlan>, Metadata> DefaultSavePlanner::create_global_plan(
    std::vector<SavePlan> all_plans) {
  std::optional<Metadata> built = build_metadata_unique(all_plans);
  if (!built) {
    check_consistent(all_plans);
    if (options_.dedup_replicated) {
      dedup_replicated(all_plans, options_.dedup_save_to_lowest_rank);
    }
    built = build_metadata(all_plans, items_by_fqn(all_plans));
  }
  Metadata metadata = std::move(*built);
  // validate_global_plan's other half (each item described by the metadata,
  // as its kind) holds by construction: build_metadata entered every item's
  // fqn as the kind that check_consistent saw all its items agree on.
  detail::validate_tensors(metadata);
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
    const auto shard = detail::find_chunk_at(
        st->shards.size(), [&](std::size_t i) -> const Shape& { return st->shards[i].offsets; },
        *index.offset, index.index);
    if (shard) return st->shards[*shard].local.bytes();
    throw Error(ErrorCode::kNotFound, index.fqn,
                "no local shard at offsets " + shape_str(*index.offset));
  }
  const auto& b = std::get<Bytes>(*value);
  return {b.data(), b.size()};
}


}  // namespace ringckpt
