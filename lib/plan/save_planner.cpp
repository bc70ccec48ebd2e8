// save_planner.cpp — DCP's default save planner: a plan item per tensor,
// shard and blob; the global plan checks that ranks agree, drops replicas
// (optionally) and builds the metadata.
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


// Every item's fqn as a dense number, numbered in order of first appearance
// (rank-major).
struct FqnIds {
  std::vector<std::vector<std::uint32_t>> of;  // of[r][i] numbers plans[r].items[i]
  std::vector<const WriteItem*> first;         // first[id]: the first item so named
  std::vector<int> first_rank;                 // the rank of first[id]
};

// Numbers the fqns of `plans` and checks that every rank agrees, for each
// fqn, on tensor-or-bytes and on the dtype and global shape of a tensor.
// Ranks usually plan the same names in the same order, so an item is first
// compared with the fqn of the item at its position on the previous rank and
// looked up by hash only if that differs. first[] points into `plans`: valid
// until an item of it moves.
FqnIds number_fqns(const std::vector<SavePlan>& plans) {
  FqnIds ids;
  ids.of.resize(plans.size());
  std::unordered_map<std::string_view, std::uint32_t> by_name;
  for (std::size_t r = 0; r < plans.size(); ++r) {
    const auto& items = plans[r].items;
    const std::vector<std::uint32_t>* previous = r > 0 ? &ids.of[r - 1] : nullptr;
    ids.of[r].reserve(items.size());
    for (std::size_t i = 0; i < items.size(); ++i) {
      const WriteItem& item = items[i];
      if (!is_bytes(item) && !item.tensor_data) {
        throw Error(ErrorCode::kInvalidArgument, item.index.fqn,
                    "rank " + std::to_string(r) + " plans a tensor item without tensor data");
      }
      std::uint32_t id;
      if (previous && i < previous->size() &&
          ids.first[(*previous)[i]]->index.fqn == item.index.fqn) {
        id = (*previous)[i];
      } else {
        const auto [it, inserted] =
            by_name.try_emplace(item.index.fqn, static_cast<std::uint32_t>(ids.first.size()));
        id = it->second;
        if (inserted) {
          ids.first.push_back(&item);
          ids.first_rank.push_back(static_cast<int>(r));
          ids.of[r].push_back(id);
          continue;
        }
      }
      ids.of[r].push_back(id);
      const WriteItem& a = *ids.first[id];
      const bool same = is_bytes(a) == is_bytes(item) &&
                        (is_bytes(a) || (a.tensor_data->size == item.tensor_data->size &&
                                         a.tensor_data->properties == item.tensor_data->properties));
      if (!same) {
        throw Error(ErrorCode::kInvalidArgument, item.index.fqn,
                    "rank " + std::to_string(ids.first_rank[id]) + " saves it as " +
                        kind_str(a) + ", rank " + std::to_string(r) + " as " + kind_str(item));
      }
    }
  }
  return ids;
}

void check_consistent(const std::vector<SavePlan>& plans) { (void)number_fqns(plans); }

// Keeps each item that several ranks hold (same MetadataIndex) on one of them:
// the one with the fewest planned bytes so far. Items a single rank holds are
// counted first (that rank writes them regardless); replicated items are then
// placed greedily in order of first appearance (rank-major), ties to the
// lowest rank; to_lowest_rank keeps every one on the lowest rank that holds
// it instead. Within a rank nothing is removed, so a rank's own duplicates
// still reach validation. Returns whether any item was removed; ids.of
// follows the items removed (ids.first is stale afterwards).
// As number_fqns, an item is first compared with the group of the item at its
// position on the previous rank (a replicated item's), then looked up among
// its fqn's groups.
bool dedup_replicated(std::vector<SavePlan>& plans, FqnIds& ids, bool to_lowest_rank) {
  struct Group {
    std::uint32_t id;
    std::size_t rank;                 // the first rank that holds it
    std::vector<std::size_t> others;  // later ranks, ascending, distinct
    const WriteItem* first;
    std::size_t last_rank() const { return others.empty() ? rank : others.back(); }
  };
  std::vector<Group> groups;
  // The groups of one fqn by offset: `sorted` in increasing offset order, as
  // shards usually arrive (rank-major), a new one appended or found by binary
  // search; those that arrive out of order in `late`. O(log n) a lookup.
  using OffsetRef = const std::optional<Shape>*;  // into `plans`
  struct OffsetLess {
    bool operator()(OffsetRef a, OffsetRef b) const { return *a < *b; }
  };
  struct OffsetGroups {
    std::vector<std::uint32_t> sorted;
    std::map<OffsetRef, std::uint32_t, OffsetLess> late;
  };
  std::vector<OffsetGroups> by_offset(ids.first.size());
  const auto offset_of = [&](std::uint32_t gi) -> const std::optional<Shape>& {
    return groups[gi].first->index.offset;
  };
  std::vector<std::vector<std::uint32_t>> item_group(plans.size());
  for (std::size_t r = 0; r < plans.size(); ++r) {
    const auto& items = plans[r].items;
    const std::vector<std::uint32_t>* previous = r > 0 ? &item_group[r - 1] : nullptr;
    item_group[r].reserve(items.size());
    for (std::size_t i = 0; i < items.size(); ++i) {
      const WriteItem& item = items[i];
      const std::uint32_t id = ids.of[r][i];
      const std::optional<Shape>& offset = item.index.offset;
      std::uint32_t gi;
      if (previous && i < previous->size() && groups[(*previous)[i]].id == id &&
          offset_of((*previous)[i]) == offset) {
        gi = (*previous)[i];  // the same item as on the previous rank: replicated
      } else {
        OffsetGroups& known = by_offset[id];
        const bool after = known.sorted.empty() || offset_of(known.sorted.back()) < offset;
        std::optional<std::uint32_t> found;
        if (!after) {
          const auto at = std::lower_bound(
              known.sorted.begin(), known.sorted.end(), offset,
              [&](std::uint32_t g, const std::optional<Shape>& o) { return offset_of(g) < o; });
          if (offset_of(*at) == offset) found = *at;  // at != end: offset <= the last
        }
        if (!found && !known.late.empty()) {
          const auto it = known.late.find(&offset);
          if (it != known.late.end()) found = it->second;
        }
        if (!found) {
          gi = static_cast<std::uint32_t>(groups.size());
          groups.push_back(Group{id, r, {}, &item});
          if (after) known.sorted.push_back(gi);
          else known.late.emplace(&offset, gi);
          item_group[r].push_back(gi);
          continue;
        }
        gi = *found;
      }
      Group& g = groups[gi];
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
      item_group[r].push_back(gi);
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

  // Compacts each rank's items (and their numbers) in place, in plan order.
  bool removed = false;
  for (std::size_t r = 0; r < plans.size(); ++r) {
    auto& items = plans[r].items;
    auto& numbers = ids.of[r];
    const auto& groups_of_items = item_group[r];
    std::size_t kept = 0;
    for (std::size_t i = 0; i < items.size(); ++i) {
      if (keeper[groups_of_items[i]] != r) continue;
      if (kept != i) {
        items[kept] = std::move(items[i]);
        numbers[kept] = numbers[i];
      }
      ++kept;
    }
    if (kept == items.size()) continue;  // nothing moves to another rank
    removed = true;
    items.erase(items.begin() + static_cast<std::ptrdiff_t>(kept), items.end());
    numbers.resize(kept);
  }
  return removed;
}

// The place of each numbered fqn in fqn order (a permutation).
// REQUIRES: ids.first valid.
std::vector<std::uint32_t> fqn_positions(const FqnIds& ids) {
  std::vector<std::uint32_t> by_name(ids.first.size());
  for (std::uint32_t id = 0; id < by_name.size(); ++id) by_name[id] = id;
  std::sort(by_name.begin(), by_name.end(), [&](std::uint32_t a, std::uint32_t b) {
    return ids.first[a]->index.fqn < ids.first[b]->index.fqn;
  });
  std::vector<std::uint32_t> position(by_name.size());
  for (std::uint32_t k = 0; k < by_name.size(); ++k) position[by_name[k]] = k;
  return position;
}

// The metadata of the (deduplicated) plans. Sets each tensor item's index
// hint to its chunk's position. Pre: number_fqns passed; ids.of numbers the
// items of `plans`; position is fqn_positions(ids). The map is filled in key
// order, each insert at its end; each fqn's kind and shape are those of its
// first item in plan order (number_fqns saw the rest agree); its chunks
// follow plan order (rank-major), filled in one pass over the plans in order.
Metadata build_metadata(std::vector<SavePlan>& plans, const FqnIds& ids,
                        const std::vector<std::uint32_t>& position) {
  const std::size_t n = position.size();
  std::vector<std::size_t> count(n, 0);          // by place in fqn order
  std::vector<const WriteItem*> head(n, nullptr);  // its first item
  for (std::size_t r = 0; r < plans.size(); ++r) {
    for (std::size_t i = 0; i < plans[r].items.size(); ++i) {
      const std::uint32_t k = position[ids.of[r][i]];
      if (count[k]++ == 0) head[k] = &plans[r].items[i];
    }
  }
  Metadata md;
  auto& items = md.state_dict_metadata;
  std::vector<TensorStorageMetadata*> tensor(n, nullptr);  // into md: map nodes stay
  for (std::size_t k = 0; k < n; ++k) {
    if (count[k] == 0) continue;  // every item of this fqn was removed: not reached
    const WriteItem& h = *head[k];
    if (is_bytes(h)) {
      items.emplace_hint(items.end(), h.index.fqn, BytesStorageMetadata{});
    } else {
      const TensorWriteData& td = *h.tensor_data;
      auto it = items.emplace_hint(items.end(), h.index.fqn,
                                   TensorStorageMetadata{td.properties, td.size, {}});
      tensor[k] = &std::get<TensorStorageMetadata>(it->second);
      tensor[k]->chunks.reserve(count[k]);
    }
  }
  for (std::size_t r = 0; r < plans.size(); ++r) {
    for (std::size_t i = 0; i < plans[r].items.size(); ++i) {
      WriteItem& item = plans[r].items[i];
      TensorStorageMetadata* tm = tensor[position[ids.of[r][i]]];
      if (tm == nullptr || is_bytes(item)) continue;  // bytes; is_bytes: not reached
      item.index.index = tm->chunks.size();
      tm->chunks.push_back(item.tensor_data->chunk);
    }
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
    FqnIds ids = number_fqns(all_plans);
    const std::vector<std::uint32_t> position = fqn_positions(ids);
    if (options_.dedup_replicated) {
      dedup_replicated(all_plans, ids, options_.dedup_save_to_lowest_rank);
    }
    built = build_metadata(all_plans, ids, position);
  }
  Metadata metadata = std::move(*built);
  // validate_global_plan's other half (each item described by the metadata,
  // as its kind) holds by construction: build_metadata entered every item's
  // fqn as the kind that number_fqns saw all its items agree on.
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
