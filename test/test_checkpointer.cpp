#define BOOST_TEST_MODULE checkpointer
#include <boost/test/unit_test.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include <sys/mount.h>
#include <sys/statvfs.h>

#include <atomic>
#include <barrier>
#include <chrono>
#include <cstring>
#include <fstream>
#include <future>
#include <mutex>
#include <set>
#include <thread>

#include "ringckpt/ringckpt.hpp"
#include "test_util.hpp"

using namespace ringckpt;
using namespace std::chrono_literals;
using ringckpt::test::TempDir;
namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace {

constexpr std::size_t KiB = std::size_t{1} << 10;
constexpr std::size_t MiB = std::size_t{1} << 20;

// Seeded pseudo-random bytes, a word at a time (fast enough for 64 MiB even
// under ThreadSanitizer).
void fill(std::span<std::byte> out, std::uint64_t seed) {
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
std::unique_ptr<Model> model_of(std::size_t total, std::uint64_t seed,
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
std::vector<std::vector<std::byte>> load_contents(Checkpointer& ckpt, const Model& m,
                                                  const fs::path& dir) {
  auto into = m.blank();
  ckpt.load(into->sd(), dir);
  return into->contents();
}

CheckpointerOptions options(StagingMode mode = StagingMode::lazy,
                            std::size_t ring_bytes = 1 * MiB) {
  CheckpointerOptions o;
  o.io = ringckpt::test::small_io();  // 64 KiB extents, 1 MiB ring, silent reports
  o.io.ring_bytes = ring_bytes;
  o.default_mode = mode;
  return o;
}

AsyncSaveOptions with_mode(StagingMode mode) {
  AsyncSaveOptions o;
  o.mode = mode;
  return o;
}

const char* mode_name(StagingMode m) {
  switch (m) {
    case StagingMode::snapshot: return "snapshot";
    case StagingMode::bounded: return "bounded";
    case StagingMode::lazy: return "lazy";
  }
  return "?";
}

// What a save that did not commit may leave: the directory, nothing else a
// reader would take for (part of) a checkpoint.
std::vector<std::string> checkpoint_files(const fs::path& dir) {
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

std::optional<Error> error_in(const std::exception_ptr& p) {
  if (!p) return std::nullopt;
  try {
    std::rethrow_exception(p);
  } catch (const Error& e) {
    return e;
  } catch (...) {
  }
  return std::nullopt;
}

bool ready(const std::shared_future<void>& f, std::chrono::milliseconds wait = 0ms) {
  return f.wait_for(wait) == std::future_status::ready;
}

std::size_t open_fds() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

std::size_t thread_count() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/self/task")) ++n;
  return n;
}

std::size_t rss_kib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with("VmRSS:")) return std::stoul(line.substr(6));
  }
  return 0;
}

// Makes `dir/__0_0.safetensors` a directory: opening the data file for
// writing then fails with EISDIR, even for root, once the save has started.
void block_data_file(const fs::path& dir) {
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
void destroy_within(std::unique_ptr<Checkpointer> ckpt, std::chrono::seconds limit) {
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

}  // namespace

// ------------------------------------------------------------------------
// Staging semantics: once staged fires, the caller owns its tensors again.

BOOST_AUTO_TEST_SUITE(staging)

BOOST_AUTO_TEST_CASE(values_mutated_after_staged_are_saved_old) {
  struct Case {
    StagingMode mode;
    std::size_t ring;
    std::size_t state;
  };
  // snapshot needs a ring that holds the state dict; bounded and the second
  // lazy case use a ring smaller than it.
  const Case cases[] = {{StagingMode::snapshot, 4 * MiB, 3 * MiB},
                        {StagingMode::bounded, 1 * MiB, 3 * MiB},
                        {StagingMode::lazy, 4 * MiB, 3 * MiB},
                        {StagingMode::lazy, 1 * MiB, 3 * MiB}};
  TempDir root;
  int n = 0;
  for (const Case& c : cases) {
    BOOST_TEST_CONTEXT("mode " << mode_name(c.mode) << ", ring " << c.ring) {
      Checkpointer ckpt(options(StagingMode::lazy, c.ring));
      auto m = model_of(c.state, 7 + n);
      if (c.ring < c.state) {
        BOOST_TEST_REQUIRE(m->nbytes() > c.ring);
      } else {
        BOOST_TEST_REQUIRE(m->nbytes() + 64 * KiB < c.ring);
      }
      const auto old = m->contents();
      const fs::path dir = root / ("ckpt-" + std::to_string(n++));

      SaveHandle h = ckpt.async_save(m->sd(), dir, with_mode(c.mode));
      if (c.mode == StagingMode::snapshot) {
        BOOST_TEST(ready(h.staged), "snapshot returns only once staged");
      }
      h.staged.get();
      m->scribble(12345);  // the training step mutates its tensors at once
      BOOST_TEST_REQUIRE((m->contents() != old));
      h.committed.get();
      BOOST_TEST(verify(dir).ok());
      BOOST_TEST((load_contents(ckpt, *m, dir) == old));
    }
  }
}

BOOST_AUTO_TEST_CASE(state_dict_freed_after_staged) {
  // After staged the caller may free what the state dict pointed to (and the
  // state dict itself).
  TempDir root;
  Checkpointer ckpt(options(StagingMode::bounded));
  std::vector<std::vector<std::byte>> old;
  SaveHandle h;
  {
    auto m = model_of(3 * MiB, 3);
    old = m->contents();
    h = ckpt.async_save(m->sd(), root / "c");
    h.staged.get();
    m->scribble(99);
  }  // freed here
  h.committed.get();
  auto m = model_of(3 * MiB, 0);
  BOOST_TEST((load_contents(ckpt, *m, root / "c") == old));
}

BOOST_AUTO_TEST_CASE(larger_than_ring_bounded_is_byte_exact) {
  TempDir root;
  Checkpointer ckpt(options(StagingMode::bounded, 1 * MiB));
  auto m = model_of(8 * MiB, 11);
  BOOST_TEST_REQUIRE(m->nbytes() > 8 * ckpt.options().io.ring_bytes - 16 * KiB);
  const auto old = m->contents();
  ckpt.async_save(m->sd(), root / "big").committed.get();
  const VerifyReport v = verify(root / "big");
  BOOST_TEST(v.ok());
  BOOST_TEST(v.extents > 100u);  // 64 KiB extents
  BOOST_TEST((load_contents(ckpt, *m, root / "big") == old));
}

BOOST_AUTO_TEST_CASE(snapshot_with_too_small_a_ring_is_refused) {
  TempDir root;
  Checkpointer ckpt(options(StagingMode::bounded, 1 * MiB));
  auto m = model_of(8 * MiB, 11);
  auto e = error_of([&] { ckpt.async_save(m->sd(), root / "snap", with_mode(StagingMode::snapshot)); });
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST((e->code() == ErrorCode::kInvalidArgument));
  BOOST_TEST(std::string(e->what()).find("ring") != std::string::npos, e->what());
  BOOST_TEST(checkpoint_files(root / "snap").empty());
  // The same as the default mode.
  {
    Checkpointer snap(options(StagingMode::snapshot, 1 * MiB));
    auto e2 = error_of([&] { snap.async_save(m->sd(), root / "snap2"); });
    BOOST_TEST_REQUIRE(e2.has_value());
    BOOST_TEST((e2->code() == ErrorCode::kInvalidArgument));
  }
  // The checkpointer is unharmed: the same state dict saves bounded.
  ckpt.async_save(m->sd(), root / "snap").committed.get();
  BOOST_TEST((load_contents(ckpt, *m, root / "snap") == m->contents()));
}

BOOST_AUTO_TEST_SUITE_END()

// ------------------------------------------------------------------------
// Resources: a long-lived Checkpointer does not grow.

BOOST_AUTO_TEST_SUITE(resources)

#if defined(__SANITIZE_THREAD__)
constexpr std::size_t kRssSlackKiB = 8 * 1024;  // the sanitizer's own bookkeeping grows a little
#else
constexpr std::size_t kRssSlackKiB = 2 * 1024;
#endif

BOOST_AUTO_TEST_CASE(fifty_saves_without_growth) {
  TempDir root;
  Checkpointer ckpt(options(StagingMode::lazy, 1 * MiB));
  // Many entries, so that whatever a save keeps (plan, metadata, layout)
  // would show.
  std::vector<Spec> specs;
  for (int i = 0; i < 200; ++i) {
    specs.push_back({"model.layers." + std::to_string(i) + ".weight", DType::F32, {1024 + i}});
  }
  Model m(std::move(specs), 5, 333);
  std::size_t fds5 = 0, rss5 = 0;
  for (int i = 1; i <= 50; ++i) {
    const fs::path dir = root / ("step-" + std::to_string(i));
    AsyncSaveOptions o;
    o.mode = i % 3 == 0 ? StagingMode::bounded : StagingMode::lazy;
    SaveHandle h = ckpt.async_save(m.sd(), dir, o);
    h.staged.get();
    h.committed.get();
    fs::remove_all(dir);
    if (i == 5) {
      fds5 = open_fds();
      rss5 = rss_kib();
    }
  }
  const std::size_t fds50 = open_fds();
  const std::size_t rss50 = rss_kib();
  BOOST_TEST_MESSAGE("fds " << fds5 << " -> " << fds50 << ", VmRSS " << rss5 << " -> " << rss50
                            << " KiB");
  BOOST_TEST(fds50 == fds5);
  BOOST_TEST(rss50 < rss5 + kRssSlackKiB, "VmRSS grew from " << rss5 << " to " << rss50 << " KiB");
}

// A planner whose resolved data holds a reference to `token`: once a save
// has committed and been retired, nothing may keep its resolved data (and so
// its plan, layout and job) alive.
class TokenPlanner : public DefaultSavePlanner {
 public:
  std::shared_ptr<int> token = std::make_shared<int>(0);
  ItemData resolve_data(const WriteItem& item) override {
    auto bytes = lookup_bytes(item.index);
    return ItemData::produced(bytes.size(), [bytes, t = token](std::uint64_t off,
                                                               std::span<std::byte> out) {
      std::memcpy(out.data(), bytes.data() + off, out.size());
    });
  }
};

BOOST_AUTO_TEST_CASE(a_committed_save_keeps_nothing_alive) {
  TempDir root;
  auto m = model_of(512 * KiB, 2);
  TokenPlanner planner;
  {
    Checkpointer ckpt(options());
    AsyncSaveOptions o;
    o.planner = &planner;
    ckpt.async_save(m->sd(), root / "a", o).committed.get();
    BOOST_TEST((load_contents(ckpt, *m, root / "a") == m->contents()));
    // The save is retired right after it commits; give it a moment.
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (planner.token.use_count() > 1 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(5ms);
    }
    BOOST_TEST(planner.token.use_count() == 1,
               "a committed save still holds its resolved item data ("
                   << planner.token.use_count() - 1
                   << " references): the save task and its job keep each other alive");
  }
  BOOST_TEST(planner.token.use_count() == 1, "still held after ~Checkpointer");
}

BOOST_AUTO_TEST_CASE(destroying_a_checkpointer_releases_threads_files_and_ring) {
  TempDir root;
  auto m = model_of(512 * KiB, 3);
  const std::size_t threads0 = thread_count(), fds0 = open_fds(), rss0 = rss_kib();
  {
    Checkpointer ckpt(options(StagingMode::lazy, 64 * MiB));
    ckpt.save(m->sd(), root / "a");
    auto into = m->blank();
    ckpt.load(into->sd(), root / "a");
    BOOST_TEST(rss_kib() > rss0 + 32 * 1024, "the 64 MiB ring is pre-faulted");
  }
  const auto deadline = std::chrono::steady_clock::now() + 2s;
  while (thread_count() > threads0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(5ms);
  }
  const std::size_t threads1 = thread_count(), fds1 = open_fds(), rss1 = rss_kib();
  BOOST_TEST_MESSAGE("threads " << threads0 << " -> " << threads1 << ", fds " << fds0 << " -> "
                                << fds1 << ", VmRSS " << rss0 << " -> " << rss1 << " KiB");
  BOOST_TEST(threads1 == threads0, "~Checkpointer left threads running");
  BOOST_TEST(fds1 == fds0, "~Checkpointer left files open (io_uring, eventfd)");
  BOOST_TEST(rss1 < rss0 + 16 * 1024, "~Checkpointer left the staging ring mapped");
}

BOOST_AUTO_TEST_SUITE_END()

// ------------------------------------------------------------------------
// Saves from several threads through one Checkpointer.

BOOST_AUTO_TEST_CASE(concurrent_saves_from_four_threads) {
  TempDir root;
  Checkpointer ckpt(options(StagingMode::lazy, 2 * MiB));
  constexpr int kThreads = 4;
  constexpr int kSaves = 3;
  const StagingMode modes[] = {StagingMode::lazy, StagingMode::bounded, StagingMode::snapshot};
  std::barrier start(kThreads);
  std::mutex mu;
  std::vector<std::string> failures;  // guarded by mu
  auto fail = [&](std::string what) {
    std::lock_guard lock(mu);
    failures.push_back(std::move(what));
  };

  auto worker = [&](int t) {
    try {
      const std::string prefix = "rank" + std::to_string(t) + ".";
      auto m = model_of(600 * KiB + t * 40 * KiB, 100 + t, prefix);
      std::vector<std::vector<std::vector<std::byte>>> saved;
      std::vector<SaveHandle> handles;
      start.arrive_and_wait();
      for (int s = 0; s < kSaves; ++s) {
        m->scribble(100 + t * 10 + s);
        saved.push_back(m->contents());
        const fs::path dir = root / ("t" + std::to_string(t) + "-s" + std::to_string(s));
        SaveHandle h = ckpt.async_save(m->sd(), dir, with_mode(modes[(t + s) % 3]));
        h.staged.get();  // then mutate for the next save, which queues behind this one
        handles.push_back(h);
      }
      for (auto& h : handles) h.committed.get();  // each save's own commit
      for (int s = 0; s < kSaves; ++s) {
        const fs::path dir = root / ("t" + std::to_string(t) + "-s" + std::to_string(s));
        Metadata md = read_metadata(dir);
        for (const auto& [name, _] : md.state_dict_metadata) {
          if (!name.starts_with(prefix)) fail(dir.string() + " holds a foreign entry " + name);
        }
        if (md.state_dict_metadata.size() != 4) fail(dir.string() + ": wrong entry count");
        if (load_contents(ckpt, *m, dir) != saved[s]) fail(dir.string() + " loads other bytes");
        std::size_t data_files = 0;
        for (const auto& e : fs::directory_iterator(dir)) data_files += e.path().extension() == ".safetensors";
        if (data_files != md.files.size()) fail(dir.string() + ": stray data files");
      }
    } catch (const std::exception& e) {
      fail(std::string("thread ") + std::to_string(t) + ": " + e.what());
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t);
  for (auto& th : threads) th.join();
  // verify() sets up an io_uring of its own: run it here, not on the workers,
  // where ThreadSanitizer (blind to liburing's raw mmap) would take one
  // worker's new ring, mapped where another's was, for a race.
  for (int t = 0; t < kThreads; ++t) {
    for (int s = 0; s < kSaves; ++s) {
      const fs::path dir = root / ("t" + std::to_string(t) + "-s" + std::to_string(s));
      if (!verify(dir).ok()) fail(dir.string() + " does not verify");
    }
  }
  for (const auto& f : failures) BOOST_ERROR(f);
  BOOST_TEST(failures.empty());
}

// ------------------------------------------------------------------------
// Cancellation.

BOOST_AUTO_TEST_SUITE(cancel)

BOOST_AUTO_TEST_CASE(cancel_mid_write_leaves_nothing) {
  TempDir root;
  Checkpointer ckpt(options(StagingMode::bounded, 1 * MiB));
  auto m = model_of(64 * MiB, 21);
  const fs::path dir = root / "c";
  SaveHandle h = ckpt.async_save(m->sd(), dir);
  const bool staged_before = ready(h.staged);
  h.cancel();
  BOOST_TEST(!staged_before, "64 MiB through a 1 MiB ring staged before cancel could be called?");
  auto e = error_of([&] { h.committed.get(); });
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST((e->code() == ErrorCode::kCancelled), e->what());
  if (!staged_before) {
    auto s = error_of([&] { h.staged.get(); });
    BOOST_TEST_REQUIRE(s.has_value());
    BOOST_TEST((s->code() == ErrorCode::kCancelled));
  }
  BOOST_TEST(checkpoint_files(dir).empty());
  BOOST_CHECK_THROW(read_metadata(dir), Error);
  // Cancelling again, or after the end, is harmless.
  h.cancel();

  // The next save, into the same directory, succeeds.
  m->scribble(22);
  ckpt.async_save(m->sd(), dir).committed.get();
  BOOST_TEST((load_contents(ckpt, *m, dir) == m->contents()));
}

BOOST_AUTO_TEST_CASE(cancel_a_save_queued_behind_another) {
  TempDir root;
  Checkpointer ckpt(options(StagingMode::bounded, 1 * MiB));
  auto big = model_of(32 * MiB, 31);
  auto small = model_of(256 * KiB, 32);
  SaveHandle a = ckpt.async_save(big->sd(), root / "a");
  SaveHandle b = ckpt.async_save(small->sd(), root / "b");
  b.cancel();
  if (!ready(a.committed)) {
    // a had not finished, so b was still queued: the cancel completes it at
    // once, without waiting for a.
    BOOST_TEST(ready(b.committed), "a queued save's cancel completes it at once");
  }
  auto e = error_of([&] { b.committed.get(); });
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST((e->code() == ErrorCode::kCancelled));
  auto s = error_of([&] { b.staged.get(); });
  BOOST_TEST_REQUIRE(s.has_value());
  BOOST_TEST((s->code() == ErrorCode::kCancelled));

  a.committed.get();  // the one ahead is not disturbed
  BOOST_TEST((load_contents(ckpt, *big, root / "a") == big->contents()));
  BOOST_TEST(checkpoint_files(root / "b").empty());
  // A later save to b works.
  ckpt.async_save(small->sd(), root / "b").committed.get();
  BOOST_TEST((load_contents(ckpt, *small, root / "b") == small->contents()));
}

BOOST_AUTO_TEST_CASE(cancel_after_commit_changes_nothing) {
  TempDir root;
  Checkpointer ckpt(options());
  auto m = model_of(256 * KiB, 41);
  SaveHandle h = ckpt.async_save(m->sd(), root / "c");
  h.committed.get();
  h.cancel();
  BOOST_CHECK_NO_THROW(h.committed.get());
  BOOST_TEST(verify(root / "c").ok());
}

// A cancel issued while a queued save is being handed the ring (the one ahead
// just committed) must not be lost: the save has not committed when cancel()
// is called, so it must end kCancelled, and leave nothing behind.
BOOST_AUTO_TEST_CASE(cancel_racing_the_queue_hand_off_is_not_lost) {
  TempDir root;
  Checkpointer ckpt(options(StagingMode::bounded, 1 * MiB));
  auto a = model_of(1 * MiB, 51);
  auto b = model_of(4 * MiB, 52);
  int lost = 0, raced = 0;
  for (int i = 0; i < 20; ++i) {
    const fs::path da = root / ("a" + std::to_string(i));
    const fs::path db = root / ("b" + std::to_string(i));
    SaveHandle ha = ckpt.async_save(a->sd(), da);
    SaveHandle hb = ckpt.async_save(b->sd(), db);
    ha.committed.get();
    const bool committed_before = ready(hb.committed);
    hb.cancel();
    if (committed_before) continue;
    ++raced;
    try {
      hb.committed.get();
      ++lost;
      BOOST_ERROR("iteration " << i << ": cancel() before commit was lost: the save committed");
    } catch (const Error& err) {
      BOOST_TEST((err.code() == ErrorCode::kCancelled), err.what());
      BOOST_TEST(checkpoint_files(db).empty());
    }
  }
  BOOST_TEST_MESSAGE("hand-off races: " << raced << ", lost cancels: " << lost);
  BOOST_TEST(lost == 0);
}

BOOST_AUTO_TEST_CASE(destroying_the_checkpointer_with_saves_in_flight) {
  TempDir root;
  auto big = model_of(64 * MiB, 61);
  auto small = model_of(256 * KiB, 62);
  auto ckpt = std::make_unique<Checkpointer>(options(StagingMode::bounded, 1 * MiB));
  SaveHandle running = ckpt->async_save(big->sd(), root / "running");
  SaveHandle queued = ckpt->async_save(small->sd(), root / "queued");
  std::atomic<int> calls{0};
  std::exception_ptr seen;
  ckpt->async_save(small->sd(), root / "queued2", {}, [&](std::exception_ptr e) {
    seen = e;
    ++calls;
  });
  destroy_within(std::move(ckpt), 60s);

  BOOST_TEST_REQUIRE(ready(running.committed), "~Checkpointer returned before the save ended");
  BOOST_TEST_REQUIRE(ready(running.staged));
  try {
    running.committed.get();
    BOOST_TEST(verify(root / "running").ok());  // it finished first: then it is whole
  } catch (const Error& e) {
    BOOST_TEST((e.code() == ErrorCode::kCancelled), e.what());
    BOOST_TEST(checkpoint_files(root / "running").empty());
  }
  BOOST_TEST_REQUIRE(ready(queued.committed));
  auto e = error_of([&] { queued.committed.get(); });
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST((e->code() == ErrorCode::kCancelled));
  BOOST_TEST(checkpoint_files(root / "queued").empty());
  running.cancel();  // after ~Checkpointer: a no-op, not a crash
  queued.cancel();
  BOOST_TEST(calls.load() == 1);
  auto e2 = error_in(seen);
  BOOST_TEST_REQUIRE(e2.has_value());
  BOOST_TEST((e2->code() == ErrorCode::kCancelled));
}

BOOST_AUTO_TEST_SUITE_END()

// ------------------------------------------------------------------------
// Write errors reach both completions and leave nothing.

BOOST_AUTO_TEST_SUITE(errors)

BOOST_AUTO_TEST_CASE(data_file_cannot_be_created) {
  TempDir root;
  auto m = model_of(2 * MiB, 71);
  Checkpointer ckpt(options(StagingMode::lazy, 4 * MiB));
  int n = 0;
  for (StagingMode mode : {StagingMode::snapshot, StagingMode::bounded, StagingMode::lazy}) {
    BOOST_TEST_CONTEXT("mode " << mode_name(mode)) {
      const fs::path dir = root / ("c" + std::to_string(n++));
      block_data_file(dir);
      SaveHandle h = ckpt.async_save(m->sd(), dir, with_mode(mode));
      auto s = error_of([&] { h.staged.get(); });
      auto c = error_of([&] { h.committed.get(); });
      BOOST_TEST_REQUIRE(s.has_value());
      BOOST_TEST_REQUIRE(c.has_value());
      BOOST_TEST((c->code() == ErrorCode::kIo), c->what());
      BOOST_TEST(std::string(c->what()).find("__0_0.safetensors") != std::string::npos, c->what());
      BOOST_TEST(checkpoint_files(dir).empty());
      BOOST_CHECK_THROW(read_metadata(dir), Error);
    }
  }
  // The checkpointer still saves.
  ckpt.async_save(m->sd(), root / "fine").committed.get();
  BOOST_TEST(verify(root / "fine").ok());
}

BOOST_AUTO_TEST_CASE(checkpoint_directory_cannot_be_created) {
  // A regular file where the parent directory should be: fails even as root.
  TempDir root;
  std::ofstream(root / "not-a-dir") << "x";
  auto m = model_of(256 * KiB, 72);
  Checkpointer ckpt(options());
  const fs::path dir = root / "not-a-dir" / "ckpt";
  std::optional<Error> e;
  try {
    SaveHandle h = ckpt.async_save(m->sd(), dir);
    // Reported through the completions...
    auto s = error_of([&] { h.staged.get(); });
    e = error_of([&] { h.committed.get(); });
    BOOST_TEST(s.has_value());
  } catch (const Error& err) {
    e = err;  // ...or at once, from planning on the calling thread.
  }
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST((e->code() == ErrorCode::kIo), e->what());
  BOOST_TEST(std::string(e->what()).find("not-a-dir") != std::string::npos, e->what());
  BOOST_TEST(fs::is_regular_file(root / "not-a-dir"));
}

BOOST_AUTO_TEST_CASE(disk_full_mid_write) {
  TmpfsMount small(1 * MiB);
  if (!small.mounted()) {
    BOOST_TEST_MESSAGE("cannot mount a tmpfs here: disk-full case skipped");
    return;
  }
  const std::uint64_t free_before = small.free_bytes();
  Checkpointer ckpt(options(StagingMode::bounded, 1 * MiB));
  auto m = model_of(8 * MiB, 81);
  SaveHandle h = ckpt.async_save(m->sd(), small.path() / "c");
  auto s = error_of([&] { h.staged.get(); });
  auto c = error_of([&] { h.committed.get(); });
  BOOST_TEST_REQUIRE(s.has_value());
  BOOST_TEST_REQUIRE(c.has_value());
  BOOST_TEST((c->code() == ErrorCode::kIo), c->what());
  BOOST_TEST(std::string(c->what()).find("__0_0.safetensors") != std::string::npos, c->what());
  BOOST_TEST(checkpoint_files(small.path() / "c").empty());
  BOOST_TEST(small.free_bytes() >= free_before - 64 * KiB, "the partial data file is removed");
  // A state dict that fits saves fine afterwards.
  auto fits = model_of(256 * KiB, 82);
  ckpt.async_save(fits->sd(), small.path() / "d").committed.get();
  BOOST_TEST((load_contents(ckpt, *fits, small.path() / "d") == fits->contents()));
}

BOOST_AUTO_TEST_CASE(existing_checkpoint_is_refused_unless_overwrite) {
  TempDir root;
  auto m = model_of(256 * KiB, 91);
  Checkpointer ckpt(options());
  ckpt.save(m->sd(), root / "c");
  const auto first = m->contents();
  m->scribble(92);
  auto e = error_of([&] { ckpt.async_save(m->sd(), root / "c").committed.get(); });
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST((e->code() == ErrorCode::kAlreadyExists));
  BOOST_TEST((load_contents(ckpt, *m, root / "c") == first));
  AsyncSaveOptions o;
  o.overwrite = true;
  ckpt.async_save(m->sd(), root / "c", o).committed.get();
  BOOST_TEST((load_contents(ckpt, *m, root / "c") == m->contents()));
}

BOOST_AUTO_TEST_SUITE_END()

// ------------------------------------------------------------------------
// Completion tokens.

BOOST_AUTO_TEST_SUITE(tokens)

BOOST_AUTO_TEST_CASE(use_future) {
  TempDir root;
  Checkpointer ckpt(options());
  auto m = model_of(512 * KiB, 101);
  SaveHandle h = ckpt.async_save(m->sd(), root / "c");
  std::future<void> staged = h.async_wait_staged(asio::use_future);
  std::future<void> committed = h.async_wait_committed(asio::use_future);
  BOOST_CHECK_NO_THROW(staged.get());
  BOOST_CHECK_NO_THROW(committed.get());
  // After the fact, too.
  BOOST_CHECK_NO_THROW(h.async_wait_committed(asio::use_future).get());

  const fs::path bad = root / "bad";
  block_data_file(bad);
  SaveHandle f = ckpt.async_save(m->sd(), bad);
  std::future<void> failed = f.async_wait_committed(asio::use_future);
  auto e = error_of([&] { failed.get(); });
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST((e->code() == ErrorCode::kIo));
}

BOOST_AUTO_TEST_CASE(plain_callback_invoked_once) {
  TempDir root;
  auto m = model_of(512 * KiB, 102);
  std::atomic<int> staged_calls{0}, committed_calls{0}, late_calls{0}, failed_calls{0};
  std::exception_ptr staged_error, committed_error, late_error, failed_error;
  {
    Checkpointer ckpt(options());
    SaveHandle h = ckpt.async_save(m->sd(), root / "c");
    std::promise<void> done;
    h.async_wait_staged([&](std::exception_ptr e) {
      staged_error = e;
      ++staged_calls;
    });
    h.async_wait_committed([&](std::exception_ptr e) {
      committed_error = e;
      ++committed_calls;
      done.set_value();
    });
    done.get_future().wait();
    h.async_wait_committed([&](std::exception_ptr e) {  // already complete: at once
      late_error = e;
      ++late_calls;
    });

    const fs::path bad = root / "bad";
    block_data_file(bad);
    std::promise<void> failed;
    ckpt.async_save(m->sd(), bad).async_wait_committed([&](std::exception_ptr e) {
      failed_error = e;
      ++failed_calls;
      failed.set_value();
    });
    failed.get_future().wait();
  }  // ~Checkpointer: every thread has stopped, no call can still come
  BOOST_TEST(staged_calls.load() == 1);
  BOOST_TEST(committed_calls.load() == 1);
  BOOST_TEST(late_calls.load() == 1);
  BOOST_TEST(failed_calls.load() == 1);
  BOOST_TEST(!staged_error);
  BOOST_TEST(!committed_error);
  BOOST_TEST(!late_error);
  auto e = error_in(failed_error);
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST((e->code() == ErrorCode::kIo));
}

BOOST_AUTO_TEST_CASE(async_save_with_a_callback_token) {
  TempDir root;
  auto m = model_of(512 * KiB, 103);
  std::atomic<int> ok_calls{0}, bad_calls{0};
  std::exception_ptr ok_error, bad_error;
  {
    Checkpointer ckpt(options());
    std::promise<void> p1, p2;
    ckpt.async_save(m->sd(), root / "c", {}, [&](std::exception_ptr e) {
      ok_error = e;
      ++ok_calls;
      p1.set_value();
    });
    const fs::path bad = root / "bad";
    block_data_file(bad);
    ckpt.async_save(m->sd(), bad, {}, [&](std::exception_ptr e) {
      bad_error = e;
      ++bad_calls;
      p2.set_value();
    });
    p1.get_future().wait();
    p2.get_future().wait();
    BOOST_TEST((load_contents(ckpt, *m, root / "c") == m->contents()));
  }
  BOOST_TEST(ok_calls.load() == 1);
  BOOST_TEST(bad_calls.load() == 1);
  BOOST_TEST(!ok_error);
  auto e = error_in(bad_error);
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST((e->code() == ErrorCode::kIo));
  BOOST_TEST(checkpoint_files(root / "bad").empty());
}

BOOST_AUTO_TEST_CASE(use_awaitable_in_a_coroutine) {
  TempDir root;
  auto m = model_of(512 * KiB, 104);
  Checkpointer ckpt(options());
  const fs::path bad = root / "bad";
  block_data_file(bad);

  asio::io_context io;
  int resumed = 0, caught = 0, finished = 0;
  std::optional<ErrorCode> caught_code;
  std::exception_ptr escaped;
  std::thread::id main_thread = std::this_thread::get_id(), resumed_on;
  SaveHandle h = ckpt.async_save(m->sd(), root / "c");
  SaveHandle f = ckpt.async_save(m->sd(), bad);
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        co_await h.async_wait_staged(asio::use_awaitable);
        co_await h.async_wait_committed(asio::use_awaitable);
        ++resumed;
        resumed_on = std::this_thread::get_id();
        try {
          co_await f.async_wait_committed(asio::use_awaitable);
        } catch (const Error& e) {
          ++caught;
          caught_code = e.code();
        }
        // And async_save itself, through the token.
        co_await ckpt.async_save(m->sd(), root / "d", {}, asio::use_awaitable);
        ++finished;
      },
      [&](std::exception_ptr e) { escaped = e; });

  // io.run() returns when the io_context runs out of work: an asynchronous
  // operation must count as work on its handler's executor until it
  // completes, so one run() has to see the coroutine through.
  io.run();
  const bool done_in_one_run = finished == 1;
  BOOST_TEST(done_in_one_run,
             "io_context::run() returned while the coroutine still awaited a save: the "
             "pending wait keeps no outstanding work on the handler's executor");
  // Drain anyway, so that the coroutine does not outlive the test.
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (finished == 0 && !escaped && std::chrono::steady_clock::now() < deadline) {
    io.restart();
    io.run_for(10ms);
  }
  BOOST_TEST(resumed == 1);
  BOOST_TEST(caught == 1);
  BOOST_TEST((caught_code == ErrorCode::kIo));
  BOOST_TEST(finished == 1);
  BOOST_TEST((resumed_on == main_thread), "the coroutine resumes on its io_context");
  BOOST_TEST(!escaped);
  BOOST_TEST((load_contents(ckpt, *m, root / "d") == m->contents()));
}

BOOST_AUTO_TEST_CASE(async_load_with_use_future) {
  TempDir root;
  Checkpointer ckpt(options());
  auto m = model_of(1536 * KiB, 105);
  ckpt.save(m->sd(), root / "c");
  auto into = m->blank();
  std::future<void> f = ckpt.async_load(into->sd(), root / "c", nullptr, asio::use_future);
  BOOST_CHECK_NO_THROW(f.get());
  BOOST_TEST((into->contents() == m->contents()));

  // A missing checkpoint fails through the token.
  auto other = m->blank();
  std::future<void> g = ckpt.async_load(other->sd(), root / "missing", nullptr, asio::use_future);
  auto e = error_of([&] { g.get(); });
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST((e->code() == ErrorCode::kNotFound));

  // And with a callback, once.
  std::atomic<int> calls{0};
  std::promise<std::exception_ptr> p;
  auto third = m->blank();
  ckpt.async_load(third->sd(), root / "c", nullptr, [&](std::exception_ptr e) {
    ++calls;
    p.set_value(e);
  });
  BOOST_TEST(!p.get_future().get());
  BOOST_TEST((third->contents() == m->contents()));
  BOOST_TEST(calls.load() == 1);
}

BOOST_AUTO_TEST_SUITE_END()

// ------------------------------------------------------------------------
// Synchronous forms and the I/O report.

BOOST_AUTO_TEST_CASE(sync_save_and_load_round_trip_and_report) {
  TempDir root("/var/tmp");
  Checkpointer ckpt(options());
  auto m = model_of(2 * MiB, 111);
  const Metadata md = ckpt.save(m->sd(), root / "c");
  BOOST_TEST(md.state_dict_metadata.size() == 4u);
  BOOST_TEST(md.state_dict_metadata.contains("layer.0.weight"));
  BOOST_TEST(md.state_dict_metadata.contains("step"));
  BOOST_TEST(md.files.size() == 1u);
  auto into = m->blank();
  ckpt.load(into->sd(), root / "c");
  BOOST_TEST((into->contents() == m->contents()));

  const IoReport r = ckpt.report();
  BOOST_TEST(r.registered_buffers);
  if (ringckpt::test::grants_o_direct(root.path())) {
    BOOST_TEST(r.direct_io);
  } else {
    BOOST_TEST(!r.direct_io);
    BOOST_TEST(!r.notes.empty(), "the O_DIRECT fallback is reported");
  }
}

BOOST_AUTO_TEST_CASE(empty_and_blob_only_state_dicts) {
  TempDir root;
  Checkpointer ckpt(options());
  for (StagingMode mode : {StagingMode::snapshot, StagingMode::bounded, StagingMode::lazy}) {
    BOOST_TEST_CONTEXT("mode " << mode_name(mode)) {
      const fs::path empty = root / ("empty-" + std::string(mode_name(mode)));
      StateDict none;
      ckpt.async_save(none, empty, with_mode(mode)).committed.get();
      StateDict none_back;
      ckpt.load(none_back, empty);
      BOOST_TEST(verify(empty).ok());

      const fs::path blob = root / ("blob-" + std::string(mode_name(mode)));
      StateDict b;
      b.add("step", bytes_of(std::uint64_t{77}));
      ckpt.async_save(b, blob, with_mode(mode)).committed.get();
      StateDict b_back;
      b_back.add("step", Bytes{});
      ckpt.load(b_back, blob);
      BOOST_TEST((std::get<Bytes>(*b_back.find("step")) == bytes_of(std::uint64_t{77})));
    }
  }
}

// ------------------------------------------------------------------------
// The planner given in AsyncSaveOptions stages the data: a dtype-converting
// planner (F32 stored as BF16) has resolve_data called from the staging
// threads, once per item, before staged fires.

namespace {

std::uint16_t to_bf16(float f) {
  std::uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return static_cast<std::uint16_t>(bits >> 16);
}

class Bf16Planner : public DefaultSavePlanner {
 public:
  std::atomic<int> calls{0};
  std::atomic<int> on_caller_thread{0};
  std::thread::id caller = std::this_thread::get_id();

  SavePlan create_local_plan() override {
    SavePlan plan = DefaultSavePlanner::create_local_plan();
    for (WriteItem& w : plan.items) {
      if (w.tensor_data && w.tensor_data->properties.dtype == DType::F32) {
        w.tensor_data->properties.dtype = DType::BF16;
      }
    }
    return plan;
  }
  ItemData resolve_data(const WriteItem& item) override {
    ++calls;
    if (std::this_thread::get_id() == caller) ++on_caller_thread;
    if (!item.tensor_data || item.tensor_data->properties.dtype != DType::BF16) {
      return DefaultSavePlanner::resolve_data(item);
    }
    const StateValue* v = state_dict_->find(item.index.fqn);
    const auto& t = std::get<TensorView>(*v);
    if (t.dtype != DType::F32) return DefaultSavePlanner::resolve_data(item);
    const float* src = static_cast<const float*>(t.data);
    const std::uint64_t n = static_cast<std::uint64_t>(t.numel());
    // Any byte range of the converted tensor, on demand.
    return ItemData::produced(n * 2, [src](std::uint64_t off, std::span<std::byte> out) {
      for (std::size_t i = 0; i < out.size(); ++i) {
        const std::uint64_t b = off + i;
        const std::uint16_t h = to_bf16(src[b / 2]);
        out[i] = static_cast<std::byte>(b % 2 == 0 ? h & 0xff : h >> 8);
      }
    });
  }
};

}  // namespace

BOOST_AUTO_TEST_CASE(planner_in_options_resolves_on_staging_threads) {
  TempDir root;
  Checkpointer ckpt(options(StagingMode::lazy, 1 * MiB));
  const std::int64_t n = 300 * 1024 + 5;  // 1.2 MB of F32: more than the ring
  Model m({{"w", DType::F32, {n}}, {"b", DType::BF16, {777}}}, 121, 99);
  std::vector<float> old(static_cast<std::size_t>(n));
  std::memcpy(old.data(), std::get<TensorView>(*m.sd().find("w")).data, old.size() * 4);

  Bf16Planner planner;
  AsyncSaveOptions o;
  o.planner = &planner;
  SaveHandle h = ckpt.async_save(m.sd(), root / "c", o);
  h.staged.get();
  const int calls_at_staged = planner.calls.load();
  m.scribble(122);  // mutations after staged are not seen
  h.committed.get();

  BOOST_TEST(calls_at_staged == 3);  // once per item: w, b and the blob
  BOOST_TEST(planner.calls.load() == 3);
  BOOST_TEST(planner.on_caller_thread.load() == 0, "resolve_data ran on the calling thread");

  const Metadata md = read_metadata(root / "c");
  const auto& tm = std::get<TensorStorageMetadata>(md.state_dict_metadata.at("w"));
  BOOST_TEST((tm.properties.dtype == DType::BF16));
  BOOST_TEST(verify(root / "c").ok());

  // Load w as BF16: every element is the truncation of the old F32 value.
  Model into({{"w", DType::BF16, {n}}, {"b", DType::BF16, {777}}}, 0, 99);
  ckpt.load(into.sd(), root / "c");
  const auto* w = static_cast<const std::uint16_t*>(std::get<TensorView>(*into.sd().find("w")).data);
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < old.size(); ++i) wrong += w[i] != to_bf16(old[i]);
  BOOST_TEST(wrong == 0u);
}
