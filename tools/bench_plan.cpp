// tools/bench_plan.cpp — `ringckpt bench --plan-ranks R --entries E`:
// planning only, R ranks as threads of one process (ThreadGroup), each with
// E entries named as a transformer's are (half row shards of tensors split
// over all ranks, half replicated: bench/global_plan_scenario.hpp).
//
// Each run makes two saves through the save protocol the Checkpointer runs
// (drivers/save_protocol), with plan caching and a writer that writes
// nothing: the first plans cold, the second from the cache. Measured:
//   global plan   on rank 0, from the moment it holds every local plan (its
//                 gather returns) to the moment it hands the final plans back
//                 (it enters the scatter): the ranks' own planning excluded
//   payload       the bytes each rank sends with its local plan (or token)
// and a resharding plan (bench/reshard_scenario.hpp): 500 tensors saved as
// 1,024 row shards, planned for 256 (all 512,000 read items at once).
#include <algorithm>
#include <chrono>
#include <iostream>
#include <thread>

#include <boost/json.hpp>

#include "bench_figures.hpp"
#include "bench_runs.hpp"
#include "drivers/save_protocol.hpp"
#include "machine_facts.hpp"
#include "global_plan_scenario.hpp"
#include "reshard_scenario.hpp"
#include "ringckpt/coordinator.hpp"
#include "ringckpt/default_planner.hpp"
#include "ringckpt/filesystem_writer.hpp"
#include "stopwatch.hpp"
#include "terminal.hpp"

namespace ringckpt::tools::bench {
namespace {

// A StorageWriter that plans like FileSystemWriter and writes nothing.
class PlanOnlyWriter final : public StorageWriter {
 public:
  void reset(const std::filesystem::path&) override {}
  void set_up_storage_writer(bool, int) override {}
  SavePlan prepare_local_plan(SavePlan plan) override { return plan; }
  std::vector<SavePlan> prepare_global_plan(std::vector<SavePlan> plans) override {
    return names_.prepare_global_plan(std::move(plans));
  }
  WriteResults write_data(const SavePlan&, SavePlanner&) override { return {}; }
  void finish(const Metadata&, const std::vector<WriteResults>&) override {}
  void abort() noexcept override {}

 private:
  FileSystemWriter names_{"unused"};  // only its prepare_global_plan (pure)
};

// What one save's protocol did, as the coordinators below saw it.
struct SaveTimes {
  Clock::time_point plans_in, plans_out;  // rank 0
  std::vector<std::size_t> payload;       // per rank: the first gather's bytes
};

// A rank's coordinator that notes, per save, the size of its first gather
// and (rank 0) when the local plans were in and the final plans went out.
// The protocol's collectives per save: gather, scatter, gather, broadcast.
class TimingCoordinator final : public Coordinator {
 public:
  TimingCoordinator(Coordinator& inner, std::vector<SaveTimes>& saves)
      : inner_(inner), saves_(saves) {}
  int rank() const override { return inner_.rank(); }
  int world_size() const override { return inner_.world_size(); }
  std::vector<std::string> gather(std::string payload) override {
    const bool first = step_ % 4 == 0;
    if (first) saves_[save()].payload[static_cast<std::size_t>(rank())] = payload.size();
    ++step_;
    auto out = inner_.gather(std::move(payload));
    if (first && rank() == 0) saves_[save()].plans_in = Clock::now();
    return out;
  }
  std::string scatter(std::vector<std::string> payloads) override {
    if (rank() == 0) saves_[save()].plans_out = Clock::now();
    ++step_;
    return inner_.scatter(std::move(payloads));
  }
  std::string broadcast(std::string payload) override {
    ++step_;
    return inner_.broadcast(std::move(payload));
  }
  std::unique_ptr<Coordinator> duplicate() override { return inner_.duplicate(); }

 private:
  std::size_t save() const { return step_ / 4; }
  Coordinator& inner_;
  std::vector<SaveTimes>& saves_;
  std::size_t step_ = 0;
};

// `runs` runs of two saves each (cold, then cached) by the same `ranks`
// threads, as a long-running job's ranks would: each run starts from an
// empty plan cache. Returns the saves in order.
std::vector<SaveTimes> run_saves(int ranks, int entries, unsigned runs) {
  std::vector<SaveTimes> saves(2 * runs);
  for (auto& s : saves) s.payload.assign(static_cast<std::size_t>(ranks), 0);
  ThreadGroup group(ranks, std::chrono::minutes(30));
  std::vector<std::string> failures(static_cast<std::size_t>(ranks));
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(ranks));
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      try {
        const StateDict sd = ringckpt::bench::global_plan_state_dict(r, ranks, entries);
        TimingCoordinator c(group.member(r), saves);
        PlanOnlyWriter writer;
        for (unsigned run = 0; run < runs; ++run) {
          detail::PlanCache cache;
          for (int save = 0; save < 2; ++save) {
            DefaultSavePlanner planner;
            detail::run_save(
                sd, writer, planner, c,
                [](const SavePlan&, SavePlanner&) { return WriteResults{}; },
                {.cache = &cache, .share_metadata = false, .refuse = nullptr, .where = "bench"});
          }
          if (cache.cached_plans != 1) throw std::runtime_error("the second save was not cached");
        }
      } catch (const std::exception& e) {
        failures[static_cast<std::size_t>(r)] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < ranks; ++r) {
    if (!failures[static_cast<std::size_t>(r)].empty()) {
      throw std::runtime_error("rank " + std::to_string(r) + ": " +
                               failures[static_cast<std::size_t>(r)]);
    }
  }
  return saves;
}

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

}  // namespace

int run_plan_bench(const BenchOptions& o) {
  const int ranks = static_cast<int>(o.plan_ranks), entries = static_cast<int>(o.entries);
  std::vector<double> cold_ms, cached_ms, payload, payload_max, cached_payload, cached_payload_max;
  const std::vector<SaveTimes> saves = run_saves(ranks, entries, o.repeat);
  for (unsigned run = 0; run < o.repeat; ++run) {
    const SaveTimes& cold = saves[2 * run];
    const SaveTimes& cached = saves[2 * run + 1];
    cold_ms.push_back(ms_between(cold.plans_in, cold.plans_out));
    cached_ms.push_back(ms_between(cached.plans_in, cached.plans_out));
    const std::vector<double> cold_sizes(cold.payload.begin(), cold.payload.end());
    const std::vector<double> cached_sizes(cached.payload.begin(), cached.payload.end());
    payload.push_back(median(cold_sizes));
    payload_max.push_back(*std::ranges::max_element(cold_sizes));
    cached_payload.push_back(median(cached_sizes));
    cached_payload_max.push_back(*std::ranges::max_element(cached_sizes));
  }
  const double reshard_ms = reshard_scenario::reshard_plan_ms(static_cast<int>(o.repeat));

  struct Row {
    const char* name;
    const char* label;
    double value, limit;
    const char* unit;
  };
  const std::vector<Row> rows = {
      {"global_plan_cold_ms", "global plan, cold", median(cold_ms), 1000, "ms"},
      {"global_plan_cached_ms", "global plan, cached", median(cached_ms), 50, "ms"},
      {"plan_payload_bytes_per_rank", "plan payload a rank, cold (median)", median(payload),
       32 * 1024, "B"},
      {"plan_payload_bytes_per_rank_cached", "plan payload a rank, cached (median)",
       median(cached_payload), 256, "B"},
      {"reshard_plan_ms", "resharding plan, 500 x 1,024 -> 256 rows", reshard_ms, 70, "ms"},
  };
  if (o.json) {
    boost::json::object j;
    j["ranks"] = ranks;
    j["entries"] = entries;
    j["repeat"] = o.repeat;
    for (const Row& r : rows) j[r.name] = r.value;
    j["plan_payload_bytes_per_rank_max"] = *std::ranges::max_element(payload_max);
    j["plan_payload_bytes_per_rank_cached_max"] = *std::ranges::max_element(cached_payload_max);
    boost::json::array cold, cached;
    for (double v : cold_ms) cold.emplace_back(v);
    for (double v : cached_ms) cached.emplace_back(v);
    j["global_plan_cold_samples_ms"] = std::move(cold);
    j["global_plan_cached_samples_ms"] = std::move(cached);
    std::cout << boost::json::serialize(j) << "\n";
    return 0;
  }
  std::cout << ranks << " ranks (threads) x " << entries << " entries, " << o.repeat
            << " runs, medians; " << cpu_count() << " CPUs\n\n";
  std::vector<std::vector<std::string>> table;
  for (const Row& r : rows) {
    table.push_back({r.label, num(r.value) + " " + r.unit,
                     "< " + num(r.limit) + " " + r.unit + (r.value < r.limit ? "  PASS" : "  FAIL")});
  }
  std::cout << format_table({"figure", "median", "issue 10's target (1,024 x 1,000)"}, table);
  return 0;
}

}  // namespace ringckpt::tools::bench
