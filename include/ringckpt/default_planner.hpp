// ringckpt/default_planner.hpp — the planners used when the caller gives none.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "ringckpt/planner.hpp"

namespace ringckpt {

// Checks that the chunks of every tensor in `metadata` lie inside its global
// shape and cover it exactly once (no overlap, no gap). O(n log n) in the
// number of chunks. Throws Error(kInvalidArgument) naming the tensor and fault.
void validate_global_plan(const std::vector<SavePlan>& plans, const Metadata& metadata);

// Saves every entry of the state dict in insertion order: a TensorView as one
// TENSOR item, each Shard of a ShardedTensor as a SHARD item, Bytes as BYTE_IO.
// The global plan removes items that several ranks hold identically
// (replicated tensors), keeping each on the rank with the fewest bytes so far
// (dedup_save_to_lowest_rank: on the lowest rank that holds it, as DCP's
// option of that name), builds the Metadata and validates it.
class DefaultSavePlanner : public SavePlanner {
 public:
  struct Options {
    bool dedup_replicated = true;
    bool dedup_save_to_lowest_rank = false;  // only with dedup_replicated
  };
  DefaultSavePlanner() = default;
  explicit DefaultSavePlanner(Options options) : options_(options) {}

  void set_up_planner(const StateDict& state_dict, bool is_coordinator) override;
  SavePlan create_local_plan() override;
  std::pair<std::vector<SavePlan>, Metadata> create_global_plan(
      std::vector<SavePlan> all_plans) override;
  SavePlan finish_plan(SavePlan central_plan) override;
  ItemData resolve_data(const WriteItem& item) override;

 protected:
  // The bytes of the state-dict value that `index` names (a tensor, one
  // shard, or a blob). Throws Error(kNotFound) if there is none.
  std::span<const std::byte> lookup_bytes(const MetadataIndex& index) const;

  const StateDict* state_dict_ = nullptr;
  bool is_coordinator_ = false;
  Options options_;
  std::optional<SavePlan> plan_;  // set by finish_plan
};

// Loads every entry of the state dict from the checkpoint into the caller's
// buffers, resharding by chunk intersection. A key missing from the
// checkpoint, or a shape or kind (tensor/bytes) that differs, is an Error
// naming the key; allow_partial_load lets missing keys pass. A floating dtype
// (F64, F32, F16, BF16) that differs from the stored one is cast on load, as
// DCP's copy_ does (round to nearest even): each such destination is read
// into a buffer of the stored dtype, converted in commit_tensor, and the
// buffer freed once its last item is committed. (FileSystemReader resolves
// every item of a load before it reads any, so the buffers of all cast
// tensors are held at once: a cast load needs their stored bytes in memory
// besides the destinations.) strict_dtype refuses any
// dtype difference instead (Error(kMismatch) naming the key), as does every
// difference involving a non-floating dtype.
class DefaultLoadPlanner : public LoadPlanner {
 public:
  struct Options {
    bool allow_partial_load = false;
    bool strict_dtype = false;
  };
  DefaultLoadPlanner() = default;
  explicit DefaultLoadPlanner(Options options) : options_(options) {}

  void set_up_planner(StateDict& state_dict, const Metadata& metadata,
                      bool is_coordinator) override;
  LoadPlan create_local_plan() override;
  std::vector<LoadPlan> create_global_plan(std::vector<LoadPlan> all_plans) override;
  LoadPlan finish_plan(LoadPlan central_plan) override;
  void load_bytes(const ReadItem& item, std::span<const std::byte> value) override;
  TensorView resolve_tensor(const ReadItem& item) override;
  void commit_tensor(const ReadItem& item, const TensorView& tensor) override;

 protected:
  // The caller's destination (a tensor or one local shard) that item names.
  // Throws Error(kNotFound / kMismatch) naming the key if there is none.
  TensorView destination(const ReadItem& item) const;

  StateDict* state_dict_ = nullptr;
  // Valid until create_local_plan returns: the load driver may free it then.
  const Metadata* metadata_ = nullptr;
  bool is_coordinator_ = false;
  Options options_;

 private:
  // A destination being cast: read into `stored` (the checkpoint's dtype),
  // converted box by box in commit_tensor.
  struct CastBuffer {
    std::vector<std::byte> stored;
    std::size_t uncommitted = 0;  // items resolved and not yet committed
  };
  // The stored dtype of each entry that create_local_plan found to need a
  // cast (the metadata may be freed once the local plan is made).
  std::map<std::string, DType, std::less<>> cast_from_;
  std::map<MetadataIndex, CastBuffer> casts_;  // by dest_index
};

// The read items that copy the stored chunks of `stored` that intersect the
// box `dest` (a whole tensor or a shard) of destination `dest_index`: one
// item per chunk with a non-empty intersection, in increasing chunk position.
// One box costs one pass over the chunks; DefaultLoadPlanner, asked for many
// boxes of one tensor, sorts its chunks along one dimension once and
// binary-searches them for each box instead of trying every chunk.
// Throws Error naming `fqn` if a chunk or the box does not have the box's
// rank, or if a chunk's or the box's end overflows int64.
std::vector<ReadItem> read_items_for_box(const Fqn& fqn,
                                         const TensorStorageMetadata& stored,
                                         const MetadataIndex& dest_index,
                                         const ChunkStorageMetadata& dest);

}  // namespace ringckpt
