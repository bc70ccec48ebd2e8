// test_crash.cpp — a save killed (SIGKILL) at any step leaves a directory
// that verifies: over an old checkpoint, the old contents until metadata.json's
// rename and the new ones from it on; in a fresh directory, no checkpoint
// before the rename and a verifying one after it, while an earlier checkpoint
// beside it still loads byte-exact. The next save into the directory succeeds
// and leaves only the files its metadata.json lists.
//
// Each save runs in a forked child, armed through RINGCKPT_TEST_KILL_AT
// (lib/io/kill_points.hpp) or killed by the parent at a random moment. The
// saves go through ringckpt::save and through a Checkpointer in each staging
// mode (snapshot, lazy, bounded), with two seeds each: every kill point is
// hit 8 times in each sweep (>= 30 kills per sweep, counted and asserted).
// The parent never saves (the kill point's variable is read once per process
// and forked children inherit what was read) and forks only while it runs no
// other thread; it checks what is on disk.
#define BOOST_TEST_MODULE crash
#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <filesystem>
#include <fstream>
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
const std::vector<std::string> kPoints = {"data-created", "staging",  "data-written",
                                          "data-synced",  "tmp-written", "renamed",
                                          "old-removal"};
bool committed_at(const std::string& point) { return point == "renamed" || point == "old-removal"; }

// How the child saves.
enum class SavePath { save, snapshot, lazy, bounded };
constexpr std::array<SavePath, 4> kPaths = {SavePath::save, SavePath::snapshot, SavePath::lazy,
                                            SavePath::bounded};
const char* path_name(SavePath p) {
  switch (p) {
    case SavePath::save: return "ringckpt::save";
    case SavePath::snapshot: return "Checkpointer snapshot";
    case SavePath::lazy: return "Checkpointer lazy";
    case SavePath::bounded: return "Checkpointer bounded";
  }
  return "?";
}
// Two seeds per path and point: the first save of sweep round r uses these.
constexpr std::array<std::uint64_t, 2> kRoundSeeds = {100, 200};

enum class Outcome { killed, finished, failed };

#if defined(__SANITIZE_THREAD__)
constexpr std::size_t kRuntimeThreads = 1;
#else
constexpr std::size_t kRuntimeThreads = 0;
#endif

// In the child: saves model_of(kModelBytes, seed) into dir through `path`,
// writing one byte to `started` (if >= 0) once the model is built, as the
// save begins. Snapshot and lazy stage into a ring that holds the whole model
// (4 MiB); bounded drains it through a 1 MiB ring.
void child_save(SavePath path, const fs::path& dir, std::uint64_t seed, bool overwrite,
                int started) {
  auto m = model_of(kModelBytes, seed);
  if (started >= 0 && ::write(started, "s", 1) != 1) ::_exit(2);
  if (path == SavePath::save) {
    SaveOptions o = save_options();
    o.overwrite = overwrite;
    save(m->sd(), dir, o);
    return;
  }
  const StagingMode mode = path == SavePath::snapshot ? StagingMode::snapshot
                           : path == SavePath::lazy   ? StagingMode::lazy
                                                      : StagingMode::bounded;
  Checkpointer ckpt(options(mode, mode == StagingMode::bounded ? 1 * MiB : 4 * MiB));
  AsyncSaveOptions o = with_mode(mode);
  o.overwrite = overwrite;
  SaveHandle h = ckpt.async_save(m->sd(), dir, o);
  h.committed.get();
}

// Saves model_of(kModelBytes, seed) into dir through `path` in a forked
// child, armed to kill itself at `kill_at` (if set), or killed by the parent
// `kill_after` (if set) after the save began (the child says so through a
// pipe, once its model is built). Waits at most 30 s for the child. Sets
// *took, if given, to how long the save ran, from its beginning to the exit.
Outcome save_in_child(SavePath path, const fs::path& dir, std::uint64_t seed, bool overwrite,
                      std::optional<std::string> kill_at = std::nullopt,
                      std::optional<std::chrono::microseconds> kill_after = std::nullopt,
                      std::chrono::microseconds* took = nullptr) {
  // fork() copies only the calling thread: no thread of ours may run then.
  // The baseline is taken at the first call, before the parent ran any
  // engine. ThreadSanitizer's runtime starts a background thread of its own
  // at some point (it stops it around fork itself): one more is allowed there.
  static const std::size_t baseline = thread_count();
  BOOST_TEST_REQUIRE(thread_count() <= baseline + kRuntimeThreads);
  std::cout.flush();  // nothing buffered twice, whatever the child's exit flushes
  std::fflush(nullptr);
  int started[2];
  BOOST_TEST_REQUIRE(::pipe2(started, O_CLOEXEC | O_NONBLOCK) == 0);
  const pid_t pid = ::fork();
  BOOST_TEST_REQUIRE(pid >= 0);
  if (pid == 0) {
    int rc = 0;
    try {
      ::close(started[0]);
      if (kill_at) ::setenv("RINGCKPT_TEST_KILL_AT", kill_at->c_str(), 1);
      child_save(path, dir, seed, overwrite, started[1]);
    } catch (...) {
      rc = 1;
    }
    ::_exit(rc);
  }
  ::close(started[1]);
  const auto start = Clock::now();
  std::optional<Clock::time_point> began;  // when the child said the save began
  bool sent = false;
  int status = 0;
  for (;;) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    BOOST_TEST_REQUIRE(r >= 0);
    char byte;
    if (!began && ::read(started[0], &byte, 1) == 1) began = Clock::now();
    if (r == pid) break;
    const auto elapsed = Clock::now() - start;
    if (kill_after && !sent && began && Clock::now() - *began >= *kill_after) {
      ::kill(pid, SIGKILL);
      sent = true;
    }
    if (elapsed > 30s) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      ::close(started[0]);
      BOOST_FAIL("the saving child did not end within 30 s");
    }
    std::this_thread::sleep_for(100us);
  }
  ::close(started[0]);
  if (took && began) {
    *took = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - *began);
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
  BOOST_TEST((listing(dir) == committed_files(dir)),
             "files beside the committed checkpoint in " << dir.string());
}

// The next save into a crashed directory (through `path`, with overwrite
// where a checkpoint is there) commits and removes what the killed one left.
void expect_next_save_clean(SavePath path, const fs::path& dir, std::uint64_t seed) {
  const bool overwrite = fs::exists(dir / kMetadataFile);
  BOOST_TEST_REQUIRE((save_in_child(path, dir, seed, overwrite) == Outcome::finished));
  BOOST_TEST((holds(dir, {seed}) == std::optional<std::uint64_t>(seed)));
  expect_only_committed(dir);
}

// A fresh directory after a killed save: no checkpoint, or one that holds
// `seed`; the earlier checkpoint beside it still loads byte-exact.
void expect_fresh_outcome(const fs::path& dir, std::uint64_t seed, bool must_be_committed,
                          bool may_be_committed, const fs::path& earlier,
                          std::uint64_t earlier_seed) {
  if (fs::exists(dir / kMetadataFile)) {
    BOOST_TEST(may_be_committed, "a checkpoint appeared before the rename");
    BOOST_TEST((holds(dir, {seed}) == std::optional<std::uint64_t>(seed)));
  } else {
    BOOST_TEST(!must_be_committed, "no checkpoint after the rename");
  }
  BOOST_TEST((holds(earlier, {earlier_seed}) == std::optional<std::uint64_t>(earlier_seed)),
             "the earlier checkpoint beside it");
}

// Whether any data file in dir holds a non-zero byte: whether any write
// reached it (a file reserved for O_DIRECT reads as zeros until written).
bool any_data_written(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir)) {
    if (!e.is_regular_file() || e.path().extension() != ".safetensors") continue;
    std::ifstream in(e.path(), std::ios::binary);
    std::vector<char> buf(64 * KiB);
    while (in.read(buf.data(), static_cast<std::streamsize>(buf.size())) || in.gcount() > 0) {
      for (std::streamsize i = 0; i < in.gcount(); ++i) {
        if (buf[static_cast<std::size_t>(i)] != 0) return true;
      }
    }
  }
  return false;
}

// A kill delay drawn uniformly up to 1.2 times how long an unkilled save
// through each path takes (from its beginning to the child's exit), so that
// most land inside the save. The estimate is the shortest save seen: a save
// slowed by a busy machine does not spread the kills past the saves.
class RandomKills {
 public:
  explicit RandomKills(std::uint64_t seed) : rng_(seed) {}
  void timed(SavePath p, std::chrono::microseconds d) {
    auto& known = duration_[static_cast<int>(p)];
    if (known.count() == 0 || d < known) known = d;
  }
  std::chrono::microseconds delay(SavePath p) {
    const auto d = duration_[static_cast<int>(p)].count();
    std::uniform_int_distribution<std::int64_t> within(0, d * 6 / 5);
    return std::chrono::microseconds(within(rng_));
  }
  std::chrono::microseconds duration(SavePath p) const { return duration_[static_cast<int>(p)]; }

 private:
  std::mt19937_64 rng_;
  std::array<std::chrono::microseconds, 4> duration_{};
};

// An unkilled save into dir through p, timed.
std::chrono::microseconds timed_save(SavePath p, const fs::path& dir, std::uint64_t seed,
                                     bool overwrite) {
  std::chrono::microseconds took{};
  BOOST_TEST_REQUIRE((save_in_child(p, dir, seed, overwrite, std::nullopt, std::nullopt, &took) ==
                      Outcome::finished));
  BOOST_TEST_REQUIRE(took.count() > 0);
  return took;
}

}  // namespace

// Overwrite saves into one directory per path and round, killed at each point:
// verify passes after every kill, the old checkpoint is there until the
// rename and the new one from it on; the next save cleans up.
BOOST_AUTO_TEST_CASE(overwrite_killed_at_each_point_keeps_old_or_new) {
  TempDir root;
  int kills = 0;
  for (SavePath path : kPaths) {
    for (std::size_t round = 0; round < kRoundSeeds.size(); ++round) {
      const fs::path dir = root / (std::to_string(static_cast<int>(path)) + "-" +
                                   std::to_string(round));
      std::uint64_t seed = kRoundSeeds[round];
      BOOST_TEST_REQUIRE((save_in_child(path, dir, seed, false) == Outcome::finished));
      for (const std::string& point : kPoints) {
        BOOST_TEST_CONTEXT(path_name(path) << ", round " << round << ", killed at " << point) {
          const std::uint64_t old_seed = seed, new_seed = seed + 1;
          const Outcome o = save_in_child(path, dir, new_seed, true, point);
          BOOST_TEST_REQUIRE((o == Outcome::killed), "the save did not reach " << point);
          ++kills;
          const std::uint64_t want = committed_at(point) ? new_seed : old_seed;
          BOOST_TEST((holds(dir, {old_seed, new_seed}) == std::optional<std::uint64_t>(want)));
          seed = new_seed + 1;
          expect_next_save_clean(path, dir, seed);
        }
      }
    }
  }
  BOOST_TEST(kills == static_cast<int>(kPoints.size() * kPaths.size() * kRoundSeeds.size()));
  BOOST_TEST(kills >= 30);
  BOOST_TEST_MESSAGE("overwrite: survived " << kills << " kills at chosen points");
}

// Fresh saves killed at each point, each into a new directory beside an
// earlier checkpoint: no checkpoint before the rename, a verifying one from
// it on; the earlier one loads byte-exact after every kill.
BOOST_AUTO_TEST_CASE(fresh_directory_killed_at_each_point_is_no_checkpoint_or_verifies) {
  TempDir root;
  const fs::path earlier = root / "earlier";
  constexpr std::uint64_t kEarlierSeed = 7;
  BOOST_TEST_REQUIRE((save_in_child(SavePath::save, earlier, kEarlierSeed, false) ==
                      Outcome::finished));
  int kills = 0;
  for (SavePath path : kPaths) {
    for (std::size_t round = 0; round < kRoundSeeds.size(); ++round) {
      for (const std::string& point : kPoints) {
        BOOST_TEST_CONTEXT(path_name(path) << ", round " << round << ", killed at " << point) {
          const fs::path dir = root / (std::to_string(static_cast<int>(path)) + "-" +
                                       std::to_string(round) + "-" + point);
          const std::uint64_t seed = kRoundSeeds[round] + 50;
          if (point == "old-removal") {
            // Nothing older to remove: the point is never reached (checked
            // once per path).
            if (round == 0) {
              BOOST_TEST_REQUIRE((save_in_child(path, dir, seed, false, point) ==
                                  Outcome::finished));
              expect_fresh_outcome(dir, seed, true, true, earlier, kEarlierSeed);
            }
            continue;
          }
          const Outcome o = save_in_child(path, dir, seed, false, point);
          BOOST_TEST_REQUIRE((o == Outcome::killed), "the save did not reach " << point);
          ++kills;
          if (point == "data-created" || point == "staging") {
            BOOST_TEST(!any_data_written(dir), "a write was submitted before " << point);
          } else if (point == "data-written") {
            BOOST_TEST(any_data_written(dir), "no extent written at " << point);
          }
          expect_fresh_outcome(dir, seed, committed_at(point), committed_at(point), earlier,
                               kEarlierSeed);
          expect_next_save_clean(path, dir, seed + 1);
        }
      }
    }
  }
  BOOST_TEST(kills == static_cast<int>((kPoints.size() - 1) * kPaths.size() * kRoundSeeds.size()));
  BOOST_TEST(kills >= 30);
  BOOST_TEST_MESSAGE("fresh: survived " << kills << " kills at chosen points");
}

// Kills at random moments of overwrite saves into one directory, cycling
// through the save paths: old or new, verifying, after each.
BOOST_AUTO_TEST_CASE(overwrite_kills_at_random_moments_leave_old_or_new) {
  TempDir root;
  const fs::path dir = root / "ckpt";
  RandomKills random(20261201);
  std::uint64_t on_disk = 1;
  for (SavePath p : kPaths) {
    random.timed(p, timed_save(p, dir, on_disk + 1, fs::exists(dir / kMetadataFile)));
    on_disk += 1;
  }
  int runs = 0, killed = 0, finished = 0, new_after_kill = 0;
  for (std::uint64_t seed = 10; seed < 26; ++seed) {
    const SavePath p = kPaths[seed % kPaths.size()];
    BOOST_TEST_CONTEXT("random kill " << runs << " (" << path_name(p) << "), save of seed "
                                      << seed) {
      std::chrono::microseconds took{};
      const Outcome o = save_in_child(p, dir, seed, true, std::nullopt, random.delay(p), &took);
      if (o == Outcome::finished) random.timed(p, took);
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
  BOOST_TEST(runs == 16);
  BOOST_TEST(killed + finished == runs);
  BOOST_TEST(killed >= 1, "no random kill landed inside a save");
  BOOST_TEST_MESSAGE("overwrite random: survived " << killed << " of " << runs << " saves killed ("
                     << new_after_kill << " of them already committed), " << finished
                     << " finished (an unkilled save takes ~"
                     << random.duration(SavePath::save).count() << " us through ringckpt::save)");
  expect_next_save_clean(SavePath::lazy, dir, 99);
}

// Kills at random moments of fresh saves, each into a new directory beside
// an earlier checkpoint: no checkpoint or one that verifies; the earlier one
// still loads byte-exact; the next save into the directory cleans up.
BOOST_AUTO_TEST_CASE(fresh_kills_at_random_moments_leave_no_checkpoint_or_one_that_verifies) {
  TempDir root;
  const fs::path earlier = root / "earlier";
  constexpr std::uint64_t kEarlierSeed = 8;
  RandomKills random(20261202);
  for (SavePath p : kPaths) {
    const fs::path dir = root / ("timed-" + std::to_string(static_cast<int>(p)));
    random.timed(p, timed_save(p, dir, kEarlierSeed, false));
  }
  fs::rename(root / "timed-0", earlier);
  int runs = 0, killed = 0, finished = 0, committed_after_kill = 0;
  for (std::uint64_t seed = 30; seed < 46; ++seed) {
    const SavePath p = kPaths[seed % kPaths.size()];
    BOOST_TEST_CONTEXT("random kill " << runs << " (" << path_name(p) << "), save of seed "
                                      << seed) {
      const fs::path dir = root / ("fresh-" + std::to_string(seed));
      std::chrono::microseconds took{};
      const Outcome o = save_in_child(p, dir, seed, false, std::nullopt, random.delay(p), &took);
      if (o == Outcome::finished) random.timed(p, took);
      BOOST_TEST_REQUIRE((o != Outcome::failed));
      ++runs;
      (o == Outcome::killed ? killed : finished) += 1;
      if (o == Outcome::killed && fs::exists(dir / kMetadataFile)) ++committed_after_kill;
      expect_fresh_outcome(dir, seed, o == Outcome::finished, true, earlier, kEarlierSeed);
      if (o == Outcome::killed && fs::exists(dir)) expect_next_save_clean(p, dir, seed + 100);
    }
  }
  BOOST_TEST(runs == 16);
  BOOST_TEST(killed + finished == runs);
  BOOST_TEST(killed >= 1, "no random kill landed inside a save");
  BOOST_TEST_MESSAGE("fresh random: survived " << killed << " of " << runs << " saves killed ("
                     << committed_after_kill << " of them already committed), " << finished
                     << " finished");
}
