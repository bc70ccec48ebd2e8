// tools/bench_ranks.cpp — `ringckpt bench --ranks N`, under `mpirun -n N`:
// every rank saves its shard of one model (each tensor split by rows over
// the ranks; tensors too small to split are replicated and written once)
// into one checkpoint, through a Checkpointer on an MpiCoordinator.
//
// Interleaved run by run, each phase timed on rank 0 from a barrier before it
// to a barrier after every rank is done:
//   device         N writers (one a rank) of the checkpoint's bytes, split
//                  evenly: io_uring O_DIRECT, then fdatasync; the limit
//   ringckpt-sync  Checkpointer::save on every rank
//   lazy           async_save: the caller's blocked time (the slowest rank's),
//                  then to committed on every rank
// then a load of the last checkpoint by the same ranks, each checking its
// shard. Rank 0 prints the report (text, or --json shaped like the main run).
// With --device-only, the device phase alone: a baseline for another
// program's N-rank save (bench/compare_torch.py --ranks N).
#include <algorithm>
#include <cstring>
#include <exception>
#include <iostream>

#include "bench_baselines.hpp"
#include "bench_figures.hpp"
#include "bench_report.hpp"
#include "bench_runs.hpp"
#include "bench_setup.hpp"
#include "bench_workdir.hpp"
#include "format/file_extents.hpp"
#include "io/io_engine.hpp"
#include "io_notes.hpp"
#include "machine_facts.hpp"
#include "ringckpt/checkpoint.hpp"
#include "ringckpt/checkpointer.hpp"
#include "ringckpt/verify.hpp"
#include "stopwatch.hpp"
#include "synthetic.hpp"

#ifdef RINGCKPT_BENCH_MPI
#include "ringckpt/mpi.hpp"
#endif

namespace ringckpt::tools::bench {

#ifndef RINGCKPT_BENCH_MPI

int run_ranks_bench(const BenchOptions&) {
  throw UsageError("--ranks needs a ringckpt built with MPI (meson option mpi)");
}

#else

namespace {

namespace fs = std::filesystem;

// MPI for the length of the run, at the level a Checkpointer needs.
struct MpiRun {
  MpiRun() {
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
  }
  ~MpiRun() { MPI_Finalize(); }
};

double max_over_ranks(double v) {
  double out = 0;
  MPI_Allreduce(&v, &out, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return out;
}

bool all_ranks(bool v) {
  int in = v ? 1 : 0, out = 0;
  MPI_Allreduce(&in, &out, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return out == 1;
}

// Seconds from a barrier before `f` to a barrier after it, every rank alike.
template <typename F>
double timed_together(F&& f) {
  MPI_Barrier(MPI_COMM_WORLD);
  const auto t0 = Clock::now();
  f();
  MPI_Barrier(MPI_COMM_WORLD);
  return max_over_ranks(seconds_since(t0));
}

// This rank's shard of every tensor of `model` (rows [r*n/N, (r+1)*n/N)
// of each), viewing the model's memory; tensors with fewer rows than ranks,
// and blobs, replicated.
StateDict shard_of(const SyntheticModel& model, int rank, int world) {
  StateDict sd;
  for (const auto& e : model.state_dict) {
    const auto* t = std::get_if<TensorView>(&e.value);
    if (t == nullptr || t->shape.empty() || t->shape[0] < world) {
      sd.add(e.fqn, e.value);
      continue;
    }
    const std::int64_t rows = t->shape[0];
    const std::int64_t begin = rows * rank / world, end = rows * (rank + 1) / world;
    const std::size_t row_bytes = t->nbytes() / static_cast<std::size_t>(rows);
    Shape local = t->shape;
    Shape offsets(t->shape.size(), 0);
    local[0] = end - begin;
    offsets[0] = begin;
    TensorView view{static_cast<std::byte*>(t->data) + static_cast<std::size_t>(begin) * row_bytes,
                    t->dtype, local};
    sd.add(e.fqn, ShardedTensor{t->dtype, t->shape, {Shard{view, offsets}}});
  }
  return sd;
}

// The bytes of the data files of the checkpoint in `dir`.
std::uint64_t data_bytes(const fs::path& dir) {
  std::uint64_t n = 0;
  for (const FileInfo& f : read_metadata(dir).files) n += f.size;
  return n;
}

// Whether every shard `loaded` holds equals `saved`'s.
bool same_shards(const StateDict& saved, const StateDict& loaded) {
  for (const auto& e : saved) {
    const StateValue* other = loaded.find(e.fqn);
    if (other == nullptr) return false;
    if (const auto* st = std::get_if<ShardedTensor>(&e.value)) {
      const auto* ot = std::get_if<ShardedTensor>(other);
      if (ot == nullptr || ot->shards.size() != st->shards.size()) return false;
      for (std::size_t i = 0; i < st->shards.size(); ++i) {
        const auto a = st->shards[i].local.bytes();
        const auto b = ot->shards[i].local.bytes();
        if (a.size() != b.size() || std::memcmp(a.data(), b.data(), a.size()) != 0) return false;
      }
    } else if (const auto* t = std::get_if<TensorView>(&e.value)) {
      const auto* o = std::get_if<TensorView>(other);
      if (o == nullptr || o->nbytes() != t->nbytes() ||
          std::memcmp(o->data, t->data, t->nbytes()) != 0) {
        return false;
      }
    } else if (std::get<Bytes>(e.value) != std::get<Bytes>(*other)) {
      return false;
    }
  }
  return true;
}

// A zeroed twin of `sd` (its tensors in `storage`), to load into.
StateDict blank_twin(const StateDict& sd, std::vector<std::vector<std::byte>>& storage) {
  StateDict out;
  auto blank = [&](const TensorView& t) {
    auto& bytes = storage.emplace_back(t.nbytes());
    return TensorView{bytes.data(), t.dtype, t.shape};
  };
  for (const auto& e : sd) {
    if (const auto* st = std::get_if<ShardedTensor>(&e.value)) {
      ShardedTensor twin{st->dtype, st->global_shape, {}};
      for (const auto& s : st->shards) twin.shards.push_back({blank(s.local), s.offsets});
      out.add(e.fqn, std::move(twin));
    } else if (const auto* t = std::get_if<TensorView>(&e.value)) {
      out.add(e.fqn, blank(*t));
    } else {
      out.add(e.fqn, Bytes{});
    }
  }
  return out;
}

// The device phase's figure: N writers.
void add_device_figure(Figures& figs, int n) {
  figs.add("device", std::to_string(n) + " writers (io_uring O_DIRECT)", Unit::gbps);
}

// One run of the device phase: each rank writes `share` bytes to its own
// file in `dir`, then removes it unless `keep`. Returns GB/s of `all_bytes`,
// barrier to barrier.
double device_run(RawDevice& device, const fs::path& dir, int rank, std::uint64_t share,
                  std::uint64_t all_bytes, bool keep = false) {
  const fs::path raw = dir / ("rank-" + std::to_string(rank) + ".bin");
  const double s = timed_together([&] { device.write(raw, share); });
  if (!keep) remove_quietly(raw);
  return gb_per_s(all_bytes, s);
}

// --device-only: the N writers of the model's bytes (split evenly; the model
// is sized, never made), --repeat times; no checkpoint is written or loaded.
// With --keep the last run's files stay in bench-device (a caller that
// removes its own outputs later, as bench/compare_torch.py does, keeps a file
// system's discards of the device's files out of the next timed phase).
int run_device_only(const BenchOptions& o, const fs::path& dir, ModelSize model, int rank,
                    int n) {
  IoNotes notes;
  const std::uint64_t share =
      detail::round_up(model.bytes / static_cast<std::uint64_t>(n) + 1, 4096);
  const std::uint64_t all_bytes = share * static_cast<std::uint64_t>(n);
  RawDevice device(o.extent_size, o.queue_depth, share, notes);
  MainBenchResult r;
  r.machine = machine_of(dir, o, model, all_bytes, 0);
  r.load_checked = false;
  add_device_figure(r.figures, n);
  for (unsigned run = 0; run < o.repeat; ++run) {
    const bool keep = o.keep && run + 1 == o.repeat;
    r.figures["device"].samples.push_back(
        device_run(device, dir / "bench-device", rank, share, all_bytes, keep));
  }
  r.machine.device_direct = device.last_direct();
  r.machine.device_registered = device.registered();
  if (rank == 0) {
    r.machine.notes = notes.all();
    r.machine.notes.push_back(std::to_string(n) + " ranks; --device-only: " +
                              format_bytes(share) + " a writer");
    r.figures.compute_ratios();
    print_main_report(r, o);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0 && !o.keep) remove_quietly(dir / "bench-device");
  return 0;
}

// The run on every rank. REQUIRES: MPI initialized, n == o.ranks.
int run_ranks(const BenchOptions& o, MpiCoordinator& world) {
  const int rank = world.rank(), n = world.world_size();
  const bool root = rank == 0;
  // Rank 0 makes the work directory; every rank writes in it. If it cannot,
  // it sends why instead (after a '\0'), and every rank throws it.
  WorkDir work;
  std::string where;
  std::exception_ptr refused;
  if (root) {
    try {
      work = make_work_dir(o);
      check_free(work, {"bench-device", "bench-sync", "bench-lazy"});
      fs::create_directory(work.path / "bench-device");
      where = work.path.string();
    } catch (const std::exception& e) {
      refused = std::current_exception();
      where = std::string(1, '\0') + e.what();
    }
  }
  where = world.broadcast(where);
  if (refused) std::rethrow_exception(refused);
  if (where.starts_with('\0')) throw UsageError(where.substr(1));
  work.path = where;
  const WorkDirCleanup cleanup{work, o.keep};  // owned (and so removed) on rank 0 only
  const fs::path dir = work.path;

  IoNotes notes;
  if (o.device_only) return run_device_only(o, dir, bench_model_size(o), rank, n);
  SyntheticModel model = bench_model(o);
  StateDict mine = shard_of(model, rank, n);

  CheckpointerOptions co;
  co.io = bench_io(o, 0, notes, "ringckpt");
  // The ring holds this rank's share whole (lazy stages at memory speed).
  co.io.ring_bytes = std::max<std::uint64_t>(
      detail::round_up(model.bytes / static_cast<std::uint64_t>(n) + model.bytes / 16,
                       o.extent_size),
      2 * o.extent_size);
  Checkpointer ck(co, world);
  // An untimed save: the footprint, and the plan every later save reuses.
  ck.save(mine, dir / "bench-sync");
  const std::uint64_t bytes = root ? data_bytes(dir / "bench-sync") : 0;
  std::uint64_t all_bytes = bytes;
  MPI_Bcast(&all_bytes, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  if (root) remove_quietly(dir / "bench-sync");
  const std::uint64_t share = detail::round_up(all_bytes / static_cast<std::uint64_t>(n), 4096);
  RawDevice device(o.extent_size, o.queue_depth, share, notes);

  MainBenchResult r;
  Machine& m = r.machine;
  m = machine_of(dir, o, model.size(), all_bytes, co.io.ring_bytes);
  Figures& figs = r.figures;
  figs.all().reserve(8);
  add_device_figure(figs, n);
  figs.add("ringckpt-sync", "ringckpt-sync save, " + std::to_string(n) + " ranks", Unit::gbps,
           "device", "device");
  figs.add("lazy-blocked", "lazy: blocked (slowest rank)", Unit::ms);
  figs.add("lazy-committed", "lazy: to committed", Unit::gbps, "device", "device");
  auto gbps = [&](double s) { return gb_per_s(all_bytes, s); };

  for (unsigned run = 0; run < o.repeat; ++run) {
    const bool last = run + 1 == o.repeat;
    figs["device"].samples.push_back(
        device_run(device, dir / "bench-device", rank, share, all_bytes));
    m.device_direct = device.last_direct();
    figs["ringckpt-sync"].samples.push_back(
        gbps(timed_together([&] { ck.save(mine, dir / "bench-sync"); })));
    double blocked = 0;
    figs["lazy-committed"].samples.push_back(gbps(timed_together([&] {
      const auto t0 = Clock::now();
      SaveHandle h = ck.async_save(mine, dir / "bench-lazy", {.mode = StagingMode::lazy});
      blocked = seconds_since(t0);
      h.committed.get();
    })));
    figs["lazy-blocked"].samples.push_back(max_over_ranks(blocked) * 1e3);
    MPI_Barrier(MPI_COMM_WORLD);
    if (root && !last) {
      remove_quietly(dir / "bench-sync");
      remove_quietly(dir / "bench-lazy");
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
  // Every rank loads its shard of the last sync checkpoint back.
  std::vector<std::vector<std::byte>> storage;
  StateDict back = blank_twin(mine, storage);
  ck.load(back, dir / "bench-sync");
  r.load_matches = all_ranks(same_shards(mine, back));
  if (!r.load_matches) r.load_difference = "a rank's shard";
  const PlanCacheReport plans = ck.plan_cache();
  {
    const IoReport rep = ck.report();
    m.direct_io = rep.direct_io;
    m.registered_buffers = rep.registered_buffers;
  }
  m.device_registered = device.registered();
  r.ok = r.load_matches;
  if (root) {
    for (const char* kind : {"sync", "lazy"}) {
      const fs::path p = dir / ("bench-" + std::string(kind));
      r.verified.push_back({kind, ringckpt::verify(p, co.io)});
      r.ok = r.ok && r.verified.back().report.ok();
      if (!o.keep) remove_quietly(p);
    }
    m.notes = notes.all();
    m.notes.push_back(std::to_string(n) + " ranks; plans on rank 0: " + std::to_string(plans.cold) +
                      " cold, " + std::to_string(plans.cached) + " cached");
    figs.compute_ratios();
    auto ratio = [&](const char* name) { return figs[name].ratio.value_or(0); };
    const double blocked_ms = median(figs["lazy-blocked"].samples);
    r.targets.push_back({"sync-vs-device", "ringckpt-sync >= 0.85 x N-writer device write",
                         ratio("ringckpt-sync"), 0.85, ratio("ringckpt-sync") >= 0.85});
    r.targets.push_back({"lazy-blocked", "lazy blocked < 1 ms (plan cached)", blocked_ms, 1.0,
                         blocked_ms < 1.0 && plans.cached > 0});
    print_main_report(r, o);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (root) remove_quietly(dir / "bench-device");
  return all_ranks(r.ok || !root) ? 0 : 1;
}

}  // namespace

int run_ranks_bench(const BenchOptions& o) {
  MpiRun mpi;
  MpiCoordinator world;
  const int n = world.world_size();
  if (n != static_cast<int>(o.ranks)) {  // every rank finds it: none waits
    throw UsageError("--ranks " + std::to_string(o.ranks) + " but mpirun started " +
                     std::to_string(n) + " ranks");
  }
  try {
    return run_ranks(o, world);
  } catch (const UsageError&) {
    throw;  // found before any collective but the first, by every rank
  } catch (const std::exception& e) {
    // A failure on one rank may leave the others waiting in a collective
    // (the bench's own MPI calls, outside the Checkpointer's protocol, do
    // not carry it): report it and end the job rather than hang in
    // MPI_Finalize.
    std::cerr << "ringckpt bench --ranks: rank " << world.rank() << ": " << e.what() << std::endl;
    MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
  }
}

#endif

}  // namespace ringckpt::tools::bench
