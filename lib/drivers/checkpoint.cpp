// checkpoint.cpp — ringckpt::save and load over a Coordinator: the save runs
// the one save protocol (save_protocol.hpp), the load its collective twin.
#include "ringckpt/checkpoint.hpp"

#include <string_view>
#include <typeinfo>
#include <utility>
#include <vector>

#include "drivers/checkpoint_protocol.hpp"
#include "drivers/protocol_steps.hpp"
#include "drivers/save_protocol.hpp"
#include "format/error_translation.hpp"
#include "format/metadata_json.hpp"
#include "plan/wire_codec.hpp"
#include "ringckpt/default_planner.hpp"
#include "ringckpt/error.hpp"
#include "ringckpt/filesystem.hpp"

namespace ringckpt {
namespace {

using detail::conclude;
using detail::from;
using detail::guarded;
using detail::payload;

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

// The rank named in errors of a writer or reader whose files are unknown.
std::string rank_name(Coordinator* coordinator) {
  return "rank " + std::to_string(coordinator ? coordinator->rank() : 0);
}

}  // namespace

namespace detail {

Metadata save_with(const StateDict& state_dict, StorageWriter& writer, SavePlanner* planner,
                   Coordinator* coordinator, const std::string& where) {
  SingleProcess single;
  Coordinator& c = coordinator ? *coordinator : single;
  DefaultSavePlanner default_planner;
  SavePlanner& p = planner ? *planner : default_planner;
  return run_save(
      state_dict, writer, p, c,
      [&](const SavePlan& plan, SavePlanner& planner) { return writer.write_data(plan, planner); },
      {.where = where});
}

void load_with(StateDict& state_dict, StorageReader& reader, LoadPlanner* planner,
               Coordinator* coordinator, const std::string& where) {
  SingleProcess single;
  Coordinator& c = coordinator ? *coordinator : single;
  DefaultLoadPlanner default_planner;
  LoadPlanner& p = planner ? *planner : default_planner;
  const bool keep_metadata = keeps_metadata(reader, planner);
  const bool is_coordinator = c.is_coordinator();
  const int rank = c.rank();

  // 1. Local plans, gathered at the coordinator.
  Metadata metadata;
  std::vector<std::string> locals = c.gather(guarded(rank, where, [&] {
    metadata = reader.read_metadata();
    p.set_up_planner(state_dict, metadata, is_coordinator);
    reader.set_up_storage_reader(metadata, is_coordinator);
    std::string local = wire::encode(reader.prepare_local_plan(p.create_local_plan()));
    if (!keep_metadata) release(metadata);
    return local;
  }));

  // 2. The global plan, scattered back.
  const std::string central = detail::scatter_global(c, where, [&] {
    std::vector<LoadPlan> plans = detail::decode_each(
        locals, "local plan status", "local load plan",
        [](std::string_view bytes, const std::string& source, int) {
          return wire::decode_load_plan(bytes, source);
        });
    plans = reader.prepare_global_plan(p.create_global_plan(std::move(plans)));
    std::vector<std::string> encoded;
    encoded.reserve(plans.size());
    for (const auto& g : plans) encoded.push_back(wire::encode(g));
    return encoded;
  });

  // 3. Every rank reads its part; the coordinator gathers how it went and
  // every rank learns the outcome.
  all_or_none(c, where, "read status", [&] {
    LoadPlan plan = wire::decode_load_plan(payload(central, from("global plan status", 0)),
                                           from("global load plan", 0));
    reader.read_data(p.finish_plan(std::move(plan)), p);
  });
}

}  // namespace detail

// The public entry points: whatever escapes reaches the caller as an Error
// naming the checkpoint directory (or, over any storage, the rank).

Metadata save(const StateDict& state_dict, StorageWriter& writer, SavePlanner* planner,
              Coordinator* coordinator) {
  return detail::translating_errors(rank_name(coordinator), [&] {
    return detail::save_with(state_dict, writer, planner, coordinator, rank_name(coordinator));
  });
}

void load(StateDict& state_dict, StorageReader& reader, LoadPlanner* planner,
          Coordinator* coordinator) {
  detail::translating_errors(rank_name(coordinator),
                             [&] {
    detail::load_with(state_dict, reader, planner, coordinator, rank_name(coordinator));
  });
}

Metadata save(const StateDict& state_dict, const std::filesystem::path& dir,
              const SaveOptions& options) {
  return detail::translating_errors(dir.string(), [&] {
    FileSystemWriter writer(dir, options.io, options.overwrite);
    return detail::save_with(state_dict, writer, options.planner, options.coordinator,
                             dir.string());
  });
}

void load(StateDict& state_dict, const std::filesystem::path& dir, const LoadOptions& options) {
  detail::translating_errors(dir.string(), [&] {
    FileSystemReader reader(dir, options.io);
    detail::load_with(state_dict, reader, options.planner, options.coordinator, dir.string());
  });
}

Metadata read_metadata(const std::filesystem::path& dir) {
  return detail::translating_errors((dir / kMetadataFile).string(),
                                    [&] { return FileSystemReader(dir).read_metadata(); });
}

}  // namespace ringckpt
