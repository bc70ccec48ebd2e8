// save_protocol.cpp — the collective save protocol (see save_protocol.hpp).
#include "drivers/save_protocol.hpp"

#include <utility>

#include "drivers/protocol_steps.hpp"
#include "plan/plan_token.hpp"
#include "plan/wire_codec.hpp"

namespace ringckpt::detail {
namespace {

// Rank 0's step 2: one encoded payload per rank (a global plan, or a token
// naming the cached one), and the metadata skeleton of this save.
class GlobalStep {
 public:
  GlobalStep(StorageWriter& writer, SavePlanner& planner, PlanCache* cache, bool reuse)
      : writer_(writer), planner_(planner), cache_(cache), reuse_(reuse) {}

  // REQUIRES: inside guarded() (a rank's failure among `locals` is Relayed).
  std::vector<std::string> operator()(std::vector<std::string>& locals) {
    // Each rank's local plan, encoded: as sent, or the one cached for a token.
    std::vector<std::string> plans;
    bool all_same = cache_ != nullptr && reuse_ && cache_->skeleton != nullptr;
    for (int r = 0; r < static_cast<int>(locals.size()); ++r) {
      std::string bytes = payload(std::move(locals[r]), from("local plan status", r));
      if (wire::is_same_plan(bytes)) {
        bytes = cached_local(bytes, r);
      } else {
        all_same = false;
      }
      plans.push_back(std::move(bytes));
    }
    if (all_same) return reuse(plans.size());
    return plan(std::move(plans));
  }

  // Set by operator(): the metadata of this save before its results.
  std::shared_ptr<const Metadata> skeleton;

 private:
  // The plan rank r's token names. Throws unless rank 0 holds it.
  std::string cached_local(std::string_view token_bytes, int r) {
    const std::string source = from("cached-plan token", r);
    const wire::SamePlan token = wire::decode_same_plan(token_bytes, source);
    const auto at = static_cast<std::size_t>(r);
    if (cache_ == nullptr || at >= cache_->locals.size() || cache_->locals[at].empty() ||
        cache_->local_fingerprints[at] != token.fingerprint) {
      throw Error(ErrorCode::kInvalidArgument, source,
                  "names a local plan the coordinator does not hold");
    }
    return cache_->locals[at];
  }

  // Every rank's plan is the cached one: the writer's storage_data for this
  // save, and a token per rank.
  std::vector<std::string> reuse(std::size_t ranks) {
    std::vector<SavePlan> shells(ranks);
    for (std::size_t r = 0; r < ranks; ++r) shells[r].planner_data = cache_->planner_data[r];
    shells = writer_.prepare_global_plan(std::move(shells));
    check_plan_count(shells.size(), static_cast<int>(ranks), "prepare_global_plan");
    std::vector<std::string> out;
    out.reserve(ranks);
    for (std::size_t r = 0; r < ranks; ++r) {
      out.push_back(wire::encode(
          wire::SamePlan{cache_->global_fingerprints[r], std::move(shells[r].storage_data)}));
    }
    skeleton = cache_->skeleton;
    return out;
  }

  std::vector<std::string> plan(std::vector<std::string> encoded) {
    std::vector<SavePlan> plans;
    plans.reserve(encoded.size());
    for (int r = 0; r < static_cast<int>(encoded.size()); ++r) {
      plans.push_back(wire::decode_save_plan(encoded[static_cast<std::size_t>(r)],
                                             from("local save plan", r)));
    }
    auto [planned, metadata] = planner_.create_global_plan(std::move(plans));
    check_plan_count(planned.size(), static_cast<int>(encoded.size()), "create_global_plan");
    std::vector<std::map<std::string, std::string>> planner_data;
    if (cache_) {
      planner_data.reserve(planned.size());
      for (const auto& g : planned) planner_data.push_back(g.planner_data);
    }
    // Kept until this step object goes (after the scatter): freeing half a
    // million items need not delay the plans the ranks wait for.
    planned_ = writer_.prepare_global_plan(std::move(planned));
    check_plan_count(planned_.size(), static_cast<int>(encoded.size()), "prepare_global_plan");
    std::vector<std::string> out;
    out.reserve(planned_.size());
    for (const auto& g : planned_) out.push_back(wire::encode(g));
    skeleton = std::make_shared<const Metadata>(std::move(metadata));
    if (cache_) {
      std::vector<std::uint64_t> fingerprints, local_fingerprints;
      fingerprints.reserve(out.size());
      local_fingerprints.reserve(out.size());
      for (const auto& g : out) fingerprints.push_back(wire::fingerprint(g));
      for (const auto& l : encoded) local_fingerprints.push_back(wire::fingerprint(l));
      // Committed to the cache only once nothing can fail any more.
      cache_->locals = std::move(encoded);
      cache_->local_fingerprints = std::move(local_fingerprints);
      cache_->global_fingerprints = std::move(fingerprints);
      cache_->planner_data = std::move(planner_data);
      cache_->skeleton = reuse_ ? skeleton : nullptr;
    }
    return out;
  }

  StorageWriter& writer_;
  SavePlanner& planner_;
  PlanCache* cache_;
  bool reuse_;
  std::vector<SavePlan> planned_;  // the global plans sent, freed with this object
};

// This rank's global plan from rank 0's payload: a plan, or a token naming
// the one in `cache`. Records a plan received in the cache.
SavePlan global_plan(const std::string& bytes, PlanCache* cache, std::string local) {
  const std::string source = from("global save plan", 0);
  if (wire::is_same_plan(bytes)) {
    wire::SamePlan token = wire::decode_same_plan(bytes, source);
    if (cache == nullptr || cache->local.empty() ||
        cache->global_fingerprint != token.fingerprint) {
      throw Error(ErrorCode::kInvalidArgument, source,
                  "names a global plan this rank does not hold");
    }
    ++cache->cached_plans;
    SavePlan plan = cache->global;
    plan.storage_data = std::move(token.storage_data);
    return plan;
  }
  SavePlan plan = wire::decode_save_plan(bytes, source);
  if (cache) {
    ++cache->cold_plans;
    cache->local = std::move(local);
    cache->global = plan;
    cache->global_fingerprint = wire::fingerprint(bytes);
  }
  return plan;
}

}  // namespace

void PlanCache::clear() {
  local.clear();
  global = SavePlan{};
  global_fingerprint = 0;
  locals.clear();
  local_fingerprints.clear();
  global_fingerprints.clear();
  planner_data.clear();
  skeleton.reset();
}

Metadata run_save(const StateDict& state_dict, StorageWriter& writer, SavePlanner& planner,
                  Coordinator& c, const WriteStep& write, const SaveProtocolOptions& options) {
  const bool is_coordinator = c.is_coordinator();
  const int rank = c.rank();
  PlanCache* cache = options.cache;
  const bool reuse = cache != nullptr && options.reuse;
  try {
    // 1. Local plans (or tokens), gathered at the coordinator.
    std::string local;
    std::vector<std::string> locals = c.gather(guarded(rank, options.where, [&] {
      if (options.refuse) std::rethrow_exception(options.refuse);
      planner.set_up_planner(state_dict, is_coordinator);
      writer.set_up_storage_writer(is_coordinator, rank);
      local = wire::encode(writer.prepare_local_plan(planner.create_local_plan()));
      if (reuse && !cache->local.empty() && cache->local == local) {
        return wire::encode(wire::SamePlan{wire::fingerprint(local), {}});
      }
      return local;
    }));

    // 2. The global plan (or tokens), scattered back.
    GlobalStep global_step(writer, planner, is_coordinator ? cache : nullptr, reuse);
    const std::string central =
        scatter_global(c, options.where, [&] { return global_step(locals); });

    // 3. Every rank writes its part; results gathered at the coordinator.
    std::vector<std::string> results = c.gather(guarded(rank, options.where, [&] {
      SavePlan plan = global_plan(payload(central, from("global plan status", 0)), cache,
                                  std::move(local));
      const SavePlan final_plan = planner.finish_plan(std::move(plan));
      return wire::encode(write(final_plan, planner));
    }));

    // 4. The coordinator commits; every rank learns the outcome.
    Metadata metadata;
    std::string outcome;
    if (is_coordinator) {
      outcome = guarded(rank, options.where, [&] {
        const std::vector<WriteResults> all = decode_each(
            results, "write status", "write results",
            [](std::string_view bytes, const std::string& source, int) {
              return wire::decode_write_results(bytes, source);
            });
        metadata = *global_step.skeleton;
        if (auto m = writer.storage_meta()) metadata.storage_meta = std::move(*m);
        writer.finish(metadata, all);
        add_results(metadata, all);
        return options.share_metadata && c.world_size() > 1 ? wire::encode(metadata)
                                                             : std::string();
      });
    }
    if (c.world_size() > 1) outcome = c.broadcast(std::move(outcome));
    const std::string committed = conclude(outcome, c.world_size());
    if (is_coordinator || !options.share_metadata) return metadata;
    return wire::decode_metadata(committed, from("committed metadata", 0));
  } catch (...) {
    // Every rank reaches here alike for a failure the protocol carried; a
    // failed collective may leave the ranks' caches apart: the next save
    // plans cold everywhere.
    writer.abort();
    if (cache) cache->clear();
    try {
      throw;
    } catch (const Error& e) {
      if (options.where.empty() || e.where() == options.where) throw;
      if (e.where().find(options.where) != std::string::npos) throw;
      if (!e.where().empty() && (e.where() == "ThreadGroup" || e.where().starts_with("MPI"))) {
        throw Error(e.code(), options.where, e.what());  // a collective failed
      }
      throw;
    }
  }
}

}  // namespace ringckpt::detail
