#include "ringckpt/checkpoint.hpp"

#include <charconv>

#include "io/data_file.hpp"
#include "format/metadata_json.hpp"
#include "ringckpt/default_planner.hpp"
#include "ringckpt/error.hpp"
#include "ringckpt/filesystem.hpp"

namespace ringckpt {
namespace {

// A step of a collective protocol: "+payload" on success, "!code|where|message"
// on failure, so that a fault on any rank reaches every rank intact.
template <typename F>
std::string guarded(F&& step) {
  try {
    return "+" + step();
  } catch (const Error& e) {
    return "!" + std::to_string(static_cast<int>(e.code())) + "|" + e.where() + "|" + e.message();
  } catch (const std::exception& e) {
    return "!" + std::to_string(static_cast<int>(ErrorCode::kInvalidArgument)) + "||" + e.what();
  }
}

bool failed(const std::string& status) { return !status.empty() && status[0] == '!'; }

[[noreturn]] void rethrow(const std::string& status) {
  const std::size_t a = status.find('|');
  const std::size_t b = status.find('|', a + 1);
  int code = 0;
  std::from_chars(status.data() + 1, status.data() + a, code);
  throw Error(static_cast<ErrorCode>(code), status.substr(a + 1, b - a - 1), status.substr(b + 1));
}

std::string payload(const std::string& status) {
  if (failed(status)) rethrow(status);
  return status.substr(1);
}

// The first failure among gathered statuses, or "".
std::string first_failure(const std::vector<std::string>& statuses) {
  for (const auto& s : statuses) {
    if (failed(s)) return s;
  }
  return {};
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

void load_single(StateDict& state_dict, StorageReader& reader, LoadPlanner& p) {
  const Metadata metadata = reader.read_metadata();
  p.set_up_planner(state_dict, metadata, true);
  reader.set_up_storage_reader(metadata, true);
  std::vector<LoadPlan> plans;
  plans.push_back(reader.prepare_local_plan(p.create_local_plan()));
  plans = reader.prepare_global_plan(p.create_global_plan(std::move(plans)));
  reader.read_data(p.finish_plan(std::move(plans.at(0))), p);
}

}  // namespace

Metadata save(const StateDict& state_dict, StorageWriter& writer, SavePlanner* planner,
              Coordinator* coordinator) {
  SingleProcess single;
  Coordinator& c = coordinator ? *coordinator : single;
  DefaultSavePlanner default_planner;
  SavePlanner& p = planner ? *planner : default_planner;
  if (c.world_size() == 1) return save_single(state_dict, writer, p);
  const bool is_coordinator = c.is_coordinator();

  // 1. Local plans, gathered at the coordinator.
  std::vector<std::string> locals = c.gather(guarded([&] {
    p.set_up_planner(state_dict, is_coordinator);
    writer.set_up_storage_writer(is_coordinator, c.rank());
    return encode_save_plan(writer.prepare_local_plan(p.create_local_plan()));
  }));

  // 2. The global plan, scattered back.
  Metadata metadata;
  std::vector<std::string> centrals;
  if (is_coordinator) {
    std::string failure = first_failure(locals);
    std::string status = failure;
    if (failure.empty()) {
      std::vector<SavePlan> globals;
      status = guarded([&] {
        std::vector<SavePlan> plans;
        for (const auto& s : locals) plans.push_back(decode_save_plan(payload(s)));
        auto [planned, md] = p.create_global_plan(std::move(plans));
        globals = writer.prepare_global_plan(std::move(planned));
        metadata = std::move(md);
        return std::string();
      });
      if (!failed(status)) {
        for (const auto& g : globals) centrals.push_back("+" + encode_save_plan(g));
      }
    }
    if (failed(status)) centrals.assign(static_cast<std::size_t>(c.world_size()), status);
  }
  const std::string central = c.scatter(std::move(centrals));

  // 3. Every rank writes its part; results gathered at the coordinator.
  SavePlan final_plan;
  std::vector<std::string> results = c.gather(guarded([&] {
    final_plan = p.finish_plan(decode_save_plan(payload(central)));
    return encode_write_results(writer.write_data(final_plan, p));
  }));

  // 4. The coordinator commits; every rank learns the outcome.
  std::string outcome;
  if (is_coordinator) {
    outcome = first_failure(results);
    if (outcome.empty()) {
      outcome = guarded([&] {
        std::vector<WriteResults> all;
        for (const auto& r : results) all.push_back(decode_write_results(payload(r)));
        writer.finish(metadata, all);
        add_results(metadata, all);
        return std::string();
      });
    }
  }
  outcome = c.broadcast(std::move(outcome));
  if (failed(outcome)) {
    writer.abort();
    rethrow(outcome);
  }
  return is_coordinator ? metadata : Metadata{};
}

void load(StateDict& state_dict, StorageReader& reader, LoadPlanner* planner,
          Coordinator* coordinator) {
  SingleProcess single;
  Coordinator& c = coordinator ? *coordinator : single;
  DefaultLoadPlanner default_planner;
  LoadPlanner& p = planner ? *planner : default_planner;
  if (c.world_size() == 1) {
    load_single(state_dict, reader, p);
    return;
  }
  const bool is_coordinator = c.is_coordinator();

  Metadata metadata;
  std::vector<std::string> locals = c.gather(guarded([&] {
    metadata = reader.read_metadata();
    p.set_up_planner(state_dict, metadata, is_coordinator);
    reader.set_up_storage_reader(metadata, is_coordinator);
    return encode_load_plan(reader.prepare_local_plan(p.create_local_plan()));
  }));

  std::vector<std::string> centrals;
  if (is_coordinator) {
    std::string status = first_failure(locals);
    if (status.empty()) {
      std::vector<LoadPlan> globals;
      status = guarded([&] {
        std::vector<LoadPlan> plans;
        for (const auto& s : locals) plans.push_back(decode_load_plan(payload(s)));
        globals = reader.prepare_global_plan(p.create_global_plan(std::move(plans)));
        return std::string();
      });
      if (!failed(status)) {
        for (const auto& g : globals) centrals.push_back("+" + encode_load_plan(g));
      }
    }
    if (failed(status)) centrals.assign(static_cast<std::size_t>(c.world_size()), status);
  }
  const std::string central = c.scatter(std::move(centrals));

  std::vector<std::string> statuses = c.gather(guarded([&] {
    reader.read_data(p.finish_plan(decode_load_plan(payload(central))), p);
    return std::string();
  }));
  std::string outcome = is_coordinator ? first_failure(statuses) : std::string();
  if (is_coordinator && outcome.empty()) outcome = "+";
  outcome = c.broadcast(std::move(outcome));
  if (failed(outcome)) rethrow(outcome);
}

Metadata save(const StateDict& state_dict, const std::filesystem::path& dir,
              const SaveOptions& options) {
  FileSystemWriter writer(dir, options.io, options.overwrite);
  return save(state_dict, writer, options.planner, options.coordinator);
}

void load(StateDict& state_dict, const std::filesystem::path& dir, const LoadOptions& options) {
  FileSystemReader reader(dir, options.io);
  load(state_dict, reader, options.planner, options.coordinator);
}

Metadata read_metadata(const std::filesystem::path& dir) {
  return FileSystemReader(dir).read_metadata();
}

}  // namespace ringckpt
