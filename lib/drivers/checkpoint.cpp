// checkpoint.cpp — ringckpt::save and load: the collective protocol over a
// Coordinator, and its one-rank form.
#include "ringckpt/checkpoint.hpp"

#include <string_view>
#include <typeinfo>
#include <utility>
#include <vector>

#include "drivers/checkpoint_protocol.hpp"
#include "format/error_translation.hpp"
#include "format/metadata_json.hpp"
#include "plan/wire_codec.hpp"
#include "ringckpt/default_planner.hpp"
#include "ringckpt/error.hpp"
#include "ringckpt/filesystem.hpp"

namespace ringckpt {
namespace {

// Every payload of the protocol travels as a wire::RankStatus: OK with the
// step's encoded result, or the failure of the rank that raised it. A failure
// is passed on unchanged from step to step, so that the error every rank
// finally throws names the rank that failed and keeps its code, where and
// message.

// A failure another rank reported, on its way to being passed on as is.
struct Relayed {
  std::string status;
};

// One step of the protocol on `rank`: the payload `step` returns in an OK
// status, or what it raised as this rank's failure (or a Relayed one as is).
template <typename F>
std::string guarded(int rank, F&& step) {
  try {
    return wire::encode_ok(step());
  } catch (const Relayed& relayed) {
    return relayed.status;
  } catch (...) {
    // Whatever a planner or storage throws (out of memory included), this
    // rank stays in the protocol and reports it as an Error.
    try {
      const Error e = detail::as_error(std::current_exception(), "");
      return wire::encode_failure({rank, e.code(), e.where(), e.message()});
    } catch (...) {
      // No memory even to describe the failure: a status of a few bytes,
      // so that this rank still reports rather than leaving the protocol.
      return wire::encode_failure({rank, ErrorCode::kIo, "", "out of memory"});
    }
  }
}

std::string from(std::string_view what, int rank) {
  return std::string(what) + " from rank " + std::to_string(rank);
}

// The payload of a status another rank sent; `source` names it in errors.
// A failure it carries is thrown as Relayed.
// REQUIRES: called inside guarded(), which catches Relayed.
std::string payload(std::string status, const std::string& source) {
  wire::RankStatus s = wire::decode_status(status, source);
  if (s.failure) throw Relayed{std::move(status)};
  return std::move(s.payload);
}

// The end of the protocol on every rank: throws the failure that rank 0
// broadcast, if any; else returns the payload it broadcast.
std::string conclude(const std::string& outcome) {
  wire::RankStatus s = wire::decode_status(outcome, "outcome from rank 0");
  if (s.failure) throw wire::to_error(*s.failure);
  return std::move(s.payload);
}

// Throws unless the global plan step produced one plan per rank: a scatter of
// any other count would fail on rank 0 alone and leave the others waiting.
void check_plan_count(std::size_t plans, int world_size) {
  if (plans != static_cast<std::size_t>(world_size)) {
    throw Error(ErrorCode::kInvalidArgument, "create_global_plan",
                std::to_string(plans) + " plans for " + std::to_string(world_size) + " ranks");
  }
}

// The payloads of the statuses gathered from every rank, each decoded with
// decode(bytes, source); `status_name` and `payload_name` name rank r's in
// errors. The first failure among them is thrown as Relayed.
// REQUIRES: called inside guarded().
template <typename Decode>
auto decode_each(std::vector<std::string>& statuses, std::string_view status_name,
                 std::string_view payload_name, Decode&& decode) {
  std::vector<decltype(decode(std::string_view(), std::string()))> out;
  out.reserve(statuses.size());
  for (int r = 0; r < static_cast<int>(statuses.size()); ++r) {
    const std::string bytes = payload(std::move(statuses[r]), from(status_name, r));
    out.push_back(decode(bytes, from(payload_name, r)));
  }
  return out;
}

// Step 2 of both protocols, on every rank: the coordinator decodes the local
// plans gathered in `locals` (decode_plan, each named `plan_name` in errors),
// global_plans turns them into one plan per rank, and each rank receives its
// own, or the failure of this step. Returns this rank's status.
template <typename DecodePlan, typename GlobalPlans>
std::string scatter_global_plans(Coordinator& c, std::vector<std::string>& locals,
                                 std::string_view plan_name, DecodePlan&& decode_plan,
                                 GlobalPlans&& global_plans) {
  std::vector<std::string> centrals;
  if (c.is_coordinator()) {
    std::vector<std::string> encoded;
    bool planned = false;
    const std::string status = guarded(c.rank(), [&] {
      const auto globals =
          global_plans(decode_each(locals, "local plan status", plan_name, decode_plan));
      check_plan_count(globals.size(), c.world_size());
      for (const auto& g : globals) encoded.push_back(wire::encode_ok(wire::encode(g)));
      planned = true;
      return std::string();
    });
    if (planned) {
      centrals = std::move(encoded);
    } else {
      centrals.assign(static_cast<std::size_t>(c.world_size()), status);
    }
  }
  return c.scatter(std::move(centrals));
}

// One rank: the same protocol, without carrying plans through a Coordinator.
Metadata save_single(const StateDict& state_dict, StorageWriter& writer, SavePlanner& p) {
  p.set_up_planner(state_dict, true);
  writer.set_up_storage_writer(true, 0);
  std::vector<SavePlan> plans;
  plans.push_back(writer.prepare_local_plan(p.create_local_plan()));
  auto [global, metadata] = p.create_global_plan(std::move(plans));
  global = writer.prepare_global_plan(std::move(global));
  const SavePlan final_plan = p.finish_plan(std::move(global.at(0)));
  try {
    std::vector<WriteResults> results{writer.write_data(final_plan, p)};
    writer.finish(metadata, results);
    add_results(metadata, results);
  } catch (...) {
    writer.abort();
    throw;
  }
  return metadata;
}

// Whether a load must keep the Metadata until read_data ends, as DCP's
// contract lets a planner or reader keep a reference to it. Not when the
// planner is the default one (it reads the Metadata only in
// create_local_plan) and the reader exactly a FileSystemReader (it indexes
// the Metadata in set_up_storage_reader and keeps no reference): then the
// Metadata is freed once the local plan is made, so that it, the plan and
// the reader's index are not all held while reading.
bool keeps_metadata(const StorageReader& reader, const LoadPlanner* planner) {
  return planner != nullptr || typeid(reader) != typeid(FileSystemReader);
}

// Frees what `metadata` holds; it is left empty.
void release(Metadata& metadata) {
  [[maybe_unused]] const Metadata released = std::move(metadata);
  metadata = Metadata{};
}

void load_single(StateDict& state_dict, StorageReader& reader, LoadPlanner& p,
                 bool keep_metadata) {
  Metadata metadata = reader.read_metadata();
  p.set_up_planner(state_dict, metadata, true);
  reader.set_up_storage_reader(metadata, true);
  std::vector<LoadPlan> plans;
  plans.push_back(reader.prepare_local_plan(p.create_local_plan()));
  if (!keep_metadata) release(metadata);
  plans = reader.prepare_global_plan(p.create_global_plan(std::move(plans)));
  reader.read_data(p.finish_plan(std::move(plans.at(0))), p);
}

// The rank named in errors of a writer or reader whose files are unknown.
std::string rank_name(Coordinator* coordinator) {
  return "rank " + std::to_string(coordinator ? coordinator->rank() : 0);
}

}  // namespace

namespace detail {

Metadata save_with(const StateDict& state_dict, StorageWriter& writer, SavePlanner* planner,
                   Coordinator* coordinator) {
  SingleProcess single;
  Coordinator& c = coordinator ? *coordinator : single;
  DefaultSavePlanner default_planner;
  SavePlanner& p = planner ? *planner : default_planner;
  if (c.world_size() == 1) return save_single(state_dict, writer, p);
  const bool is_coordinator = c.is_coordinator();
  const int rank = c.rank();

  // 1. Local plans, gathered at the coordinator.
  std::vector<std::string> locals = c.gather(guarded(rank, [&] {
    p.set_up_planner(state_dict, is_coordinator);
    writer.set_up_storage_writer(is_coordinator, rank);
    return wire::encode(writer.prepare_local_plan(p.create_local_plan()));
  }));

  // 2. The global plan, scattered back.
  Metadata metadata;
  const std::string central = scatter_global_plans(
      c, locals, "local save plan", wire::decode_save_plan, [&](std::vector<SavePlan> plans) {
        auto [planned, md] = p.create_global_plan(std::move(plans));
        metadata = std::move(md);
        return writer.prepare_global_plan(std::move(planned));
      });

  // 3. Every rank writes its part; results gathered at the coordinator.
  SavePlan final_plan;
  std::vector<std::string> results = c.gather(guarded(rank, [&] {
    final_plan = p.finish_plan(wire::decode_save_plan(
        payload(central, from("global plan status", 0)), from("global save plan", 0)));
    return wire::encode(writer.write_data(final_plan, p));
  }));

  // 4. The coordinator commits; every rank learns the outcome.
  std::string outcome;
  if (is_coordinator) {
    outcome = guarded(rank, [&] {
      const std::vector<WriteResults> all =
          decode_each(results, "write status", "write results", wire::decode_write_results);
      writer.finish(metadata, all);
      add_results(metadata, all);
      return wire::encode(metadata);  // the committed metadata, for every rank
    });
  }
  outcome = c.broadcast(std::move(outcome));
  std::string committed;
  try {
    committed = conclude(outcome);
  } catch (...) {
    writer.abort();
    throw;
  }
  if (is_coordinator) return metadata;
  return wire::decode_metadata(committed, from("committed metadata", 0));
}

void load_with(StateDict& state_dict, StorageReader& reader, LoadPlanner* planner,
               Coordinator* coordinator) {
  SingleProcess single;
  Coordinator& c = coordinator ? *coordinator : single;
  DefaultLoadPlanner default_planner;
  LoadPlanner& p = planner ? *planner : default_planner;
  const bool keep_metadata = keeps_metadata(reader, planner);
  if (c.world_size() == 1) {
    load_single(state_dict, reader, p, keep_metadata);
    return;
  }
  const bool is_coordinator = c.is_coordinator();
  const int rank = c.rank();

  // 1. Local plans, gathered at the coordinator.
  Metadata metadata;
  std::vector<std::string> locals = c.gather(guarded(rank, [&] {
    metadata = reader.read_metadata();
    p.set_up_planner(state_dict, metadata, is_coordinator);
    reader.set_up_storage_reader(metadata, is_coordinator);
    std::string local = wire::encode(reader.prepare_local_plan(p.create_local_plan()));
    if (!keep_metadata) release(metadata);
    return local;
  }));

  // 2. The global plan, scattered back.
  const std::string central = scatter_global_plans(
      c, locals, "local load plan", wire::decode_load_plan, [&](std::vector<LoadPlan> plans) {
        return reader.prepare_global_plan(p.create_global_plan(std::move(plans)));
      });

  // 3. Every rank reads its part; the coordinator gathers how it went and
  // every rank learns the outcome.
  std::vector<std::string> statuses = c.gather(guarded(rank, [&] {
    LoadPlan plan = wire::decode_load_plan(payload(central, from("global plan status", 0)),
                                           from("global load plan", 0));
    reader.read_data(p.finish_plan(std::move(plan)), p);
    return std::string();
  }));
  std::string outcome;
  if (is_coordinator) {
    outcome = guarded(rank, [&] {
      for (int r = 0; r < static_cast<int>(statuses.size()); ++r) {
        payload(std::move(statuses[r]), from("read status", r));
      }
      return std::string();
    });
  }
  conclude(c.broadcast(std::move(outcome)));
}

}  // namespace detail

// The public entry points: whatever escapes reaches the caller as an Error
// naming the checkpoint directory (or, over any storage, the rank).

Metadata save(const StateDict& state_dict, StorageWriter& writer, SavePlanner* planner,
              Coordinator* coordinator) {
  return detail::translating_errors(rank_name(coordinator), [&] {
    return detail::save_with(state_dict, writer, planner, coordinator);
  });
}

void load(StateDict& state_dict, StorageReader& reader, LoadPlanner* planner,
          Coordinator* coordinator) {
  detail::translating_errors(rank_name(coordinator),
                             [&] { detail::load_with(state_dict, reader, planner, coordinator); });
}

Metadata save(const StateDict& state_dict, const std::filesystem::path& dir,
              const SaveOptions& options) {
  return detail::translating_errors(dir.string(), [&] {
    FileSystemWriter writer(dir, options.io, options.overwrite);
    return detail::save_with(state_dict, writer, options.planner, options.coordinator);
  });
}

void load(StateDict& state_dict, const std::filesystem::path& dir, const LoadOptions& options) {
  detail::translating_errors(dir.string(), [&] {
    FileSystemReader reader(dir, options.io);
    detail::load_with(state_dict, reader, options.planner, options.coordinator);
  });
}

Metadata read_metadata(const std::filesystem::path& dir) {
  return detail::translating_errors((dir / kMetadataFile).string(),
                                    [&] { return FileSystemReader(dir).read_metadata(); });
}

}  // namespace ringckpt
