// cmd_bench.cpp — `ringckpt bench`: ringckpt's save and load paths measured
// against the limits of the same machine, in the same invocation.
//
// Every phase writes (or reads) the same bytes — the data files of one
// checkpoint of the synthetic model — in the same directory; phases run
// interleaved (device, naive, memcpy, sync, snapshot, lazy, bounded,
// device-read, load; then again) so that drift of the disk or the machine hits
// all of them alike. Figures are reported as ratios to their baseline:
//
//   device       io_uring O_DIRECT writes from one registered buffer into a
//                preallocated file (fallocate) + fdatasync
//   naive        buffered write() of each tensor to one file + fsync (torch.save)
//   memcpy       one thread copying the tensors into a pre-faulted buffer
//   device-read  io_uring O_DIRECT reads of the checkpoint's data files
//
// `--train` runs a training-loop simulation instead: lazy saves every K steps,
// stalls measured, and every checkpoint loaded back and compared with the
// values of the step it was taken at.
#include <fcntl.h>
#include <linux/magic.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <boost/program_options.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <variant>
#include <vector>

#include "commands.hpp"
#include "ringckpt/checkpoint.hpp"
#include "ringckpt/checkpointer.hpp"
#include "ringckpt/error.hpp"
#include "ringckpt/verify.hpp"
#include "synthetic.hpp"
#include "terminal.hpp"
#include "io/uring_queue.hpp"

namespace ringckpt::tools {
namespace {

namespace fs = std::filesystem;
namespace po = boost::program_options;
namespace json = boost::json;
using Clock = std::chrono::steady_clock;

constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;
constexpr std::uint64_t kRssSlack = 64 * kMiB;  // bounded: allowed rise beyond the ring

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::uint64_t round_up(std::uint64_t n, std::uint64_t to) { return (n + to - 1) / to * to; }

// A bad command line: said in one line, exit 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ------------------------------------------------------------------ options

struct BenchOptions {
  ModelKind model = ModelKind::transformer;
  std::string model_name = "transformer";
  std::uint64_t size = 256 * kMiB;
  unsigned repeat = 3;
  std::optional<fs::path> dir;
  std::uint64_t extent_size = 8 * kMiB;
  unsigned queue_depth = 16;
  bool json = false;
  bool keep = false;
  std::uint64_t seed = 1;
  // --train
  std::uint64_t train_steps = 0;  // 0: no training simulation
  double step_ms = 100;
  std::uint64_t every = 10;
};

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
               "train-step-N with --train) in the directory")
      ("seed", po::value<std::string>()->default_value("1"), "seed of the model's values")
      ("train", po::value<std::string>(),
       "simulate a training loop of this many steps instead (lazy saves)")
      ("step-ms", po::value<std::string>(), "--train: compute time of one step in ms (default 100)")
      ("every", po::value<std::string>(), "--train: save every K steps (default 10)");
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

// Returns nullopt for --help (printed).
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
  return o;
}

// ------------------------------------------------------------ machine bits

std::string filesystem_name(const fs::path& dir) {
  struct statfs s {};
  if (::statfs(dir.c_str(), &s) != 0) return "unknown";
  switch (static_cast<unsigned long>(s.f_type)) {
    case EXT4_SUPER_MAGIC: return "ext4";  // ext2/3 share the magic
    case TMPFS_MAGIC: return "tmpfs";
    case XFS_SUPER_MAGIC: return "xfs";
    case BTRFS_SUPER_MAGIC: return "btrfs";
    case RAMFS_MAGIC: return "ramfs";
    case OVERLAYFS_SUPER_MAGIC: return "overlayfs";
    case NFS_SUPER_MAGIC: return "nfs";
    case F2FS_SUPER_MAGIC: return "f2fs";
    case 0x2fc12fc1: return "zfs";
    case 0x65735546: return "fuse";
    case 0x01021997: return "9p";
    case 0x6a656a63: return "fakeowner";
    default: {
      char buf[32];
      std::snprintf(buf, sizeof buf, "0x%lx", static_cast<unsigned long>(s.f_type));
      return buf;
    }
  }
}

unsigned cpu_count() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) == 0) return static_cast<unsigned>(CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// VmRSS / VmHWM of this process in bytes (0 if unreadable).
std::uint64_t proc_status_kb(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::size_t n = std::strlen(key);
  while (std::getline(in, line)) {
    if (line.compare(0, n, key) == 0 && line.size() > n && line[n] == ':') {
      return std::strtoull(line.c_str() + n + 1, nullptr, 10) * 1024;
    }
  }
  return 0;
}

bool reset_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

// --------------------------------------------------------------- utilities

// Page-aligned anonymous memory, touched at creation (pre-faulted).
class AlignedBuffer {
 public:
  explicit AlignedBuffer(std::size_t bytes) : bytes_(std::max<std::size_t>(bytes, kAlignment)) {
    void* p = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      throw Error(ErrorCode::kIo, "bench", "cannot map " + format_bytes(bytes_) + ": " +
                                               std::strerror(errno));
    }
    data_ = static_cast<std::byte*>(p);
    for (std::size_t i = 0; i < bytes_; i += kAlignment) data_[i] = std::byte{0};
  }
  ~AlignedBuffer() { ::munmap(data_, bytes_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  std::byte* data() const { return data_; }
  std::size_t size() const { return bytes_; }

 private:
  std::size_t bytes_;
  std::byte* data_ = nullptr;
};

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

[[noreturn]] void throw_errno(const fs::path& path, const std::string& what) {
  throw Error(ErrorCode::kIo, path.string(), what + ": " + std::strerror(errno));
}

// Counts operations of one batch; the first failure wins.
class Batch {
 public:
  explicit Batch(std::size_t count) : left_(count) {}
  UringQueue::Completion done(std::size_t expect_at_least) {
    return [this, expect_at_least](std::int64_t r) {
      std::lock_guard lock(mu_);
      if (r < 0 && error_ == 0) error_ = static_cast<int>(-r);
      if (r >= 0 && static_cast<std::uint64_t>(r) < expect_at_least && error_ == 0) short_ = true;
      if (--left_ == 0) cv_.notify_all();
    };
  }
  // Throws on an error.
  void wait(const fs::path& path, const char* what) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return left_ == 0; });
    if (error_ != 0) {
      throw Error(ErrorCode::kIo, path.string(), std::string(what) + ": " + std::strerror(error_));
    }
    if (short_) throw Error(ErrorCode::kIo, path.string(), std::string(what) + ": short transfer");
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::size_t left_;
  int error_ = 0;
  bool short_ = false;
};

// Notes of the I/O paths (fallbacks taken), gathered to be shown once.
class Notes {
 public:
  std::function<void(std::string_view)> sink(std::string who) {
    return [this, who = std::move(who)](std::string_view m) { add(who + ": " + std::string(m)); };
  }
  void add(std::string m) {
    std::lock_guard lock(mu_);
    if (std::find(notes_.begin(), notes_.end(), m) == notes_.end()) notes_.push_back(std::move(m));
  }
  std::vector<std::string> all() const {
    std::lock_guard lock(mu_);
    return notes_;
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::string> notes_;
};

// The raw device: io_uring O_DIRECT transfers through one registered buffer
// of queue_depth extents, at the bench's extent size and queue depth.
class RawDevice {
 public:
  RawDevice(std::uint64_t extent, unsigned depth, std::uint64_t max_bytes, Notes& notes)
      : extent_(extent),
        slots_(std::max<std::uint64_t>(1, std::min<std::uint64_t>(depth, (max_bytes + extent - 1) / extent))),
        buffer_(slots_ * extent_) {
    // A pre-filled, non-constant pattern (no zero-page shortcuts anywhere).
    auto* words = reinterpret_cast<std::uint64_t*>(buffer_.data());
    std::uint64_t x = 0x9e3779b97f4a7c15ull;
    for (std::size_t i = 0; i < buffer_.size() / 8; ++i) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      words[i] = x;
    }
    iovec iov{buffer_.data(), buffer_.size()};
    queue_ = std::make_unique<UringQueue>(depth, std::span<const iovec>(&iov, 1), true,
                                          notes.sink("device"));
  }
  bool registered() const { return queue_->registered_buffers(); }
  bool last_direct() const { return direct_; }

  // Writes `bytes` to a new `path`, then fdatasync. Returns seconds.
  double write(const fs::path& path, std::uint64_t bytes) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_DIRECT, 0644);
    direct_ = fd >= 0;
    if (fd < 0 && errno == EINVAL) fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) throw_errno(path, "open");
    Fd file(fd);
    const std::uint64_t padded = round_up(bytes, kAlignment);
    const std::size_t ops = static_cast<std::size_t>((padded + extent_ - 1) / extent_);
    const auto t0 = Clock::now();
    // Blocks reserved first, as ringckpt does: direct writes inside the file
    // size stay asynchronous, so the baseline is the device's best.
    if (direct_ && ::fallocate(fd, 0, 0, static_cast<off_t>(padded)) != 0 && errno != EOPNOTSUPP) {
      throw_errno(path, "fallocate");
    }
    Batch batch(ops);
    for (std::size_t i = 0; i < ops; ++i) {
      const std::uint64_t off = i * extent_;
      const std::size_t len = static_cast<std::size_t>(std::min(extent_, padded - off));
      queue_->write(fd, 0, buffer_.data() + (i % slots_) * extent_, len, off, batch.done(len));
    }
    batch.wait(path, "write");
    if (padded != bytes && ::ftruncate(fd, static_cast<off_t>(bytes)) != 0) throw_errno(path, "ftruncate");
    if (::fdatasync(fd) != 0) throw_errno(path, "fdatasync");
    return seconds_since(t0);
  }

  // Reads every byte of `paths`. Returns seconds.
  double read(const std::vector<fs::path>& paths) {
    std::vector<std::unique_ptr<Fd>> fds;
    std::vector<std::uint64_t> sizes;
    for (const auto& p : paths) {
      int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
      direct_ = fd >= 0;
      if (fd < 0 && errno == EINVAL) fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) throw_errno(p, "open");
      fds.push_back(std::make_unique<Fd>(fd));
      sizes.push_back(fs::file_size(p));
    }
    const auto t0 = Clock::now();
    std::size_t ops = 0;
    for (auto s : sizes) ops += static_cast<std::size_t>((s + extent_ - 1) / extent_);
    Batch batch(ops);
    std::size_t k = 0;
    for (std::size_t f = 0; f < paths.size(); ++f) {
      for (std::uint64_t off = 0; off < sizes[f]; off += extent_, ++k) {
        const std::uint64_t want = std::min(extent_, sizes[f] - off);
        queue_->read(fds[f]->get(), 0, buffer_.data() + (k % slots_) * extent_,
                     static_cast<std::size_t>(round_up(want, kAlignment)), off,
                     batch.done(static_cast<std::size_t>(want)));
      }
    }
    batch.wait(paths.empty() ? fs::path() : paths.front(), "read");
    return seconds_since(t0);
  }

 private:
  std::uint64_t extent_;
  std::uint64_t slots_;
  AlignedBuffer buffer_;
  std::unique_ptr<UringQueue> queue_;
  bool direct_ = false;
};

bool write_all(int fd, const std::byte* p, std::size_t n) {
  while (n > 0) {
    ssize_t r = ::write(fd, p, n);
    if (r < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

template <typename F>
void for_each_piece(const StateDict& sd, F&& f) {
  for (const auto& e : sd) {
    if (const auto* t = std::get_if<TensorView>(&e.value)) {
      f(static_cast<const std::byte*>(t->data), t->nbytes());
    } else if (const auto* s = std::get_if<ShardedTensor>(&e.value)) {
      for (const auto& sh : s->shards) f(static_cast<const std::byte*>(sh.local.data), sh.local.nbytes());
    } else if (const auto* b = std::get_if<Bytes>(&e.value)) {
      f(b->data(), b->size());
    }
  }
}

// naive: what torch.save does — buffered write() of a header, then each
// tensor, to one file; then fsync.
double naive_write(const fs::path& path, const StateDict& sd, std::uint64_t header_bytes) {
  const auto t0 = Clock::now();
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw_errno(path, "open");
  Fd file(fd);
  if (header_bytes > 0) {
    std::vector<std::byte> header(header_bytes, std::byte{' '});
    if (!write_all(fd, header.data(), header.size())) throw_errno(path, "write");
  }
  bool ok = true;
  for_each_piece(sd, [&](const std::byte* p, std::size_t n) {
    if (ok) ok = write_all(fd, p, n);
  });
  if (!ok) throw_errno(path, "write");
  if (::fsync(fd) != 0) throw_errno(path, "fsync");
  return seconds_since(t0);
}

// A state dict with the same entries as `model`, whose tensors live in `dst`
// at the offsets they have in the model's arena (blobs copied).
StateDict mirror_state_dict(const SyntheticModel& model, std::byte* dst,
                            std::vector<std::unique_ptr<std::byte[]>>& extra) {
  const auto* base = model.arena.get();
  auto place = [&](const TensorView& t) {
    TensorView v = t;
    const auto* p = static_cast<const std::byte*>(t.data);
    if (p >= base && p + t.nbytes() <= base + model.arena_bytes) {
      v.data = dst + (p - base);
    } else {
      extra.push_back(std::make_unique<std::byte[]>(std::max<std::size_t>(1, t.nbytes())));
      v.data = extra.back().get();
    }
    return v;
  };
  StateDict out;
  for (const auto& e : model.state_dict) {
    if (const auto* t = std::get_if<TensorView>(&e.value)) {
      out.add(e.fqn, place(*t));
    } else if (const auto* s = std::get_if<ShardedTensor>(&e.value)) {
      ShardedTensor st = *s;
      for (auto& sh : st.shards) sh.local = place(sh.local);
      out.add(e.fqn, std::move(st));
    } else {
      out.add(e.fqn, std::get<Bytes>(e.value));
    }
  }
  return out;
}

// memcpy: one thread copying every tensor of `src` to where `dst` has it.
double memcpy_copy(const StateDict& src, const StateDict& dst) {
  const auto t0 = Clock::now();
  auto d = dst.begin();
  for (auto s = src.begin(); s != src.end(); ++s, ++d) {
    if (const auto* t = std::get_if<TensorView>(&s->value)) {
      std::memcpy(std::get<TensorView>(d->value).data, t->data, t->nbytes());
    } else if (const auto* st = std::get_if<ShardedTensor>(&s->value)) {
      const auto& dt = std::get<ShardedTensor>(d->value);
      for (std::size_t i = 0; i < st->shards.size(); ++i) {
        std::memcpy(dt.shards[i].local.data, st->shards[i].local.data, st->shards[i].local.nbytes());
      }
    }
  }
  return seconds_since(t0);
}

// First difference between two state dicts of the same shape, or "".
std::string first_difference(const StateDict& a, const StateDict& b) {
  if (a.size() != b.size()) return "entry count differs";
  auto j = b.begin();
  for (auto i = a.begin(); i != a.end(); ++i, ++j) {
    bool same = true;
    if (const auto* t = std::get_if<TensorView>(&i->value)) {
      const auto* u = std::get_if<TensorView>(&j->value);
      same = u && u->nbytes() == t->nbytes() && std::memcmp(t->data, u->data, t->nbytes()) == 0;
    } else if (const auto* s = std::get_if<ShardedTensor>(&i->value)) {
      const auto* u = std::get_if<ShardedTensor>(&j->value);
      same = u && u->shards.size() == s->shards.size();
      for (std::size_t k = 0; same && k < s->shards.size(); ++k) {
        same = std::memcmp(s->shards[k].local.data, u->shards[k].local.data,
                           s->shards[k].local.nbytes()) == 0;
      }
    } else {
      const auto* u = std::get_if<Bytes>(&j->value);
      same = u && *u == std::get<Bytes>(i->value);
    }
    if (!same) return i->fqn;
  }
  return "";
}

std::vector<fs::path> data_files(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const FileInfo& f : read_metadata(dir).files) out.push_back(dir / f.relative_path);
  return out;
}

void remove_quietly(const fs::path& p) {
  std::error_code ec;
  fs::remove_all(p, ec);
}

// The checkpoint's data-file sizes, learned from one untimed save (which also
// warms the path up): sum of sizes, and the ring that holds them whole.
struct Footprint {
  std::uint64_t file_bytes = 0;
  std::uint64_t ring_bytes = 0;
  std::size_t files = 0;
};

Footprint measure_footprint(const SyntheticModel& model, const fs::path& dir,
                            const BenchOptions& o, Notes& notes) {
  CheckpointerOptions co;
  co.io.extent_size = o.extent_size;
  co.io.ring_bytes = o.extent_size * std::min<std::uint64_t>(o.queue_depth + 1, 
      std::max<std::uint64_t>(2, (model.bytes + o.extent_size - 1) / o.extent_size + 1));
  co.io.queue_depth = o.queue_depth;
  co.io.report = notes.sink("warm-up");
  co.default_mode = StagingMode::bounded;
  Footprint fp;
  {
    Checkpointer ck(co);
    ck.async_save(model.state_dict, dir).committed.get();
  }
  for (const FileInfo& f : read_metadata(dir).files) {
    fp.file_bytes += f.size;
    fp.ring_bytes += round_up(f.size, o.extent_size);
    fp.files += 1;
  }
  fp.ring_bytes = std::max<std::uint64_t>(fp.ring_bytes, o.extent_size);
  remove_quietly(dir);
  return fp;
}

// ------------------------------------------------------------------ figures

enum class Unit { gbps, ms, mib };

const char* unit_name(Unit u) {
  switch (u) {
    case Unit::gbps: return "GB/s";
    case Unit::ms: return "ms";
    case Unit::mib: return "MiB";
  }
  return "";
}

struct Figure {
  std::string name;    // as in the JSON
  std::string label;   // as in the table
  Unit unit = Unit::gbps;
  std::vector<double> samples;
  std::string baseline;         // name of the figure it is compared with; "" none
  std::string baseline_label;   // how the table says it
  std::optional<double> ratio;  // median / baseline median (set at the end)
  std::optional<double> fixed_baseline;  // compare with a constant instead
};

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Nearest-rank percentile.
double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  std::size_t rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  rank = std::clamp<std::size_t>(rank, 1, v.size());
  return v[rank - 1];
}

std::string num(double v) {
  char buf[64];
  const double a = std::fabs(v);
  if (a >= 1000) std::snprintf(buf, sizeof buf, "%.0f", v);
  else if (a >= 100) std::snprintf(buf, sizeof buf, "%.1f", v);
  else if (a >= 1) std::snprintf(buf, sizeof buf, "%.2f", v);
  else std::snprintf(buf, sizeof buf, "%.3f", v);
  return buf;
}

class Figures {
 public:
  Figure& add(std::string name, std::string label, Unit unit, std::string baseline = "",
              std::string baseline_label = "") {
    figures_.push_back({std::move(name), std::move(label), unit, {}, std::move(baseline),
                        std::move(baseline_label), std::nullopt, std::nullopt});
    return figures_.back();
  }
  Figure& operator[](const std::string& name) {
    for (auto& f : figures_) if (f.name == name) return f;
    throw std::logic_error("no figure " + name);
  }
  const Figure* find(const std::string& name) const {
    for (const auto& f : figures_) if (f.name == name) return &f;
    return nullptr;
  }
  std::vector<Figure>& all() { return figures_; }

  void compute_ratios() {
    for (auto& f : figures_) {
      if (f.samples.empty()) continue;
      double base = 0;
      if (f.fixed_baseline) {
        base = *f.fixed_baseline;
      } else if (const Figure* b = find(f.baseline); b && !b->samples.empty()) {
        base = median(b->samples);
      }
      if (base > 0) f.ratio = median(f.samples) / base;
    }
  }

 private:
  std::vector<Figure> figures_;  // stable: reserved before use
};

struct Target {
  std::string name;
  std::string rule;
  double value = 0;
  double limit = 0;
  bool pass = false;
};

json::value number_or_null(const std::optional<double>& v) {
  if (v && std::isfinite(*v)) return json::value(*v);
  return nullptr;
}

// ------------------------------------------------------------- main bench

struct Machine {
  fs::path dir;
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

std::string machine_line(const Machine& m, const BenchOptions& o) {
  std::ostringstream s;
  s << "ringckpt bench: " << o.model_name << " model " << format_bytes(m.model_bytes) << " ("
    << m.tensors << " tensors; data files " << format_bytes(m.file_bytes) << ")"
    << ", dir " << m.dir.string() << " (" << m.fs_type << ")"
    << ", O_DIRECT " << (m.direct_io ? "yes" : "NO")
    << ", registered buffers " << (m.registered_buffers ? "yes" : "NO")
    << ", extent " << format_bytes(m.extent) << ", queue depth " << m.depth
    << ", ring " << format_bytes(m.ring_bytes) << ", " << m.cpus << " CPUs";
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

// Where the bench writes, and whether it owns the directory.
struct WorkDir {
  fs::path path;
  bool owned = false;  // created here: removed at the end (unless kept)
};

// Removes a work directory the bench made itself, unless asked to keep it.
struct WorkDirCleanup {
  const WorkDir& work;
  bool keep;
  ~WorkDirCleanup() {
    if (work.owned && !keep) remove_quietly(work.path);
  }
};

WorkDir make_work_dir(const BenchOptions& o) {
  WorkDir w;
  if (o.dir) {
    std::error_code ec;
    fs::create_directories(*o.dir, ec);
    if (ec || !fs::is_directory(*o.dir)) {
      throw UsageError("--dir " + o.dir->string() + " is not a directory that can be created" +
                       (ec ? " (" + ec.message() + ")" : std::string()));
    }
    w.path = *o.dir;
    return w;
  }
  std::string tmpl = "/var/tmp/ringckpt-bench-XXXXXX";
  if (!fs::is_directory("/var/tmp")) tmpl = (fs::temp_directory_path() / "ringckpt-bench-XXXXXX").string();
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) throw_errno(tmpl, "mkdtemp");
  w.path = buf.data();
  w.owned = true;
  return w;
}

void check_free(const WorkDir& w, const std::vector<std::string>& names) {
  for (const auto& n : names) {
    if (fs::exists(w.path / n)) {
      throw UsageError((w.path / n).string() +
                       " already exists; remove it or give another --dir");
    }
  }
}

int run_main_bench(const BenchOptions& o) {
  const std::vector<std::string> names = {"bench-warmup", "bench-device.bin", "bench-naive.bin",
                                          "bench-sync", "bench-snapshot", "bench-lazy",
                                          "bench-bounded"};
  WorkDir work = make_work_dir(o);
  const WorkDirCleanup cleanup{work, o.keep};
  check_free(work, names);
  const fs::path& dir = work.path;
  auto at = [&](const char* n) { return dir / n; };

  Notes notes;
  SyntheticModel model;
  try {
    model = make_model(o.model, o.size, o.seed);
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string("--size: ") + e.what());
  }
  const std::uint64_t copy_bytes = model.bytes;

  const Footprint fp = measure_footprint(model, at("bench-warmup"), o, notes);
  const std::uint64_t bytes = fp.file_bytes;
  const std::uint64_t header_bytes = bytes > model.bytes ? bytes - model.bytes : 0;

  Machine m;
  m.dir = fs::absolute(dir);
  m.fs_type = filesystem_name(dir);
  m.extent = o.extent_size;
  m.depth = o.queue_depth;
  m.model_bytes = model.bytes;
  m.tensors = model.tensors;
  m.file_bytes = bytes;
  m.ring_bytes = fp.ring_bytes;
  m.cpus = cpu_count();

  // Everything allocated before timing starts.
  RawDevice device(o.extent_size, o.queue_depth, bytes, notes);
  AlignedBuffer mirror(static_cast<std::size_t>(std::max<std::uint64_t>(model.arena_bytes, 1)));
  std::vector<std::unique_ptr<std::byte[]>> mirror_extra;
  StateDict target = mirror_state_dict(model, mirror.data(), mirror_extra);

  CheckpointerOptions co;
  co.io.extent_size = o.extent_size;
  co.io.ring_bytes = fp.ring_bytes;
  co.io.queue_depth = o.queue_depth;
  co.io.report = notes.sink("ringckpt");
  Checkpointer ck(co);

  CheckpointerOptions bo = co;
  bo.io.ring_bytes = std::max<std::uint64_t>(round_up(fp.ring_bytes / 8, o.extent_size), 2 * o.extent_size);
  bo.io.report = notes.sink("bounded");
  bo.default_mode = StagingMode::bounded;
  m.bounded_ring_bytes = bo.io.ring_bytes;

  Figures figs;
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

  auto gbps = [](std::uint64_t n, double s) { return s > 0 ? static_cast<double>(n) / s / 1e9 : 0.0; };
  auto ms = [](double s) { return s * 1e3; };
  std::vector<double> rss_rise_bytes;
  bool rss_measured = true;

  const unsigned phases = 9;
  ProgressBar bar("bench");
  std::uint64_t done = 0;
  const std::uint64_t total = std::uint64_t{phases} * o.repeat;
  auto step = [&] { bar.update(++done, total); };

  bool load_matches = true;
  std::string load_difference;

  for (unsigned r = 0; r < o.repeat; ++r) {
    const bool last = r + 1 == o.repeat;
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
        load_difference = first_difference(model.state_dict, target);
        load_matches = load_difference.empty();
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
  struct Verified {
    std::string kind;
    VerifyReport report;
  };
  std::vector<Verified> verified;
  bool all_ok = load_matches;
  {
    IoOptions vio;
    vio.extent_size = o.extent_size;
    vio.queue_depth = o.queue_depth;
    vio.ring_bytes = std::max<std::uint64_t>(2, std::min<std::uint64_t>(o.queue_depth, 16)) * o.extent_size;
    vio.report = notes.sink("verify");
    for (const char* kind : {"sync", "snapshot", "lazy", "bounded"}) {
      const fs::path p = dir / ("bench-" + std::string(kind));
      verified.push_back({kind, ringckpt::verify(p, vio)});
      all_ok = all_ok && verified.back().report.ok();
      if (!o.keep) remove_quietly(p);
    }
  }
  m.notes = notes.all();

  figs.compute_ratios();

  // Targets of the issue (informational).
  std::vector<Target> targets;
  auto med = [&](const char* n) { return median(figs[n].samples); };
  auto ratio = [&](const char* n) { return figs[n].ratio.value_or(0); };
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
    const double limit = static_cast<double>(bo.io.ring_bytes + kRssSlack);
    targets.push_back({"bounded-rss", "bounded peak RSS rise <= ring + 64 MiB", worst / kMiB,
                       limit / kMiB, rss_measured && worst <= limit});
  }

  if (o.json) {
    json::object root;
    root["machine"] = machine_json(m, o);
    root["repeat"] = o.repeat;
    json::object phases;
    for (const auto& f : figs.all()) {
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
    for (const auto& t : targets) {
      ts.emplace_back(json::object{{"name", t.name}, {"rule", t.rule}, {"value", t.value},
                                   {"limit", t.limit}, {"pass", t.pass}});
    }
    root["targets"] = std::move(ts);
    json::array vs;
    for (const auto& v : verified) {
      json::array faults;
      for (const auto& f : v.report.faults) faults.emplace_back(f.file + ": " + f.message);
      vs.emplace_back(json::object{{"kind", v.kind}, {"ok", v.report.ok()},
                                   {"extents", v.report.extents}, {"bytes", v.report.bytes},
                                   {"faults", std::move(faults)}});
    }
    root["verify"] = std::move(vs);
    root["load_matches"] = load_matches;
    root["ok"] = all_ok;
    std::cout << json::serialize(root) << "\n";
  } else {
    std::cout << machine_line(m, o) << "\n";
    std::cout << "repeat " << o.repeat << ", interleaved; device write "
              << (m.device_direct ? "O_DIRECT" : "buffered (O_DIRECT refused)")
              << (m.device_registered ? ", registered buffer" : ", unregistered buffer")
              << "; bounded ring " << format_bytes(bo.io.ring_bytes) << "\n";
    for (const auto& n : m.notes) std::cout << "note: " << n << "\n";
    std::cout << "\n";
    std::vector<std::vector<std::string>> rows;
    for (const auto& f : figs.all()) {
      if (f.samples.empty()) continue;
      const auto [lo, hi] = std::minmax_element(f.samples.begin(), f.samples.end());
      rows.push_back({f.label, num(median(f.samples)) + " " + unit_name(f.unit),
                      num(*lo) + " - " + num(*hi), f.ratio ? num(*f.ratio) : "",
                      f.ratio ? f.baseline_label : ""});
    }
    std::cout << format_table({"phase", "median", "range (min - max)", "ratio", "baseline"}, rows)
              << "\n";
    for (const auto& t : targets) {
      std::cout << (t.pass ? "PASS  " : "FAIL  ") << t.rule << "  (" << num(t.value)
                << (t.name == "bounded-rss" ? " MiB vs " : (t.name == "lazy-blocked" ? " ms vs " : " vs "))
                << num(t.limit) << (t.name == "bounded-rss" ? " MiB" : (t.name == "lazy-blocked" ? " ms" : ""))
                << ")\n";
    }
    for (const auto& v : verified) {
      std::cout << "verify bench-" << v.kind << ": "
                << (v.report.ok() ? "ok" : "FAILED") << " (" << v.report.extents << " extents, "
                << format_bytes(v.report.bytes) << ")\n";
      for (const auto& f : v.report.faults) std::cout << "  " << f.file << ": " << f.message << "\n";
    }
    std::cout << "load round trip: " << (load_matches ? "ok" : "FAILED at " + load_difference)
              << "\n";
  }
  if (o.keep) {
    std::cerr << "ringckpt bench: kept bench-sync, bench-snapshot, bench-lazy and bench-bounded in "
              << dir.string() << "\n";
  }
  return all_ok ? 0 : 1;
}

// ------------------------------------------------------------------- train

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

  Notes notes;
  SyntheticModel model;
  try {
    model = make_model(o.model, o.size, o.seed);
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string("--size: ") + e.what());
  }
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
  co.io.extent_size = o.extent_size;
  co.io.ring_bytes = fp.ring_bytes;
  co.io.queue_depth = o.queue_depth;
  co.io.report = notes.sink("ringckpt");
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
  AlignedBuffer mirror(static_cast<std::size_t>(std::max<std::uint64_t>(model.arena_bytes, 1)));
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

}  // namespace

int run_bench(const std::vector<std::string>& args) {
  try {
    std::optional<BenchOptions> o = parse_options(args);
    if (!o) return 0;
    return o->train_steps > 0 ? run_train(*o) : run_main_bench(*o);
  } catch (const UsageError& e) {
    std::cerr << "ringckpt bench: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "ringckpt bench: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace ringckpt::tools
