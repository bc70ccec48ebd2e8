// tools/bench_options.cpp — the command line of `ringckpt bench`.
#include "bench_options.hpp"

#include <boost/program_options.hpp>

#include <cstdint>
#include <iostream>

#include "ringckpt/io_options.hpp"

namespace ringckpt::tools::bench {
namespace {

namespace fs = std::filesystem;
namespace po = boost::program_options;

const char* kUsage =
    "usage: ringckpt bench [options]\n"
    "Measures ringckpt's save and load against the device, a naive write() loop and\n"
    "memcpy on this machine, interleaved, each phase moving the same bytes.\n";

po::options_description bench_options() {
  po::options_description d("options");
  d.add_options()
      ("help,h", "show this help")
      ("model", po::value<std::string>()->default_value("transformer"),
       "transformer | uniform | small (100,000 tiny tensors)")
      ("size", po::value<std::string>()->default_value("256MiB"), "model size (e.g. 1GiB)")
      ("repeat", po::value<std::string>()->default_value("3"), "runs of each phase (>= 1)")
      ("dir", po::value<std::string>(),
       "directory to write in (default: a fresh one under /var/tmp, removed afterwards)")
      ("extent-size", po::value<std::string>()->default_value("8MiB"),
       "extent size (a multiple of 4 KiB)")
      ("queue-depth", po::value<std::string>()->default_value("16"), "I/O operations in flight")
      ("json", "print every figure as one JSON document on stdout")
      ("keep", "keep the last checkpoint of each kind (bench-sync, bench-snapshot, ...; "
               "train-step-N with --train; the device's files with --device-only) in the "
               "directory")
      ("seed", po::value<std::string>()->default_value("1"), "seed of the model's values")
      ("train", po::value<std::string>(),
       "simulate a training loop of this many steps instead (lazy saves)")
      ("step-ms", po::value<std::string>(), "--train: compute time of one step in ms (default 100)")
      ("every", po::value<std::string>(), "--train: save every K steps (default 10)")
      ("ranks", po::value<std::string>(),
       "N: run under `mpirun -n N`; every rank saves its shard of one model into one "
       "checkpoint, against N writers of the same bytes")
      ("device-only",
       "--ranks: only the device phase, N writers of the model's bytes, --repeat times (a "
       "baseline for other programs' saves, e.g. bench/compare_torch.py)")
      ("plan-ranks", po::value<std::string>(),
       "R: planning only, R ranks as threads: the coordinator's global plan, cold and "
       "cached, and a resharding plan")
      ("entries", po::value<std::string>(), "--plan-ranks: entries per rank (default 1000)");
  return d;
}

std::uint64_t parse_count(const std::string& name, const std::string& text, std::uint64_t min,
                          std::uint64_t max) {
  std::size_t used = 0;
  unsigned long long v = 0;
  bool ok = !text.empty() && text[0] != '-' && text[0] != '+';
  if (ok) {
    try {
      v = std::stoull(text, &used, 10);
    } catch (const std::exception&) {
      ok = false;
    }
  }
  if (!ok || used != text.size()) {
    throw UsageError("--" + name + " takes a whole number, not '" + text + "'");
  }
  if (v < min) throw UsageError("--" + name + " must be at least " + std::to_string(min));
  if (v > max) throw UsageError("--" + name + " must be at most " + std::to_string(max));
  return v;
}

std::uint64_t parse_size_option(const std::string& name, const std::string& text) {
  std::uint64_t v = 0;
  if (!parse_size(text, v)) {
    throw UsageError("--" + name + " takes a size like 256MiB, 1GiB or 1048576, not '" + text +
                     "'");
  }
  return v;
}

}  // namespace

std::optional<BenchOptions> parse_options(const std::vector<std::string>& args) {
  po::options_description desc = bench_options();
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(desc).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError(e.what());
  }
  if (vm.count("help")) {
    std::cout << kUsage << desc << "\n";
    return std::nullopt;
  }
  BenchOptions o;
  o.model_name = vm["model"].as<std::string>();
  if (!parse_model_kind(o.model_name, o.model)) {
    throw UsageError("--model must be transformer, uniform or small, not '" + o.model_name + "'");
  }
  o.size = parse_size_option("size", vm["size"].as<std::string>());
  if (o.size == 0) throw UsageError("--size must be more than 0");
  o.repeat = static_cast<unsigned>(parse_count("repeat", vm["repeat"].as<std::string>(), 1, 1000));
  o.extent_size = parse_size_option("extent-size", vm["extent-size"].as<std::string>());
  if (o.extent_size == 0 || o.extent_size % kAlignment != 0) {
    throw UsageError("--extent-size must be a positive multiple of 4 KiB, not '" +
                     vm["extent-size"].as<std::string>() + "'");
  }
  if (o.extent_size > (std::uint64_t{1} << 30)) throw UsageError("--extent-size must be at most 1GiB");
  o.queue_depth =
      static_cast<unsigned>(parse_count("queue-depth", vm["queue-depth"].as<std::string>(), 1, 4096));
  o.json = vm.count("json") > 0;
  o.keep = vm.count("keep") > 0;
  o.seed = parse_count("seed", vm["seed"].as<std::string>(), 0, UINT64_MAX);
  if (vm.count("dir")) {
    if (vm["dir"].as<std::string>().empty()) throw UsageError("--dir must not be empty");
    o.dir = fs::path(vm["dir"].as<std::string>());
  }
  if (vm.count("train")) {
    o.train_steps = parse_count("train", vm["train"].as<std::string>(), 1, 100'000'000);
    if (vm.count("every")) o.every = parse_count("every", vm["every"].as<std::string>(), 1, UINT64_MAX);
    if (vm.count("step-ms")) {
      const std::string t = vm["step-ms"].as<std::string>();
      std::size_t used = 0;
      double v = -1;
      try {
        v = std::stod(t, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != t.size() || !(v >= 0) || v > 3.6e6) {
        throw UsageError("--step-ms takes a number of milliseconds >= 0, not '" + t + "'");
      }
      o.step_ms = v;
    }
  } else if (vm.count("every") || vm.count("step-ms")) {
    throw UsageError(std::string("--") + (vm.count("every") ? "every" : "step-ms") +
                     " only applies with --train STEPS");
  }
  const int runs = (vm.count("train") ? 1 : 0) + (vm.count("ranks") ? 1 : 0) +
                   (vm.count("plan-ranks") ? 1 : 0);
  if (runs > 1) throw UsageError("--train, --ranks and --plan-ranks are separate runs: pick one");
  if (vm.count("ranks")) {
    o.ranks = static_cast<unsigned>(parse_count("ranks", vm["ranks"].as<std::string>(), 1, 65536));
    o.device_only = vm.count("device-only") > 0;
  } else if (vm.count("device-only")) {
    throw UsageError("--device-only only applies with --ranks N");
  }
  if (vm.count("plan-ranks")) {
    o.plan_ranks =
        static_cast<unsigned>(parse_count("plan-ranks", vm["plan-ranks"].as<std::string>(), 1, 8192));
    if (vm.count("entries")) {
      o.entries = static_cast<unsigned>(
          parse_count("entries", vm["entries"].as<std::string>(), 2, 1'000'000));
    }
  } else if (vm.count("entries")) {
    throw UsageError("--entries only applies with --plan-ranks R");
  }
  return o;
}

}  // namespace ringckpt::tools::bench
