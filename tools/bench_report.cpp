// tools/bench_report.cpp — the end of the main run: the targets, and the
// report as text or JSON.
#include "bench_report.hpp"

#include <algorithm>
#include <iostream>
#include <sstream>

#include "synthetic.hpp"
#include "terminal.hpp"

namespace ringckpt::tools::bench {
namespace {

namespace json = boost::json;

constexpr std::uint64_t kRssSlack = 64 * kMiB;  // bounded: allowed rise beyond the ring

std::string machine_line(const Machine& m, const BenchOptions& o) {
  std::ostringstream s;
  s << "ringckpt bench: " << o.model_name << " model " << format_bytes(m.model_bytes) << " ("
    << m.tensors << " tensors; data files " << format_bytes(m.file_bytes) << ")"
    << ", dir " << m.dir.string() << " (" << m.fs_type << ")";
  if (!o.device_only) {  // the Checkpointer's facts
    s << ", O_DIRECT " << (m.direct_io ? "yes" : "NO")
      << ", registered buffers " << (m.registered_buffers ? "yes" : "NO");
  }
  s << ", extent " << format_bytes(m.extent) << ", queue depth " << m.depth;
  if (!o.device_only) s << ", ring " << format_bytes(m.ring_bytes);
  s << ", " << m.cpus << " CPUs";
  return s.str();
}

json::object machine_json(const Machine& m, const BenchOptions& o) {
  json::object j;
  j["dir"] = m.dir.string();
  j["filesystem"] = m.fs_type;
  j["direct_io"] = m.direct_io;
  j["registered_buffers"] = m.registered_buffers;
  j["device_direct_io"] = m.device_direct;
  j["device_registered_buffers"] = m.device_registered;
  j["extent_size"] = m.extent;
  j["queue_depth"] = m.depth;
  j["model"] = o.model_name;
  j["model_bytes"] = m.model_bytes;
  j["tensors"] = m.tensors;
  j["data_file_bytes"] = m.file_bytes;
  j["ring_bytes"] = m.ring_bytes;
  if (m.bounded_ring_bytes) j["bounded_ring_bytes"] = m.bounded_ring_bytes;
  j["cpus"] = m.cpus;
  j["seed"] = o.seed;
  json::array notes;
  for (const auto& n : m.notes) notes.emplace_back(n);
  j["notes"] = std::move(notes);
  return j;
}

// The --json document.
void print_json(const MainBenchResult& r, const BenchOptions& o) {
  json::object root;
  root["machine"] = machine_json(r.machine, o);
  root["repeat"] = o.repeat;
  json::object phases;
  for (const auto& f : r.figures.all()) {
    json::object p;
    p["name"] = f.name;
    p["unit"] = unit_name(f.unit);
    json::array s;
    for (double v : f.samples) s.emplace_back(v);
    p["samples"] = std::move(s);
    if (f.samples.empty()) {
      p["median"] = nullptr;
      p["min"] = nullptr;
      p["max"] = nullptr;
    } else {
      p["median"] = median(f.samples);
      p["min"] = *std::min_element(f.samples.begin(), f.samples.end());
      p["max"] = *std::max_element(f.samples.begin(), f.samples.end());
    }
    p["ratio"] = number_or_null(f.ratio);
    if (f.fixed_baseline) {
      p["baseline"] = "ring";
      p["baseline_value"] = *f.fixed_baseline;
    } else if (!f.baseline.empty()) {
      p["baseline"] = f.baseline;
    } else {
      p["baseline"] = nullptr;
    }
    phases[f.name] = std::move(p);
  }
  root["phases"] = std::move(phases);
  json::array ts;
  for (const auto& t : r.targets) {
    ts.emplace_back(json::object{{"name", t.name}, {"rule", t.rule}, {"value", t.value},
                                 {"limit", t.limit}, {"pass", t.pass}});
  }
  root["targets"] = std::move(ts);
  json::array vs;
  for (const auto& v : r.verified) {
    json::array faults;
    for (const auto& f : v.report.faults) faults.emplace_back(f.file + ": " + f.message);
    vs.emplace_back(json::object{{"kind", v.kind}, {"ok", v.report.ok()},
                                 {"extents", v.report.extents}, {"bytes", v.report.bytes},
                                 {"faults", std::move(faults)}});
  }
  root["verify"] = std::move(vs);
  root["load_matches"] = r.load_checked ? json::value(r.load_matches) : json::value(nullptr);
  root["ok"] = r.ok;
  std::cout << json::serialize(root) << "\n";
}

// The text report: machine, table, PASS/FAIL lines, verification, round trip.
void print_text(const MainBenchResult& r, const BenchOptions& o) {
  std::cout << machine_line(r.machine, o) << "\n";
  std::cout << "repeat " << o.repeat << ", interleaved; device write "
            << (r.machine.device_direct ? "O_DIRECT" : "buffered (O_DIRECT refused)")
            << (r.machine.device_registered ? ", registered buffer" : ", unregistered buffer");
  if (r.machine.bounded_ring_bytes > 0) {
    std::cout << "; bounded ring " << format_bytes(r.machine.bounded_ring_bytes);
  }
  std::cout << "\n";
  for (const auto& n : r.machine.notes) std::cout << "note: " << n << "\n";
  std::cout << "\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& f : r.figures.all()) {
    if (f.samples.empty()) continue;
    const auto [lo, hi] = std::minmax_element(f.samples.begin(), f.samples.end());
    rows.push_back({f.label, num(median(f.samples)) + " " + unit_name(f.unit),
                    num(*lo) + " - " + num(*hi), f.ratio ? num(*f.ratio) : "",
                    f.ratio ? f.baseline_label : ""});
  }
  std::cout << format_table({"phase", "median", "range (min - max)", "ratio", "baseline"}, rows)
            << "\n";
  for (const auto& t : r.targets) {
    std::cout << (t.pass ? "PASS  " : "FAIL  ") << t.rule << "  (" << num(t.value)
              << (t.name == "bounded-rss" ? " MiB vs " : (t.name == "lazy-blocked" ? " ms vs " : " vs "))
              << num(t.limit) << (t.name == "bounded-rss" ? " MiB" : (t.name == "lazy-blocked" ? " ms" : ""))
              << ")\n";
  }
  for (const auto& v : r.verified) {
    std::cout << "verify bench-" << v.kind << ": "
              << (v.report.ok() ? "ok" : "FAILED") << " (" << v.report.extents << " extents, "
              << format_bytes(v.report.bytes) << ")\n";
    for (const auto& f : v.report.faults) std::cout << "  " << f.file << ": " << f.message << "\n";
  }
  if (r.load_checked) {
    std::cout << "load round trip: " << (r.load_matches ? "ok" : "FAILED at " + r.load_difference)
              << "\n";
  }
}

}  // namespace

std::vector<Target> judge_targets(const Figures& figures, const std::vector<double>& rss_rise_bytes,
                                  bool rss_measured, std::uint64_t bounded_ring_bytes) {
  std::vector<Target> targets;
  auto med = [&](const char* n) { return median(figures[n].samples); };
  auto ratio = [&](const char* n) { return figures[n].ratio.value_or(0); };
  targets.push_back({"sync-vs-device", "ringckpt-sync >= 0.90 x device write", ratio("ringckpt-sync"),
                     0.90, ratio("ringckpt-sync") >= 0.90});
  targets.push_back({"snapshot-staging-vs-memcpy", "snapshot staging >= 0.85 x memcpy rate",
                     ratio("snapshot-staging"), 0.85, ratio("snapshot-staging") >= 0.85});
  targets.push_back({"lazy-blocked", "lazy blocked < 1 ms", med("lazy-blocked"), 1.0,
                     med("lazy-blocked") < 1.0});
  targets.push_back({"snapshot-blocked-vs-memcpy", "snapshot blocked <= 1.2 x memcpy time",
                     ratio("snapshot-blocked"), 1.2, ratio("snapshot-blocked") <= 1.2});
  {
    double worst = 0;
    for (double v : rss_rise_bytes) worst = std::max(worst, v);
    const double limit = static_cast<double>(bounded_ring_bytes + kRssSlack);
    targets.push_back({"bounded-rss", "bounded peak RSS rise <= ring + 64 MiB", worst / kMiB,
                       limit / kMiB, rss_measured && worst <= limit});
  }
  return targets;
}

void print_main_report(const MainBenchResult& r, const BenchOptions& o) {
  if (o.json) {
    print_json(r, o);
  } else {
    print_text(r, o);
  }
}

}  // namespace ringckpt::tools::bench
