// tools/bench_train.cpp — `ringckpt bench --train`: a training-loop
// simulation. The loop runs once without checkpoints and once with a lazy
// save every K steps; the stalls each save costs are measured, and every
// checkpoint is loaded back and compared with the values of its step.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <boost/json.hpp>

#include "bench_figures.hpp"
#include "bench_footprint.hpp"
#include "bench_runs.hpp"
#include "bench_setup.hpp"
#include "bench_workdir.hpp"
#include "io/io_memory.hpp"
#include "io_notes.hpp"
#include "machine_facts.hpp"
#include "ringckpt/checkpoint.hpp"
#include "ringckpt/checkpointer.hpp"
#include "state_dict_mirror.hpp"
#include "stopwatch.hpp"
#include "synthetic.hpp"
#include "terminal.hpp"

namespace ringckpt::tools::bench {

namespace fs = std::filesystem;
namespace json = boost::json;

int run_train(const BenchOptions& o) {
  WorkDir work = make_work_dir(o);
  const WorkDirCleanup cleanup{work, o.keep};
  const fs::path& dir = work.path;
  std::vector<std::uint64_t> save_steps;
  for (std::uint64_t s = o.every; s <= o.train_steps; s += o.every) save_steps.push_back(s);
  {
    std::vector<std::string> names = {"bench-warmup"};
    for (auto s : save_steps) names.push_back("train-step-" + std::to_string(s));
    check_free(work, names);
  }

  IoNotes notes;
  SyntheticModel model = bench_model(o);
  const Footprint fp = measure_footprint(model, dir / "bench-warmup", o, notes);
  auto step_seed = [&](std::uint64_t s) { return o.seed + s; };
  const auto step_time = std::chrono::duration<double, std::milli>(o.step_ms);

  // "Compute": the forward and backward passes (the CPU is free meanwhile, as
  // while a GPU works), then the optimizer update that touches every parameter.
  auto compute = [&] { std::this_thread::sleep_for(step_time); };

  ProgressBar bar("train");
  const std::uint64_t total = 2 * o.train_steps;
  std::uint64_t progress = 0;

  // 1. The same loop without checkpoints.
  double plain_s = 0;
  {
    const auto t0 = Clock::now();
    for (std::uint64_t s = 1; s <= o.train_steps; ++s) {
      compute();
      refill(model, step_seed(s));
      bar.update(++progress, total);
    }
    plain_s = seconds_since(t0);
  }

  // 2. With a lazy save every K steps.
  CheckpointerOptions co;
  co.io = bench_io(o, fp.ring_bytes, notes, "ringckpt");
  co.default_mode = StagingMode::lazy;
  struct Save {
    std::uint64_t step = 0;
    fs::path dir;
    SaveHandle handle;
    double blocked_ms = 0;
    double wait_ms = 0;
  };
  std::vector<Save> saves;
  double ckpt_s = 0, drain_s = 0;
  Checkpointer ck(co);
  {
    std::optional<std::size_t> pending;  // save whose staging the next update must wait for
    const auto t0 = Clock::now();
    for (std::uint64_t s = 1; s <= o.train_steps; ++s) {
      compute();
      if (pending) {
        const auto w0 = Clock::now();
        saves[*pending].handle.staged.get();
        saves[*pending].wait_ms = seconds_since(w0) * 1e3;
        pending.reset();
      }
      refill(model, step_seed(s));
      if (s % o.every == 0) {
        Save sv;
        sv.step = s;
        sv.dir = dir / ("train-step-" + std::to_string(s));
        const auto b0 = Clock::now();
        sv.handle = ck.async_save(model.state_dict, sv.dir, {.mode = StagingMode::lazy});
        sv.blocked_ms = seconds_since(b0) * 1e3;
        saves.push_back(std::move(sv));
        pending = saves.size() - 1;
      }
      bar.update(++progress, total);
    }
    ckpt_s = seconds_since(t0);
    const auto d0 = Clock::now();
    for (auto& sv : saves) sv.handle.committed.get();
    drain_s = seconds_since(d0);
  }

  // 3. Every checkpoint holds exactly the values of its step.
  std::vector<std::unique_ptr<std::byte[]>> extra;
  IoMemory mirror(static_cast<std::size_t>(model.arena_bytes), "bench");
  StateDict target = mirror_state_dict(model, mirror.data(), extra);
  std::vector<std::string> failures;
  for (const auto& sv : saves) {
    refill(model, step_seed(sv.step));
    std::memset(mirror.data(), 0xA5, mirror.size());
    try {
      ck.load(target, sv.dir);
      const std::string diff = first_difference(model.state_dict, target);
      if (!diff.empty()) {
        failures.push_back(sv.dir.filename().string() + ": '" + diff +
                           "' differs from the values of step " + std::to_string(sv.step));
      }
    } catch (const std::exception& e) {
      failures.push_back(sv.dir.filename().string() + ": " + e.what());
    }
    if (!o.keep) remove_quietly(sv.dir);
  }
  const bool ok = failures.empty();

  std::vector<double> stalls;
  for (const auto& sv : saves) stalls.push_back(sv.blocked_ms + sv.wait_ms);
  const double slowdown = plain_s > 0 ? ckpt_s / plain_s - 1 : 0;
  const IoReport rep = ck.report();
  auto notes_all = notes.all();

  if (o.json) {
    json::object root;
    json::object mj;
    mj["dir"] = fs::absolute(dir).string();
    mj["filesystem"] = filesystem_name(dir);
    mj["direct_io"] = rep.direct_io;
    mj["registered_buffers"] = rep.registered_buffers;
    mj["extent_size"] = o.extent_size;
    mj["queue_depth"] = o.queue_depth;
    mj["model"] = o.model_name;
    mj["model_bytes"] = model.bytes;
    mj["tensors"] = model.tensors;
    mj["data_file_bytes"] = fp.file_bytes;
    mj["ring_bytes"] = fp.ring_bytes;
    mj["cpus"] = cpu_count();
    json::array na;
    for (const auto& n : notes_all) na.emplace_back(n);
    mj["notes"] = std::move(na);
    root["machine"] = std::move(mj);
    json::object t;
    t["steps"] = o.train_steps;
    t["step_ms"] = o.step_ms;
    t["every"] = o.every;
    t["loop_ms_without"] = plain_s * 1e3;
    t["loop_ms_with"] = ckpt_s * 1e3;
    t["slowdown"] = slowdown;
    t["drain_ms"] = drain_s * 1e3;
    json::array st;
    for (double v : stalls) st.emplace_back(v);
    t["stall_ms"] = std::move(st);
    t["stall_p50_ms"] = percentile(stalls, 50);
    t["stall_p99_ms"] = percentile(stalls, 99);
    t["stall_max_ms"] = stalls.empty() ? 0.0 : *std::max_element(stalls.begin(), stalls.end());
    t["saves"] = saves.size();
    t["values_ok"] = ok;
    json::array fa;
    for (const auto& f : failures) fa.emplace_back(f);
    t["failures"] = std::move(fa);
    root["train"] = std::move(t);
    root["ok"] = ok;
    std::cout << json::serialize(root) << "\n";
  } else {
    std::cout << "ringckpt bench --train: " << o.model_name << " model "
              << format_bytes(model.bytes) << " (" << model.tensors << " tensors), "
              << o.train_steps << " steps of " << num(o.step_ms) << " ms compute + update, lazy save every "
              << o.every << " steps; dir " << fs::absolute(dir).string() << " ("
              << filesystem_name(dir) << "), O_DIRECT " << (rep.direct_io ? "yes" : "NO")
              << ", registered buffers " << (rep.registered_buffers ? "yes" : "NO") << ", extent "
              << format_bytes(o.extent_size) << ", queue depth " << o.queue_depth << ", ring "
              << format_bytes(fp.ring_bytes) << ", " << cpu_count() << " CPUs\n";
    for (const auto& n : notes_all) std::cout << "note: " << n << "\n";
    std::cout << "\n";
    const double steps = static_cast<double>(o.train_steps);
    std::vector<std::vector<std::string>> rows = {
        {"loop without checkpoints", num(plain_s * 1e3) + " ms", num(plain_s * 1e3 / steps) + " ms/step"},
        {"loop with checkpoints", num(ckpt_s * 1e3) + " ms", num(ckpt_s * 1e3 / steps) + " ms/step"},
        {"slowdown", num(slowdown * 100) + " %", ""},
        {"saves", std::to_string(saves.size()), ""},
        {"stall per save p50", num(percentile(stalls, 50)) + " ms", "blocked + wait for staged"},
        {"stall per save p99", num(percentile(stalls, 99)) + " ms", ""},
        {"stall per save max",
         num(stalls.empty() ? 0.0 : *std::max_element(stalls.begin(), stalls.end())) + " ms", ""},
        {"drain after the loop", num(drain_s * 1e3) + " ms", "until every save committed"},
    };
    std::cout << format_table({"figure", "value", ""}, rows) << "\n";
    std::cout << (ok ? "PASS" : "FAIL") << "  every checkpoint loads and holds the values of its step ("
              << saves.size() << " checked)\n";
    for (const auto& f : failures) std::cout << "  " << f << "\n";
  }
  return ok ? 0 : 1;
}


}  // namespace ringckpt::tools::bench
