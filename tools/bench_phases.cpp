// tools/bench_phases.cpp — the main run of `ringckpt bench`: ringckpt's save
// and load paths measured against the limits of the same machine.
//
// Every phase writes (or reads) the same bytes — the data files of one
// checkpoint of the synthetic model — in the same directory; phases run
// interleaved (device, naive, memcpy, sync, snapshot, lazy, bounded,
// device-read, load; then again) so that drift of the disk or the machine hits
// all of them alike. Figures are reported as ratios to their baseline (see
// bench_baselines.hpp).
#include <algorithm>
#include <cstdint>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "bench_baselines.hpp"
#include "bench_figures.hpp"
#include "bench_footprint.hpp"
#include "bench_report.hpp"
#include "bench_runs.hpp"
#include "bench_setup.hpp"
#include "bench_workdir.hpp"
#include "format/file_extents.hpp"
#include "io/io_engine.hpp"
#include "io/io_memory.hpp"
#include "io_notes.hpp"
#include "machine_facts.hpp"
#include "ringckpt/checkpoint.hpp"
#include "ringckpt/checkpointer.hpp"
#include "ringckpt/verify.hpp"
#include "state_dict_mirror.hpp"
#include "stopwatch.hpp"
#include "synthetic.hpp"
#include "terminal.hpp"

namespace ringckpt::tools::bench {

namespace fs = std::filesystem;

int run_main_bench(const BenchOptions& o) {
  const std::vector<std::string> names = {"bench-warmup", "bench-device.bin", "bench-naive.bin",
                                          "bench-sync", "bench-snapshot", "bench-lazy",
                                          "bench-bounded"};
  WorkDir work = make_work_dir(o);
  const WorkDirCleanup cleanup{work, o.keep};
  check_free(work, names);
  const fs::path& dir = work.path;
  auto at = [&](const char* n) { return dir / n; };

  IoNotes notes;
  SyntheticModel model = bench_model(o);
  const std::uint64_t copy_bytes = model.bytes;

  const Footprint fp = measure_footprint(model, at("bench-warmup"), o, notes);
  const std::uint64_t bytes = fp.file_bytes;
  const std::uint64_t header_bytes = bytes > model.bytes ? bytes - model.bytes : 0;

  MainBenchResult r;  // what the report shows
  Machine& m = r.machine;
  m = machine_of(dir, o, model.size(), bytes, fp.ring_bytes);

  // Everything allocated before timing starts.
  RawDevice device(o.extent_size, o.queue_depth, bytes, notes);
  IoMemory mirror(static_cast<std::size_t>(model.arena_bytes), "bench");
  std::vector<std::unique_ptr<std::byte[]>> mirror_extra;
  StateDict target = mirror_state_dict(model, mirror.data(), mirror_extra);

  CheckpointerOptions co;
  co.io = bench_io(o, fp.ring_bytes, notes, "ringckpt");
  Checkpointer ck(co);

  CheckpointerOptions bo = co;
  bo.io.ring_bytes = std::max<std::uint64_t>(detail::round_up(fp.ring_bytes / 8, o.extent_size),
                                              2 * o.extent_size);
  bo.io.report = notes.sink("bounded");
  bo.default_mode = StagingMode::bounded;
  m.bounded_ring_bytes = bo.io.ring_bytes;

  Figures& figs = r.figures;
  figs.all().reserve(32);
  figs.add("device", "device write (io_uring O_DIRECT)", Unit::gbps);
  figs.add("naive", "naive write()+fsync", Unit::gbps, "device", "device");
  figs.add("memcpy", "memcpy (1 thread)", Unit::gbps);
  figs.add("memcpy-time", "memcpy time", Unit::ms);
  figs.add("ringckpt-sync", "ringckpt-sync save", Unit::gbps, "device", "device");
  figs.add("snapshot-blocked", "snapshot: blocked", Unit::ms, "memcpy-time", "memcpy time");
  figs.add("snapshot-staging", "snapshot: staging rate", Unit::gbps, "memcpy", "memcpy");
  figs.add("snapshot-committed", "snapshot: to committed", Unit::gbps, "device", "device");
  figs.add("lazy-blocked", "lazy: blocked", Unit::ms);
  figs.add("lazy-staged", "lazy: to staged", Unit::ms, "memcpy-time", "memcpy time");
  figs.add("lazy-committed", "lazy: to committed", Unit::gbps, "device", "device");
  figs.add("bounded-blocked", "bounded: blocked", Unit::ms);
  figs.add("bounded-committed", "bounded: to committed", Unit::gbps, "device", "device");
  {
    Figure& f = figs.add("bounded-rss-rise", "bounded: peak RSS rise", Unit::mib, "",
                         "ring " + format_bytes(bo.io.ring_bytes));
    f.fixed_baseline = static_cast<double>(bo.io.ring_bytes) / kMiB;
  }
  figs.add("device-read", "device read (io_uring O_DIRECT)", Unit::gbps);
  figs.add("load", "ringckpt load (verified)", Unit::gbps, "device-read", "device read");

  auto gbps = [](std::uint64_t n, double s) { return gb_per_s(n, s); };
  auto ms = [](double s) { return s * 1e3; };
  std::vector<double> rss_rise_bytes;
  bool rss_measured = true;

  const unsigned phases = 9;
  ProgressBar bar("bench");
  std::uint64_t done = 0;
  const std::uint64_t total = std::uint64_t{phases} * o.repeat;
  auto step = [&] { bar.update(++done, total); };


  for (unsigned run = 0; run < o.repeat; ++run) {
    const bool last = run + 1 == o.repeat;
    // device
    figs["device"].samples.push_back(gbps(bytes, device.write(at("bench-device.bin"), bytes)));
    m.device_direct = device.last_direct();
    remove_quietly(at("bench-device.bin"));
    step();
    // naive
    figs["naive"].samples.push_back(
        gbps(bytes, naive_write(at("bench-naive.bin"), model.state_dict, header_bytes)));
    remove_quietly(at("bench-naive.bin"));
    step();
    // memcpy
    {
      const double s = memcpy_copy(model.state_dict, target);
      figs["memcpy"].samples.push_back(gbps(copy_bytes, s));
      figs["memcpy-time"].samples.push_back(ms(s));
    }
    step();
    // ringckpt-sync
    {
      const auto t0 = Clock::now();
      ck.save(model.state_dict, at("bench-sync"));
      figs["ringckpt-sync"].samples.push_back(gbps(bytes, seconds_since(t0)));
    }
    step();
    // snapshot
    {
      const auto t0 = Clock::now();
      SaveHandle h = ck.async_save(model.state_dict, at("bench-snapshot"),
                                   {.mode = StagingMode::snapshot});
      const double blocked = seconds_since(t0);
      h.committed.get();
      const double committed = seconds_since(t0);
      figs["snapshot-blocked"].samples.push_back(ms(blocked));
      figs["snapshot-staging"].samples.push_back(gbps(copy_bytes, blocked));
      figs["snapshot-committed"].samples.push_back(gbps(bytes, committed));
      if (!last) remove_quietly(at("bench-snapshot"));
    }
    step();
    // lazy
    {
      const auto t0 = Clock::now();
      SaveHandle h = ck.async_save(model.state_dict, at("bench-lazy"), {.mode = StagingMode::lazy});
      const double blocked = seconds_since(t0);
      h.staged.get();
      const double staged = seconds_since(t0);
      h.committed.get();
      const double committed = seconds_since(t0);
      figs["lazy-blocked"].samples.push_back(ms(blocked));
      figs["lazy-staged"].samples.push_back(ms(staged));
      figs["lazy-committed"].samples.push_back(gbps(bytes, committed));
      if (!last) remove_quietly(at("bench-lazy"));
    }
    step();
    // bounded: its own, small ring; peak RSS from before the ring exists
    {
      const std::uint64_t before = proc_status_kb("VmRSS");
      const bool reset = reset_peak_rss();
      double blocked = 0, committed = 0;
      {
        Checkpointer bck(bo);
        const auto t0 = Clock::now();
        SaveHandle h = bck.async_save(model.state_dict, at("bench-bounded"),
                                      {.mode = StagingMode::bounded});
        blocked = seconds_since(t0);
        h.committed.get();
        committed = seconds_since(t0);
      }
      const std::uint64_t peak = proc_status_kb("VmHWM");
      if (reset && before > 0 && peak > 0) {
        rss_rise_bytes.push_back(peak > before ? static_cast<double>(peak - before) : 0.0);
        figs["bounded-rss-rise"].samples.push_back(rss_rise_bytes.back() / kMiB);
      } else {
        rss_measured = false;
      }
      figs["bounded-blocked"].samples.push_back(ms(blocked));
      figs["bounded-committed"].samples.push_back(gbps(bytes, committed));
      if (!last) remove_quietly(at("bench-bounded"));
    }
    step();
    // device-read and load, of this round's sync checkpoint
    {
      const auto files = data_files(at("bench-sync"));
      figs["device-read"].samples.push_back(gbps(bytes, device.read(files)));
      step();
      const auto t0 = Clock::now();
      ck.load(target, at("bench-sync"));
      figs["load"].samples.push_back(gbps(bytes, seconds_since(t0)));
      step();
      if (last) {
        r.load_difference = first_difference(model.state_dict, target);
        r.load_matches = r.load_difference.empty();
      } else {
        remove_quietly(at("bench-sync"));
      }
    }
  }
  {
    const IoReport rep = ck.report();
    m.direct_io = rep.direct_io;
    m.registered_buffers = rep.registered_buffers;
  }
  m.device_registered = device.registered();
  bar.update(total, total);

  // Correctness: the last checkpoint of each kind verifies.
  r.ok = r.load_matches;
  {
    const IoOptions vio = bench_io(
        o, std::max<std::uint64_t>(2, std::min<std::uint64_t>(o.queue_depth, 16)) * o.extent_size,
        notes, "verify");
    for (const char* kind : {"sync", "snapshot", "lazy", "bounded"}) {
      const fs::path p = dir / ("bench-" + std::string(kind));
      r.verified.push_back({kind, ringckpt::verify(p, vio)});
      r.ok = r.ok && r.verified.back().report.ok();
      if (!o.keep) remove_quietly(p);
    }
  }
  m.notes = notes.all();

  figs.compute_ratios();

  r.targets = judge_targets(r.figures, rss_rise_bytes, rss_measured, bo.io.ring_bytes);
  print_main_report(r, o);
  if (o.keep) {
    std::cerr << "ringckpt bench: kept bench-sync, bench-snapshot, bench-lazy and bench-bounded in "
              << dir.string() << "\n";
  }
  return r.ok ? 0 : 1;
}

}  // namespace ringckpt::tools::bench
