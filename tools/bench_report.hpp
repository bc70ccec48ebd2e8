// tools/bench_report.hpp — what `ringckpt bench` says at the end of the main
// run: the machine, a table of the figures, the targets' PASS/FAIL lines and
// the verification of the last checkpoints, as text or as one JSON document.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "bench_figures.hpp"
#include "bench_options.hpp"
#include "ringckpt/verify.hpp"

namespace ringckpt::tools::bench {

// Where and how the bench ran.
struct Machine {
  std::filesystem::path dir;
  std::string fs_type;
  bool direct_io = false;
  bool registered_buffers = false;
  bool device_direct = false;
  bool device_registered = false;
  std::uint64_t extent = 0;
  unsigned depth = 0;
  std::uint64_t model_bytes = 0;
  std::size_t tensors = 0;
  std::uint64_t file_bytes = 0;
  std::uint64_t ring_bytes = 0;
  std::uint64_t bounded_ring_bytes = 0;
  unsigned cpus = 0;
  std::vector<std::string> notes;
};

// One target of the issue (informational: it does not set the exit status).
struct Target {
  std::string name;
  std::string rule;
  double value = 0;
  double limit = 0;
  bool pass = false;
};

// The verification of the last checkpoint of one kind (sync, snapshot, ...).
struct Verified {
  std::string kind;
  VerifyReport report;
};

struct MainBenchResult {
  Machine machine;
  Figures figures;  // ratios computed
  std::vector<Target> targets;
  std::vector<Verified> verified;
  bool load_checked = true;  // false where the run loads nothing (--device-only)
  bool load_matches = true;
  std::string load_difference;  // the first entry that differed, if !load_matches
  bool ok = true;               // every checkpoint verified and the load matched
};

// The targets, judged on `figures` (ratios computed): sync vs device,
// snapshot staging vs memcpy, lazy blocked, snapshot blocked vs memcpy time,
// and the bounded mode's worst peak-RSS rise (`rss_rise_bytes`, one per run;
// a failure if !rss_measured) against its ring + 64 MiB.
std::vector<Target> judge_targets(const Figures& figures, const std::vector<double>& rss_rise_bytes,
                                  bool rss_measured, std::uint64_t bounded_ring_bytes);

// Prints `r` on stdout: one JSON document with --json, else the text report.
void print_main_report(const MainBenchResult& r, const BenchOptions& o);

}  // namespace ringckpt::tools::bench
