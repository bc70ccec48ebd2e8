// test/test_checkpointer_lifecycle.cpp — a long-lived Checkpointer: resources,
// cancellation, and write errors that reach both completions and leave nothing.
#define BOOST_TEST_MODULE checkpointer_lifecycle
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <cstring>
#include <fstream>
#include <thread>

#include "ringckpt/ringckpt.hpp"
#include "test_util.hpp"

using namespace ringckpt;
using namespace ringckpt::test;
using namespace std::chrono_literals;
namespace asio = boost::asio;
namespace fs = std::filesystem;

// ------------------------------------------------------------------------
// Resources: a long-lived Checkpointer does not grow.

BOOST_AUTO_TEST_SUITE(resources)

#if defined(__SANITIZE_ADDRESS__)
// AddressSanitizer's quarantine keeps freed memory resident (up to 256 MiB):
// RSS growth says nothing there, so only the plain and TSan builds check it.
constexpr std::size_t kRssSlackKiB = 300 * 1024;
#elif defined(__SANITIZE_THREAD__)
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
// Cancellation.

BOOST_AUTO_TEST_SUITE(cancel)

BOOST_AUTO_TEST_CASE(cancel_mid_write_leaves_nothing) {
  TempDir root;
  Checkpointer ckpt(options(StagingMode::bounded, 1 * MiB));
  auto m = model_of(16 * MiB, 21);  // 16 rings' worth: staging cannot end before the cancel
  const fs::path dir = root / "c";
  SaveHandle h = ckpt.async_save(m->sd(), dir);
  const bool staged_before = ready(h.staged);
  h.cancel();
  BOOST_TEST(!staged_before, "16 MiB through a 1 MiB ring staged before cancel could be called?");
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
  BOOST_TEST(verify(root / "c", small_io()).ok());
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
    BOOST_TEST(verify(root / "running", small_io()).ok());  // it finished first: then it is whole
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
      const auto blocked = block_data_file(dir);
      SaveHandle h = ckpt.async_save(m->sd(), dir, with_mode(mode));
      auto s = error_of([&] { h.staged.get(); });
      auto c = error_of([&] { h.committed.get(); });
      BOOST_TEST_REQUIRE(s.has_value());
      BOOST_TEST_REQUIRE(c.has_value());
      BOOST_TEST((c->code() == ErrorCode::kIo), c->what());
      BOOST_TEST(std::string(c->what()).find(data_file_name(kBlockedGeneration)) !=
                     std::string::npos,
                 c->what());
      BOOST_TEST(checkpoint_files(dir).empty());
      BOOST_CHECK_THROW(read_metadata(dir), Error);
    }
  }
  // The checkpointer still saves.
  ckpt.async_save(m->sd(), root / "fine").committed.get();
  BOOST_TEST(verify(root / "fine", small_io()).ok());
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
  BOOST_TEST(std::string(c->what()).find("_0.safetensors") != std::string::npos, c->what());
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

