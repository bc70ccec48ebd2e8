// cmd_demo.cpp — `ringckpt demo`: the whole job on a small model. Builds a
// transformer-shaped state dict, saves it with a Checkpointer, verifies it,
// loads it into fresh zeroed buffers, compares byte for byte, and says how
// fast each step ran and which I/O path was taken.

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <new>
#include <string>
#include <variant>
#include <vector>

#include "commands.hpp"
#include "format/metadata_json.hpp"
#include "io/data_file.hpp"
#include "io_notes.hpp"
#include "ringckpt/checkpoint.hpp"
#include "ringckpt/checkpointer.hpp"
#include "ringckpt/error.hpp"
#include "ringckpt/verify.hpp"
#include "scratch_directory.hpp"
#include "stopwatch.hpp"
#include "synthetic.hpp"
#include "terminal.hpp"

namespace po = boost::program_options;

namespace ringckpt::tools {
namespace {

constexpr const char* kCommand = "demo";
constexpr const char* kDefaultSize = "256MiB";
constexpr std::size_t kVerifyRingBytes = std::size_t{64} << 20;  // as `ringckpt verify` uses

std::string seconds_text(double seconds) {
  char text[32];
  if (seconds < 1.0) {
    std::snprintf(text, sizeof text, "%.0f ms", seconds * 1e3);
  } else {
    std::snprintf(text, sizeof text, "%.2f s", seconds);
  }
  return text;
}

std::string rate_text(std::uint64_t bytes, double seconds) {
  return seconds > 0 ? format_rate(static_cast<double>(bytes) / seconds) : "-";
}

// Where the checkpoint goes, and what to remove at the end. Invariant: only
// what this run created is ever removed — a temporary directory as a whole,
// or in a directory the user named, the files of the checkpoint it saved.
class DemoDirectory {
 public:
  // A fresh scratch directory (see scratch_directory.hpp).
  static DemoDirectory make_temporary() {
    return DemoDirectory(make_scratch_directory("ringckpt-demo"), /*temporary=*/true,
                         /*created=*/true);
  }

  static DemoDirectory make_named(const std::filesystem::path& path) {
    std::error_code ec;
    const bool existed = std::filesystem::exists(path, ec);
    return DemoDirectory(path, /*temporary=*/false, /*created=*/!existed);
  }

  const std::filesystem::path& path() const { return path_; }

  // Removes what this run made: the temporary directory, or the checkpoint's
  // files (and the directory, if this run created it and it is now empty).
  void remove(const Metadata* saved) const {
    std::error_code ec;
    if (temporary_) {
      std::filesystem::remove_all(path_, ec);
      return;
    }
    if (saved != nullptr) {
      // By name in the directory itself (never through a link planted there).
      try {
        const CheckpointDirectory dir = CheckpointDirectory::open(path_);
        for (const auto& file : saved->files) dir.remove(file.relative_path);
        dir.remove(kMetadataFile);
      } catch (const Error&) {
        // The directory is gone or unreadable: nothing of ours to remove there.
      }
    }
    if (created_ && std::filesystem::is_empty(path_, ec)) std::filesystem::remove(path_, ec);
  }

 private:
  DemoDirectory(std::filesystem::path path, bool temporary, bool created)
      : path_(std::move(path)), temporary_(temporary), created_(created) {}
  std::filesystem::path path_;
  bool temporary_;
  bool created_;
};

// A state dict shaped like `source` whose tensors point into a fresh,
// zero-filled, pre-faulted arena (so load time is I/O, not page faults), and
// whose blobs are zeroed vectors of the same size.
struct ZeroedCopy {
  StateDict state_dict;
  std::shared_ptr<std::byte> arena;
};

ZeroedCopy zeroed_like(const StateDict& source) {
  constexpr std::uint64_t kTensorAlignment = 64;
  std::uint64_t arena_bytes = 0;
  for (const auto& entry : source) {
    if (const auto* view = std::get_if<TensorView>(&entry.value)) {
      arena_bytes = (arena_bytes + view->nbytes() + kTensorAlignment - 1) / kTensorAlignment *
                    kTensorAlignment;
    }
  }
  arena_bytes = std::max<std::uint64_t>(arena_bytes, 1);
  void* memory =
      ::mmap(nullptr, arena_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) throw std::bad_alloc();
  ZeroedCopy copy;
  copy.arena = std::shared_ptr<std::byte>(
      static_cast<std::byte*>(memory), [arena_bytes](std::byte* p) { ::munmap(p, arena_bytes); });
  std::memset(memory, 0, arena_bytes);

  std::uint64_t offset = 0;
  for (const auto& entry : source) {
    if (const auto* view = std::get_if<TensorView>(&entry.value)) {
      copy.state_dict.add(entry.fqn,
                          TensorView{copy.arena.get() + offset, view->dtype, view->shape});
      offset =
          (offset + view->nbytes() + kTensorAlignment - 1) / kTensorAlignment * kTensorAlignment;
    } else if (const auto* blob = std::get_if<Bytes>(&entry.value)) {
      copy.state_dict.add(entry.fqn, Bytes(blob->size()));
    }
  }
  return copy;
}

// The first entry whose loaded bytes differ from the saved ones, or "" if
// every entry is identical.
std::string first_difference(const StateDict& saved, const StateDict& loaded) {
  for (const auto& entry : saved) {
    const StateValue* other = loaded.find(entry.fqn);
    if (other == nullptr) return entry.fqn + " (missing after load)";
    if (const auto* view = std::get_if<TensorView>(&entry.value)) {
      const auto* back = std::get_if<TensorView>(other);
      if (back == nullptr || back->nbytes() != view->nbytes() ||
          std::memcmp(back->data, view->data, view->nbytes()) != 0) {
        return entry.fqn;
      }
    } else if (const auto* blob = std::get_if<Bytes>(&entry.value)) {
      const auto* back = std::get_if<Bytes>(other);
      if (back == nullptr || *back != *blob) return entry.fqn;
    }
  }
  return {};
}

bool parse_seed(const std::string& text, std::uint64_t& out) {
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, out);
  return ec == std::errc() && ptr == end && !text.empty();
}

// One line of the summary: "  save      256.0 MiB in 212 ms   1.3 GB/s   ...".
void print_step(const char* step, const std::string& text) {
  char label[16];
  std::snprintf(label, sizeof label, "  %-9s ", step);
  std::cout << label << text << '\n';
}

std::string throughput_text(std::uint64_t bytes, double seconds) {
  return format_bytes(bytes) + " in " + seconds_text(seconds) + ", " + rate_text(bytes, seconds);
}

}  // namespace

int run_demo(const std::vector<std::string>& args) {
  po::options_description options;
  // clang-format off
  options.add_options()
      ("dir", po::value<std::string>()->value_name("DIR"),
       "save the checkpoint in DIR (default: a new temporary directory under /var/tmp)")
      ("size", po::value<std::string>()->value_name("SIZE")->default_value(kDefaultSize),
       "about how large the model is: 16MiB, 1GiB, 4GB, ...")
      ("seed", po::value<std::string>()->value_name("N")->default_value("1"),
       "seed of the synthetic tensor data (an unsigned integer)")
      ("keep", "keep the checkpoint at the end (it is removed otherwise)");
  // clang-format on
  po::options_description hidden;
  po::positional_options_description positional;
  po::variables_map values;
  if (auto status = parse_command_line(
          kCommand, "[--dir DIR] [--size 256MiB] [--seed N] [--keep]",
          "Builds a transformer-shaped state dict (BF16 weights, two F32 Adam moments per\n"
          "weight, a step counter), saves it with a Checkpointer, verifies every extent,\n"
          "loads it back into zeroed buffers, compares byte for byte, and reports the\n"
          "throughput of each step and which I/O path (O_DIRECT, registered buffers) ran.",
          options, hidden, positional, args, values)) {
    return *status;
  }

  std::uint64_t size = 0;
  const std::string size_text = values["size"].as<std::string>();
  if (!parse_size(size_text, size)) {
    return bad_argument(kCommand, "invalid --size '" + size_text + "' (expected e.g. 256MiB)");
  }
  std::uint64_t seed = 0;
  const std::string seed_text = values["seed"].as<std::string>();
  if (!parse_seed(seed_text, seed)) {
    return bad_argument(kCommand,
                        "invalid --seed '" + seed_text + "' (expected an unsigned integer)");
  }
  const bool keep = values.count("keep") > 0;

  // The model, the staging ring that holds it for snapshot staging, and the
  // buffers it is loaded back into: about three copies in memory at once.
  const std::uint64_t memory = static_cast<std::uint64_t>(::sysconf(_SC_PHYS_PAGES)) *
                               static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  if (size > memory / 3) {
    return bad_argument(kCommand, "--size " + size_text +
                                      " needs about three times its size in memory (model, " +
                                      "staging ring, load buffers); this machine has " +
                                      format_bytes(memory));
  }

  auto build_start = Clock::now();
  SyntheticModel model;
  try {
    model = make_model(ModelKind::transformer, size, seed);
  } catch (const std::invalid_argument& e) {
    return bad_argument(kCommand, "invalid --size '" + size_text + "': " + e.what());
  }
  const double build_seconds = seconds_since(build_start);

  // A directory that already holds a checkpoint is refused by the save
  // itself (an Error naming its metadata.json), and nothing in it is touched.
  const DemoDirectory directory = values.count("dir")
                                      ? DemoDirectory::make_named(values["dir"].as<std::string>())
                                      : DemoDirectory::make_temporary();
  const std::filesystem::path& dir = directory.path();

  IoNotes notes;  // from every I/O engine of the run (each fallback once)
  CheckpointerOptions checkpointer_options;
  IoOptions& io = checkpointer_options.io;
  io.report = [&notes](std::string_view note) { notes.add(std::string(note)); };
  // Snapshot staging needs a ring that holds the whole data file: the data,
  // its safetensors header (a few hundred bytes per entry) and a spare extent.
  const std::uint64_t header_estimate = 4096 + 512 * model.tensors;
  io.ring_bytes =
      (model.bytes + header_estimate + io.extent_size - 1) / io.extent_size * io.extent_size +
      io.extent_size;

  std::cout << "ringckpt demo: a transformer-shaped state dict of " << format_bytes(model.bytes)
            << " in " << model.tensors << " entries (seed " << seed << ")\n";
  print_step("build", "filled " + format_bytes(model.arena_bytes) + " with seeded data in " +
                          seconds_text(build_seconds));
  print_step("directory", dir.string() + (keep ? " (kept at the end)"
                                               : " (checkpoint removed at the end; --keep keeps it)"));

  const Metadata* saved_metadata = nullptr;
  Metadata metadata;
  try {
    auto setup_start = Clock::now();
    Checkpointer checkpointer(checkpointer_options);
    print_step("ring", format_bytes(io.ring_bytes) + " staging ring of " +
                           format_bytes(io.extent_size) + " extents, queue depth " +
                           std::to_string(io.queue_depth) + ", set up in " +
                           seconds_text(seconds_since(setup_start)));

    auto save_start = Clock::now();
    AsyncSaveOptions save_options;
    save_options.mode = StagingMode::snapshot;
    metadata = checkpointer.save(model.state_dict, dir, save_options);
    const double save_seconds = seconds_since(save_start);
    saved_metadata = &metadata;
    print_step("save", throughput_text(model.bytes, save_seconds) + " (staged, written, synced, " +
                           "committed; " + std::to_string(metadata.files.size()) +
                           (metadata.files.size() == 1 ? " data file)" : " data files)"));

    auto verify_start = Clock::now();
    VerifyReport report;
    {
      ProgressBar bar("  verify");
      // verify() sets up its own engine, and that setup is part of the time
      // shown: a streaming read needs a few extents in flight, not a ring
      // that holds the model.
      IoOptions verify_io;
      verify_io.ring_bytes = kVerifyRingBytes;
      verify_io.report = io.report;
      report = verify(dir, verify_io,
                      [&bar](std::uint64_t done, std::uint64_t total) { bar.update(done, total); });
    }
    const double verify_seconds = seconds_since(verify_start);
    if (!report.ok()) {
      for (const auto& fault : report.faults) {
        std::cout << "  FAULT     " << fault.file << ": " << fault.message << '\n';
      }
      std::cout << "demo FAILED: the checkpoint just saved does not verify; it is kept in "
                << dir.string() << '\n';
      return 1;
    }
    print_step("verify", throughput_text(report.bytes, verify_seconds) + " (" +
                             std::to_string(report.extents) + " extents, every XXH3 matches)");

    ZeroedCopy loaded = zeroed_like(model.state_dict);
    auto load_start = Clock::now();
    checkpointer.load(loaded.state_dict, dir);
    const double load_seconds = seconds_since(load_start);
    print_step("load", throughput_text(model.bytes, load_seconds) +
                           " (into zeroed buffers, every extent verified)");

    const std::string difference = first_difference(model.state_dict, loaded.state_dict);
    if (!difference.empty()) {
      std::cout << "demo FAILED: loaded bytes differ from the saved ones at " << difference
                << "; the checkpoint is kept in " << dir.string() << '\n';
      return 1;
    }
    print_step("compare", std::to_string(model.tensors) + " entries identical byte for byte");

    const IoReport io_report = checkpointer.report();
    print_step("I/O", std::string("O_DIRECT ") + (io_report.direct_io ? "yes" : "no") +
                          ", registered buffers " + (io_report.registered_buffers ? "yes" : "no"));
    std::vector<std::string> all_notes = io_report.notes;
    for (auto& note : notes.all()) {
      if (std::find(all_notes.begin(), all_notes.end(), note) == all_notes.end()) {
        all_notes.push_back(std::move(note));
      }
    }
    for (const auto& note : all_notes) print_step("note", note);
  } catch (...) {
    // A failed save leaves no checkpoint; clean up what this run made and let
    // main report the error.
    if (!keep) directory.remove(saved_metadata);
    throw;
  }
  if (!keep) directory.remove(saved_metadata);
  std::cout << "ok: saved, verified and loaded back " << format_bytes(model.bytes) << " intact\n";
  return 0;
}

}  // namespace ringckpt::tools
