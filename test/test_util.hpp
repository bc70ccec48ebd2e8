// test/test_util.hpp — scratch directories and seeded tensors for the suites.
#pragma once

#include <cstddef>
#include <cstdint>
#include <fcntl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <boost/test/unit_test.hpp>

#include <sys/statvfs.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <optional>
#include <span>
#include <thread>
#include <random>
#include <string>
#include <vector>

#include "ringckpt/io_options.hpp"
#include "ringckpt/ringckpt.hpp"
#include "ringckpt/tensor.hpp"

namespace ringckpt::test {

// A fresh directory, removed with everything in it on destruction. The
// default root is on the machine's disk (ext4 here); /dev/shm is tmpfs.
class TempDir {
 public:
  explicit TempDir(const std::filesystem::path& root = std::filesystem::temp_directory_path()) {
    std::random_device rd;
    path_ = root / ("ringckpt-test-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::permissions(path_, std::filesystem::perms::owner_all,
                                 std::filesystem::perm_options::add, ignored);
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// Whether the file system holding `dir` grants O_DIRECT (tmpfs does since
// Linux 6.6, ext4 does, ramfs does not).
inline bool grants_o_direct(const std::filesystem::path& dir) {
  const std::filesystem::path probe = dir / ".o_direct_probe";
  int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_DIRECT | O_CLOEXEC, 0644);
  if (fd >= 0) ::close(fd);
  std::filesystem::remove(probe);
  return fd >= 0;
}

// A ramfs mounted on a fresh directory: a file system that refuses O_DIRECT.
// mounted() is false where mounting is not allowed (no CAP_SYS_ADMIN).
class RamfsMount {
 public:
  RamfsMount() : dir_() {
    mounted_ = ::mount("ramfs", dir_.path().c_str(), "ramfs", 0, nullptr) == 0;
  }
  ~RamfsMount() {
    if (mounted_) ::umount2(dir_.path().c_str(), MNT_DETACH);
  }
  bool mounted() const { return mounted_; }
  const std::filesystem::path& path() const { return dir_.path(); }

 private:
  TempDir dir_;
  bool mounted_ = false;
};

// Owned storage for a tensor, filled with seeded pseudo-random bytes.
struct OwnedTensor {
  std::vector<std::byte> storage;
  TensorView view;

  OwnedTensor(DType dtype, Shape shape, std::uint64_t seed) {
    view.dtype = dtype;
    view.shape = std::move(shape);
    storage.resize(view.nbytes());
    std::mt19937_64 rng(seed);
    for (auto& b : storage) b = static_cast<std::byte>(rng());
    view.data = storage.data();
  }
  // A zeroed tensor of the same dtype and shape, to load into.
  OwnedTensor blank_like() const {
    OwnedTensor t(view.dtype, view.shape, 0);
    std::fill(t.storage.begin(), t.storage.end(), std::byte{0});
    return t;
  }
  OwnedTensor(const OwnedTensor& o) : storage(o.storage), view(o.view) { view.data = storage.data(); }
  OwnedTensor(OwnedTensor&& o) noexcept : storage(std::move(o.storage)), view(std::move(o.view)) {
    view.data = storage.data();
  }
};

// Small extents and ring, so that modest tensors span many extents.
inline IoOptions small_io() {
  IoOptions io;
  io.extent_size = 64 << 10;
  io.ring_bytes = 1 << 20;
  io.queue_depth = 8;
  io.staging_threads = 2;
  io.report = [](std::string_view) {};
  return io;
}

}  // namespace ringckpt::test

// ------------------------------------------------------------------------
// Checkpointer suites (test_checkpointer_*.cpp): models, options, waits.

namespace ringckpt::test {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

inline constexpr std::size_t KiB = std::size_t{1} << 10;
inline constexpr std::size_t MiB = std::size_t{1} << 20;

// Seeded pseudo-random bytes, a word at a time (fast enough for 64 MiB even
// under ThreadSanitizer).
inline void fill(std::span<std::byte> out, std::uint64_t seed) {
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
  std::size_t i = 0;
  for (; i + 8 <= out.size(); i += 8) {
    x += 0x9E3779B97F4A7C15ull;
    std::uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    std::memcpy(out.data() + i, &z, 8);
  }
  for (; i < out.size(); ++i) out[i] = static_cast<std::byte>(seed + i);
}

struct Spec {
  std::string name;
  DType dtype;
  Shape shape;
};

// A state dict together with the memory its tensors point to. Every tensor
// and the blob (if any) hold seeded data; blank() gives zeroed twins to load
// into.
class Model {
 public:
  Model(std::vector<Spec> specs, std::uint64_t seed, std::size_t blob_bytes = 0,
        std::string blob_name = "blob")
      : specs_(std::move(specs)), blob_name_(std::move(blob_name)) {
    storage_.reserve(specs_.size());
    for (const Spec& s : specs_) {
      TensorView v{nullptr, s.dtype, s.shape};
      storage_.emplace_back(v.nbytes());
    }
    for (std::size_t i = 0; i < specs_.size(); ++i) {
      sd_.add(specs_[i].name, TensorView{storage_[i].data(), specs_[i].dtype, specs_[i].shape});
    }
    if (blob_bytes > 0) sd_.add(blob_name_, Bytes(blob_bytes));
    scribble(seed);
  }
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // Same names and shapes, every byte zero.
  std::unique_ptr<Model> blank() const {
    auto m = std::make_unique<Model>(specs_, 0, blob_bytes(), blob_name_);
    m->zero();
    return m;
  }

  // Overwrites every tensor and the blob in place with data of `seed`.
  void scribble(std::uint64_t seed) {
    for (std::size_t i = 0; i < storage_.size(); ++i) fill(storage_[i], seed * 1000 + i);
    if (Bytes* b = blob()) fill(*b, seed * 1000 + 999);
  }
  void zero() {
    for (auto& s : storage_) std::fill(s.begin(), s.end(), std::byte{0});
    if (Bytes* b = blob()) std::fill(b->begin(), b->end(), std::byte{0});
  }

  // Every byte of every tensor and the blob, in order (a copy).
  std::vector<std::vector<std::byte>> contents() {
    auto out = storage_;
    if (Bytes* b = blob()) out.push_back(*b);
    return out;
  }

  StateDict& sd() { return sd_; }
  std::uint64_t nbytes() const { return sd_.nbytes(); }
  std::size_t blob_bytes() const {
    const StateValue* v = sd_.find(blob_name_);
    return v ? std::get<Bytes>(*v).size() : 0;
  }
  const std::vector<Spec>& specs() const { return specs_; }

 private:
  Bytes* blob() {
    StateValue* v = sd_.find(blob_name_);
    return v ? &std::get<Bytes>(*v) : nullptr;
  }
  std::vector<Spec> specs_;
  std::string blob_name_;
  std::vector<std::vector<std::byte>> storage_;
  StateDict sd_;
};

// A few tensors of odd sizes (so that items straddle extents and the file
// tail is unaligned) adding up to about `total` bytes, plus a 1 KiB blob.
inline std::unique_ptr<Model> model_of(std::size_t total, std::uint64_t seed,
                                const std::string& prefix = "") {
  const std::int64_t a = static_cast<std::int64_t>(total / 2 / 4) + 3;      // F32
  const std::int64_t b = static_cast<std::int64_t>(total / 4 / 2) + 1;      // BF16
  const std::int64_t c = static_cast<std::int64_t>(total / 4) - 4097;       // U8
  return std::make_unique<Model>(
      std::vector<Spec>{{prefix + "layer.0.weight", DType::F32, {a}},
                        {prefix + "layer.0.bias", DType::BF16, {b}},
                        {prefix + "layer.1.weight", DType::U8, {std::max<std::int64_t>(c, 1)}}},
      seed, 1000 + 24, prefix + "step");
}

// Loads `dir` through `ckpt` into a blank twin of `m` and returns its contents.
inline std::vector<std::vector<std::byte>> load_contents(Checkpointer& ckpt, const Model& m,
                                                  const fs::path& dir) {
  auto into = m.blank();
  ckpt.load(into->sd(), dir);
  return into->contents();
}

inline CheckpointerOptions options(StagingMode mode = StagingMode::lazy,
                            std::size_t ring_bytes = 1 * MiB) {
  CheckpointerOptions o;
  o.io = ringckpt::test::small_io();  // 64 KiB extents, 1 MiB ring, silent reports
  o.io.ring_bytes = ring_bytes;
  o.default_mode = mode;
  return o;
}

inline AsyncSaveOptions with_mode(StagingMode mode) {
  AsyncSaveOptions o;
  o.mode = mode;
  return o;
}

inline const char* mode_name(StagingMode m) {
  switch (m) {
    case StagingMode::snapshot: return "snapshot";
    case StagingMode::bounded: return "bounded";
    case StagingMode::lazy: return "lazy";
  }
  return "?";
}

// What a save that did not commit may leave: the directory, nothing else a
// reader would take for (part of) a checkpoint.
inline std::vector<std::string> checkpoint_files(const fs::path& dir) {
  std::vector<std::string> found;
  if (!fs::exists(dir)) return found;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.starts_with("metadata.json") ||
        (e.is_regular_file() && name.ends_with(".safetensors"))) {
      found.push_back(name);
    }
  }
  return found;
}

// Runs f and returns the ringckpt::Error it throws; fails the test if it
// throws nothing or something else.
template <typename F>
std::optional<Error> error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  } catch (const std::exception& e) {
    BOOST_ERROR("expected ringckpt::Error, got " << e.what());
    return std::nullopt;
  }
  BOOST_ERROR("expected ringckpt::Error, nothing was thrown");
  return std::nullopt;
}

inline std::optional<Error> error_in(const std::exception_ptr& p) {
  if (!p) return std::nullopt;
  try {
    std::rethrow_exception(p);
  } catch (const Error& e) {
    return e;
  } catch (...) {
  }
  return std::nullopt;
}

inline bool ready(const std::shared_future<void>& f, std::chrono::milliseconds wait = 0ms) {
  return f.wait_for(wait) == std::future_status::ready;
}

inline std::size_t open_fds() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

inline std::size_t thread_count() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/self/task")) ++n;
  return n;
}

inline std::size_t rss_kib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with("VmRSS:")) return std::stoul(line.substr(6));
  }
  return 0;
}

// Makes `dir/__0_0.safetensors` a directory: opening the data file for
// writing then fails with EISDIR, even for root, once the save has started.
inline void block_data_file(const fs::path& dir) {
  fs::create_directories(dir / "__0_0.safetensors");
}

// A tmpfs of `bytes` mounted on a fresh directory; mounted() is false where
// mounting is not allowed.
class TmpfsMount {
 public:
  explicit TmpfsMount(std::size_t bytes) {
    const std::string opts = "size=" + std::to_string(bytes);
    mounted_ = ::mount("tmpfs", dir_.path().c_str(), "tmpfs", 0, opts.c_str()) == 0;
  }
  ~TmpfsMount() {
    if (mounted_) ::umount2(dir_.path().c_str(), MNT_DETACH);
  }
  bool mounted() const { return mounted_; }
  const fs::path& path() const { return dir_.path(); }
  std::uint64_t free_bytes() const {
    struct statvfs s {};
    ::statvfs(dir_.path().c_str(), &s);
    return std::uint64_t{s.f_bavail} * s.f_frsize;
  }

 private:
  TempDir dir_;
  bool mounted_ = false;
};

// Destroys `ckpt` on another thread; aborts the run if that takes longer
// than `limit` (a hung destructor would otherwise hang the suite).
inline void destroy_within(std::unique_ptr<Checkpointer> ckpt, std::chrono::seconds limit) {
  std::promise<void> done;
  auto fut = done.get_future();
  std::thread t([&] {
    ckpt.reset();
    done.set_value();
  });
  if (fut.wait_for(limit) != std::future_status::ready) {
    std::fprintf(stderr, "~Checkpointer did not return within %llds: hung\n",
                 static_cast<long long>(limit.count()));
    std::abort();
  }
  t.join();
}

// Waits at most `limit` for `f`; false if it is still not ready (a hang),
// so that a test fails instead of blocking.
template <typename Future>
bool ready_within(Future& f, std::chrono::seconds limit) {
  return f.wait_for(limit) == std::future_status::ready;
}

}  // namespace ringckpt::test
