// test_crash.cpp — a save killed (SIGKILL) at any step leaves a directory
// that verifies: over an old checkpoint, the old contents until metadata.json's
// rename and the new ones from it on; in a fresh directory, no checkpoint
// before the rename and a verifying one after it. The next save into the
// directory succeeds and leaves only the files its metadata.json lists.
//
// Each save runs in a forked child, armed through RINGCKPT_TEST_KILL_AT
// (lib/io/kill_points.hpp) or killed by the parent at a random moment. The
// parent never saves (the kill point's variable is read once per process)
// and forks only while it runs no other thread; it checks what is on disk.
#define BOOST_TEST_MODULE crash
#include <boost/test/unit_test.hpp>

#include <signal.h>
#include <stdlib.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "plan/layout.hpp"
#include "ringckpt/ringckpt.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using namespace ringckpt;
using namespace ringckpt::test;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// 3 MiB in 64 KiB extents (small_io): about 48 extents, several in flight.
constexpr std::size_t kModelBytes = 3 * MiB;

// In the order a save reaches them; from "renamed" on the new save is visible.
const std::vector<std::string> kPoints = {"data-created", "data-written", "data-synced",
                                          "tmp-written",  "renamed",      "old-removal"};
bool committed_at(const std::string& point) { return point == "renamed" || point == "old-removal"; }

enum class Outcome { killed, finished, failed };

#if defined(__SANITIZE_THREAD__)
constexpr std::size_t kRuntimeThreads = 1;
#else
constexpr std::size_t kRuntimeThreads = 0;
#endif

std::size_t thread_count() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/self/task")) ++n;
  return n;
}

// Saves model_of(kModelBytes, seed) into dir with overwrite in a forked child,
// armed to kill itself at `kill_at` (if set), or killed by the parent after
// `kill_after` (if set). Waits at most 30 s for the child.
Outcome save_in_child(const fs::path& dir, std::uint64_t seed,
                      std::optional<std::string> kill_at = std::nullopt,
                      std::optional<std::chrono::microseconds> kill_after = std::nullopt) {
  // fork() copies only the calling thread: no thread of ours may run then.
  // The baseline is taken at the first call, before the parent ran any
  // engine. ThreadSanitizer's runtime starts a background thread of its own
  // at some point (it stops it around fork itself): one more is allowed there.
  static const std::size_t baseline = thread_count();
  BOOST_TEST_REQUIRE(thread_count() <= baseline + kRuntimeThreads);
  std::cout.flush();  // nothing buffered twice, whatever the child's exit flushes
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  BOOST_TEST_REQUIRE(pid >= 0);
  if (pid == 0) {
    int rc = 0;
    try {
      if (kill_at) ::setenv("RINGCKPT_TEST_KILL_AT", kill_at->c_str(), 1);
      auto m = model_of(kModelBytes, seed);
      SaveOptions o = save_options();
      o.overwrite = true;
      save(m->sd(), dir, o);
    } catch (...) {
      rc = 1;
    }
    ::_exit(rc);
  }
  const auto start = Clock::now();
  bool sent = false;
  int status = 0;
  for (;;) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    BOOST_TEST_REQUIRE(r >= 0);
    if (r == pid) break;
    const auto elapsed = Clock::now() - start;
    if (kill_after && !sent && elapsed >= *kill_after) {
      ::kill(pid, SIGKILL);
      sent = true;
    }
    if (elapsed > 30s) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      BOOST_FAIL("the saving child did not end within 30 s");
    }
    std::this_thread::sleep_for(100us);
  }
  if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) return Outcome::killed;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return Outcome::finished;
  return Outcome::failed;
}

// The seed among `seeds` whose model dir holds byte-exact, after verify
// passed; nullopt (and a failed check) otherwise.
std::optional<std::uint64_t> holds(const fs::path& dir, const std::vector<std::uint64_t>& seeds) {
  const VerifyReport report = verify(dir, small_io());
  BOOST_TEST(report.ok(), "verify failed on " << dir.string() << ": " << faults_text(report));
  if (!report.ok()) return std::nullopt;
  auto into = model_of(kModelBytes, 0);
  into->zero();
  load(into->sd(), dir, load_options());
  const auto got = into->contents();
  for (std::uint64_t s : seeds) {
    if (got == model_of(kModelBytes, s)->contents()) return s;
  }
  BOOST_TEST(false, "the loaded contents are none of the expected saves");
  return std::nullopt;
}

// Every name in dir is metadata.json or a data file it lists: no leftover
// data file, no metadata.json.tmp.
void expect_only_committed(const fs::path& dir) {
  std::set<std::string> want{std::string(kMetadataFile)};
  for (const auto& f : read_metadata(dir).files) want.insert(f.relative_path);
  std::set<std::string> got;
  for (const auto& e : fs::directory_iterator(dir)) got.insert(e.path().filename().string());
  BOOST_TEST((got == want), "files beside the committed checkpoint in " << dir.string());
}

// The next save into a crashed directory commits and cleans up.
void expect_next_save_clean(const fs::path& dir, std::uint64_t seed) {
  BOOST_TEST_REQUIRE((save_in_child(dir, seed) == Outcome::finished));
  BOOST_TEST((holds(dir, {seed}) == std::optional<std::uint64_t>(seed)));
  expect_only_committed(dir);
}

}  // namespace

BOOST_AUTO_TEST_CASE(overwrite_killed_at_each_point_keeps_old_or_new) {
  TempDir root;
  int kills = 0;
  for (const std::string& point : kPoints) {
    BOOST_TEST_CONTEXT("killed at " << point) {
      const fs::path dir = root / point;
      BOOST_TEST_REQUIRE((save_in_child(dir, 1) == Outcome::finished));
      const Outcome o = save_in_child(dir, 2, point);
      BOOST_TEST_REQUIRE((o == Outcome::killed), "the save did not reach " << point);
      ++kills;
      const std::uint64_t want = committed_at(point) ? 2 : 1;
      BOOST_TEST((holds(dir, {1, 2}) == std::optional<std::uint64_t>(want)));
      expect_next_save_clean(dir, 3);
    }
  }
  BOOST_TEST(kills == static_cast<int>(kPoints.size()));
  BOOST_TEST_MESSAGE("overwrite: survived " << kills << " kills at chosen points");
}

BOOST_AUTO_TEST_CASE(fresh_directory_killed_at_each_point_is_no_checkpoint_or_verifies) {
  TempDir root;
  int kills = 0;
  for (const std::string& point : kPoints) {
    BOOST_TEST_CONTEXT("killed at " << point) {
      const fs::path dir = root / point;
      const Outcome o = save_in_child(dir, 2, point);
      if (point == "old-removal") {
        // Nothing older to remove: the point is never reached.
        BOOST_TEST_REQUIRE((o == Outcome::finished));
      } else {
        BOOST_TEST_REQUIRE((o == Outcome::killed), "the save did not reach " << point);
        ++kills;
      }
      if (committed_at(point)) {
        BOOST_TEST((holds(dir, {2}) == std::optional<std::uint64_t>(2)));
      } else {
        BOOST_TEST(!fs::exists(dir / kMetadataFile), "a checkpoint appeared before the rename");
      }
      expect_next_save_clean(dir, 3);
    }
  }
  BOOST_TEST(kills == static_cast<int>(kPoints.size()) - 1);
  BOOST_TEST_MESSAGE("fresh: survived " << kills << " kills at chosen points");
}

BOOST_AUTO_TEST_CASE(kills_at_random_moments_leave_old_or_new) {
  TempDir root;
  const fs::path dir = root / "ckpt";
  // How long an unkilled save takes, child start included: kills land inside it.
  auto t0 = Clock::now();
  BOOST_TEST_REQUIRE((save_in_child(dir, 1) == Outcome::finished));
  const auto duration = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0);
  std::mt19937_64 rng(20261201);
  std::uniform_int_distribution<std::int64_t> delay(0, duration.count() * 2);
  std::uint64_t on_disk = 1;
  int runs = 0, killed = 0, finished = 0, new_after_kill = 0;
  for (std::uint64_t seed = 2; seed < 12; ++seed) {
    BOOST_TEST_CONTEXT("random kill " << runs << ", save of seed " << seed) {
      const Outcome o = save_in_child(dir, seed, std::nullopt, std::chrono::microseconds(delay(rng)));
      BOOST_TEST_REQUIRE((o != Outcome::failed));
      ++runs;
      (o == Outcome::killed ? killed : finished) += 1;
      const auto got = holds(dir, {on_disk, seed});
      BOOST_TEST_REQUIRE(got.has_value());
      if (o == Outcome::finished) BOOST_TEST(*got == seed);
      if (o == Outcome::killed && *got == seed) ++new_after_kill;
      on_disk = *got;
    }
  }
  BOOST_TEST(runs == 10);
  BOOST_TEST(killed + finished == runs);
  BOOST_TEST(killed >= 1, "no random kill landed inside a save");
  BOOST_TEST_MESSAGE("random: " << killed << " of " << runs << " saves killed ("
                                << new_after_kill << " of them already committed), "
                                << finished << " finished (save takes ~" << duration.count()
                                << " us)");
  expect_next_save_clean(dir, 99);
}
