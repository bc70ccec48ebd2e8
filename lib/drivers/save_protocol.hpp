// lib/drivers/save_protocol.hpp — DCP's collective save protocol: the one
// implementation that ringckpt::save (over any StorageWriter) and the
// Checkpointer (on its control thread) both run.
//
//   1. every rank plans locally; the local plans are gathered at rank 0;
//   2. rank 0 makes the global plan (and the metadata) and scatters each
//      rank its own;
//   3. every rank finishes its plan and writes it; the results are gathered;
//   4. rank 0 commits, and every rank learns the outcome.
//
// Four collectives, on every rank, whatever fails: a rank's failure travels
// through the remaining steps (protocol_steps.hpp) and every rank throws it,
// naming that rank, after its writer has aborted.
//
// Plan caching (DCP's enable_plan_caching): given a PlanCache, a rank whose
// local plan encodes to the same bytes as the one it sent last sends a
// kSamePlan token instead (plan_token.hpp); when every rank does, rank 0
// skips create_global_plan, reuses the metadata skeleton it kept, and sends
// each rank a token naming the global plan it got last time, with this save's
// storage_data. A save that fails anywhere empties every rank's cache (the
// next plans cold). A save may use the cache without reusing it (a custom
// planner's, on any rank): it sends and accepts no tokens but still records
// what it planned, so that every rank's cache stays in step with rank 0's.
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ringckpt/coordinator.hpp"
#include "ringckpt/metadata.hpp"
#include "ringckpt/planner.hpp"
#include "ringckpt/storage.hpp"

namespace ringckpt::detail {

// What one rank keeps between saves for plan caching. Used by one protocol
// at a time (a Checkpointer's control thread).
//
// REQUIRES of the StorageWriter a cache is used with: prepare_global_plan
// sets storage_data and changes no item (on a cached save it gets the plans
// without their items). FileSystemWriter's does exactly that.
struct PlanCache {
  // This rank's side.
  std::string local;                   // the local plan sent last, encoded; empty: none
  SavePlan global;                     // the global plan received for it
  std::uint64_t global_fingerprint = 0;  // checksum_of the payload that carried it
  // Rank 0's side (empty elsewhere): per rank, the last local plan (encoded)
  // and its fingerprint (so that a token resolves, reused or not); and, when
  // that plan was made with reuse allowed, the fingerprint of the global plan
  // sent back and its planner_data, and the metadata create_global_plan made
  // (skeleton null: nothing to reuse).
  std::vector<std::string> locals;
  std::vector<std::uint64_t> local_fingerprints;
  std::vector<std::uint64_t> global_fingerprints;
  std::vector<std::map<std::string, std::string>> planner_data;
  std::shared_ptr<const Metadata> skeleton;
  // How this rank's saves were planned.
  std::uint64_t cold_plans = 0;
  std::uint64_t cached_plans = 0;

  void clear();
};

struct SaveProtocolOptions {
  PlanCache* cache = nullptr;  // null: plan every save from scratch
  // Whether this save may send a token for its local plan (any rank) and
  // reuse the cached global plan (rank 0): false for a custom planner, whose
  // plans the cache must not stand for. Ignored without a cache.
  bool reuse = true;
  // Whether ranks other than 0 receive the committed Metadata in step 4 (the
  // whole of it, every save); else run() returns it on rank 0 only.
  bool share_metadata = true;
  // If set, this rank refuses the save in step 1 (every rank then fails with it).
  std::exception_ptr refuse{};
  // Where a failure that names no place of its own happened: the checkpoint
  // directory (or "rank N" for storage of unknown files).
  std::string where;
};

// Writes `plan` (this rank's finished plan) and returns what it wrote; runs
// in step 3, inside the protocol: what it throws fails the save on every rank.
using WriteStep = std::function<WriteResults(const SavePlan& plan, SavePlanner& planner)>;

// Runs the protocol on this rank. Returns the committed Metadata (on ranks
// other than 0 only with share_metadata; else empty). Throws the failure of
// any rank, after writer.abort(), on every rank alike; a collective that
// itself fails (a rank gone) throws here too, after writer.abort(), naming
// options.where.
// REQUIRES: every rank of `coordinator` calls it, for the same save.
Metadata run_save(const StateDict& state_dict, StorageWriter& writer, SavePlanner& planner,
                  Coordinator& coordinator, const WriteStep& write,
                  const SaveProtocolOptions& options);

}  // namespace ringckpt::detail
