// test/test_checkpointer_ranks.cpp — the Checkpointer on N ranks (threads of
// one process, through ThreadGroup): async saves of sharded and replicated
// tensors loaded back by other world sizes, plan caching, and failures that
// reach every rank.
#define BOOST_TEST_MODULE checkpointer_ranks
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <functional>
#include <stdexcept>
#include <thread>

#include "ringckpt/ringckpt.hpp"
#include "sharded_model.hpp"
#include "test_util.hpp"

using namespace ringckpt;
using namespace ringckpt::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

// Boost.Test's assertions are not thread-safe: a rank thread reports what
// it finds wrong by throwing, and on_ranks asserts on the main thread.
void require(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error(what);
}

// Runs body(rank, coordinator) on `world` threads of one ThreadGroup and
// joins them; an exception a rank lets escape fails the test.
void on_ranks(int world, const std::function<void(int, Coordinator&)>& body,
              std::chrono::milliseconds timeout = 60s) {
  ThreadGroup group(world, timeout);
  std::vector<std::thread> ranks;
  std::vector<std::string> escaped(static_cast<std::size_t>(world));
  for (int r = 0; r < world; ++r) {
    ranks.emplace_back([&, r] {
      try {
        body(r, group.member(r));
      } catch (const std::exception& e) {
        escaped[static_cast<std::size_t>(r)] = e.what();
      }
    });
  }
  for (auto& t : ranks) t.join();
  for (int r = 0; r < world; ++r) {
    BOOST_TEST_INFO("rank " << r);
    BOOST_TEST(escaped[static_cast<std::size_t>(r)] == "");
  }
}

// Saves the model (seed) from `world` ranks, each through its own Checkpointer.
void save_from(int world, const fs::path& dir, std::uint64_t seed, StagingMode mode,
               bool overwrite = false) {
  on_ranks(world, [&](int rank, Coordinator& c) {
    Checkpointer ckpt(options(mode), c);
    RankShards part(rank, world, seed, false);
    AsyncSaveOptions o = with_mode(mode);
    o.overwrite = overwrite;
    SaveHandle h = ckpt.async_save(part.sd(), dir, o);
    h.committed.get();
  });
}

// Loads dir by `world` ranks and checks every byte each rank got.
void check_load_by(int world, const fs::path& dir, std::uint64_t seed, std::int64_t grow = 1) {
  on_ranks(world, [&](int rank, Coordinator& c) {
    Checkpointer ckpt(options(), c);
    RankShards part(rank, world, seed, true, grow);
    ckpt.load(part.sd(), dir);
    require(part.mismatch().empty(), part.mismatch());
  });
}

}  // namespace

BOOST_AUTO_TEST_CASE(three_ranks_save_loaded_by_one_two_and_four) {
  for (StagingMode mode : {StagingMode::lazy, StagingMode::bounded, StagingMode::snapshot}) {
    BOOST_TEST_CONTEXT("mode " << mode_name(mode)) {
      TempDir dir;
      save_from(3, dir.path(), 11, mode);
      BOOST_TEST(verify_dir(dir.path()).ok());
      check_load_by(1, dir.path(), 11);
      check_load_by(2, dir.path(), 11);
      check_load_by(4, dir.path(), 11);
      // A plain load in one process, whole tensors.
      RankShards whole(0, 1, 11, true);
      load(whole.sd(), dir.path(), load_options());
      BOOST_TEST(whole.mismatch() == "");
      // The replicated tensor and blob were written once.
      const Metadata md = read_metadata(dir.path());
      const auto& embed =
          std::get<TensorStorageMetadata>(md.state_dict_metadata.at("model.embed.weight"));
      BOOST_TEST(embed.chunks.size() == 1u);
    }
  }
}

BOOST_AUTO_TEST_CASE(save_returns_the_committed_metadata_on_every_rank) {
  TempDir dir;
  std::vector<Metadata> got(3);
  on_ranks(3, [&](int rank, Coordinator& c) {
    Checkpointer ckpt(options(), c);
    RankShards part(rank, 3, 5, false);
    got[static_cast<std::size_t>(rank)] = ckpt.save(part.sd(), dir.path());
  });
  const Metadata on_disk = read_metadata(dir.path());
  for (int r = 0; r < 3; ++r) {
    BOOST_TEST_INFO("rank " << r);
    BOOST_TEST((got[static_cast<std::size_t>(r)].files == on_disk.files));
    BOOST_TEST(got[static_cast<std::size_t>(r)].state_dict_metadata.size() ==
               on_disk.state_dict_metadata.size());
  }
}

BOOST_AUTO_TEST_CASE(second_save_reuses_the_plan_and_a_changed_shape_replans) {
  TempDir root;
  std::vector<PlanCacheReport> after_two(3), after_three(3), after_four(3);
  on_ranks(3, [&](int rank, Coordinator& c) {
    Checkpointer ckpt(options(), c);
    const auto r = static_cast<std::size_t>(rank);
    {
      RankShards part(rank, 3, 1, false);
      ckpt.async_save(part.sd(), root.path() / "a").committed.get();
      ckpt.async_save(part.sd(), root.path() / "b").committed.get();
      after_two[r] = ckpt.plan_cache();
    }
    {
      RankShards grown(rank, 3, 2, false, 2);  // every shape changes
      ckpt.async_save(grown.sd(), root.path() / "c").committed.get();
      after_three[r] = ckpt.plan_cache();
      ckpt.async_save(grown.sd(), root.path() / "d").committed.get();
      after_four[r] = ckpt.plan_cache();
    }
  });
  for (std::size_t r = 0; r < 3; ++r) {
    BOOST_TEST_INFO("rank " << r);
    BOOST_TEST(after_two[r].cold == 1u);
    BOOST_TEST(after_two[r].cached == 1u);
    BOOST_TEST(after_three[r].cold == 2u);
    BOOST_TEST(after_four[r].cached == 2u);
  }
  // Cached or not, each checkpoint loads back whole elsewhere.
  check_load_by(2, root.path() / "b", 1);
  check_load_by(2, root.path() / "d", 2, 2);
}

BOOST_AUTO_TEST_CASE(a_custom_planner_on_one_rank_keeps_the_caches_in_step) {
  // A save with a planner of its own on one rank is planned cold (rank 2's
  // sends its plan in full; rank 0's makes the global plan, and it is not
  // kept for reuse); the saves around it succeed and are cached again.
  TempDir root;
  std::vector<std::vector<PlanCacheReport>> reports(3);
  on_ranks(3, [&](int rank, Coordinator& c) {
    Checkpointer ckpt(options(), c);
    RankShards part(rank, 3, 9, false);
    DefaultSavePlanner own;  // a planner of the caller's: never cached
    auto& mine = reports[static_cast<std::size_t>(rank)];
    for (int save = 0; save < 7; ++save) {
      AsyncSaveOptions o;
      if ((save == 1 && rank == 2) || (save == 4 && rank == 0)) o.planner = &own;
      ckpt.async_save(part.sd(), root.path() / std::to_string(save), o).committed.get();
      mine.push_back(ckpt.plan_cache());
    }
  });
  for (std::size_t r = 0; r < 3; ++r) {
    BOOST_TEST_INFO("rank " << r);
    BOOST_TEST_REQUIRE(reports[r].size() == 7u);
    // Cold: 0, 1 (rank 2's own planner), 4 (rank 0's), 5 (nothing reusable
    // kept by 4); cached: 2, 3, 6.
    BOOST_TEST(reports[r][1].cold == 2u);
    BOOST_TEST(reports[r][3].cached == 2u);
    BOOST_TEST(reports[r][5].cold == 4u);
    BOOST_TEST(reports[r][6].cached == 3u);
  }
  for (int save = 0; save < 7; ++save) check_load_by(2, root.path() / std::to_string(save), 9);
}

// A planner that throws while rank `bad` stages its data: mid-save.
class ThrowingPlanner : public DefaultSavePlanner {
 public:
  ItemData resolve_data(const WriteItem& item) override {
    throw Error(ErrorCode::kIo, item.index.fqn, "injected failure while staging");
  }
};

BOOST_AUTO_TEST_CASE(one_rank_throwing_mid_save_fails_every_rank) {
  TempDir dir;
  std::vector<std::string> errors(3);
  on_ranks(3, [&](int rank, Coordinator& c) {
    Checkpointer ckpt(options(), c);
    RankShards part(rank, 3, 3, false);
    ThrowingPlanner throwing;
    AsyncSaveOptions o;
    if (rank == 1) o.planner = &throwing;
    SaveHandle h = ckpt.async_save(part.sd(), dir.path(), o);
    try {
      h.committed.get();
    } catch (const Error& e) {
      errors[static_cast<std::size_t>(rank)] = e.what();
    }
  });
  for (const auto& e : errors) {
    BOOST_TEST_INFO(e);
    BOOST_TEST(contains(e, "injected failure while staging"));
    BOOST_TEST(contains(e, "rank 1"));
  }
  BOOST_TEST(checkpoint_files(dir.path()).empty());
}

// A planner whose staging waits until `open`: a save held mid-job.
class GatePlanner : public DefaultSavePlanner {
 public:
  explicit GatePlanner(const std::atomic<bool>& open) : open_(open) {}
  ItemData resolve_data(const WriteItem& item) override {
    while (!open_) std::this_thread::sleep_for(1ms);
    return DefaultSavePlanner::resolve_data(item);
  }

 private:
  const std::atomic<bool>& open_;
};

BOOST_AUTO_TEST_CASE(a_cancel_on_one_rank_fails_every_rank_and_keeps_the_old_checkpoint) {
  TempDir dir;
  save_from(3, dir.path(), 7, StagingMode::lazy);
  std::vector<std::string> errors(3);
  on_ranks(3, [&](int rank, Coordinator& c) {
    Checkpointer ckpt(options(), c);
    RankShards part(rank, 3, 8, false);
    std::atomic<bool> open{false};
    GatePlanner gate(open);
    AsyncSaveOptions o;
    o.overwrite = true;
    if (rank == 2) o.planner = &gate;  // held until cancelled
    SaveHandle h = ckpt.async_save(part.sd(), dir.path(), o);
    if (rank == 2) {
      h.cancel();
      open = true;
    }
    try {
      h.committed.get();
    } catch (const Error& e) {
      errors[static_cast<std::size_t>(rank)] = e.what();
    }
  });
  // The cancel may come after rank 2's part is written, never after the commit.
  for (const auto& e : errors) {
    BOOST_TEST_INFO(e);
    BOOST_TEST(contains(e, "cancel"));
    BOOST_TEST(contains(e, "rank 2"));
  }
  check_load_by(1, dir.path(), 7);
}

BOOST_AUTO_TEST_CASE(saves_and_loads_in_flight_together_keep_their_order) {
  TempDir root;
  save_from(2, root.path() / "old", 21, StagingMode::lazy);
  on_ranks(2, [&](int rank, Coordinator& c) {
    Checkpointer ckpt(options(), c);
    RankShards a(rank, 2, 22, false), b(rank, 2, 23, false);
    RankShards old_part(rank, 2, 21, true);
    std::promise<std::exception_ptr> loaded;
    SaveHandle h1 = ckpt.async_save(a.sd(), root.path() / "a");
    ckpt.async_load(old_part.sd(), root.path() / "old", nullptr,
                    [&](std::exception_ptr e) { loaded.set_value(e); });
    SaveHandle h2 = ckpt.async_save(b.sd(), root.path() / "b");
    h1.committed.get();
    h2.committed.get();
    require(!loaded.get_future().get(), "the load failed");
    require(old_part.mismatch().empty(), old_part.mismatch());
  });
  check_load_by(3, root.path() / "a", 22);
  check_load_by(3, root.path() / "b", 23);
}

BOOST_AUTO_TEST_CASE(a_rank_that_never_comes_fails_the_others_within_the_timeout) {
  TempDir dir;
  std::vector<std::string> errors(3);
  const auto started = std::chrono::steady_clock::now();
  ThreadGroup group(3, 2s);
  std::vector<std::thread> ranks;
  // Rank 2 "dies" before it constructs its Checkpointer: the others' construction fails.
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      try {
        Checkpointer ckpt(options(), group.member(r));
      } catch (const Error& e) {
        errors[static_cast<std::size_t>(r)] = e.what();
      }
    });
  }
  for (auto& t : ranks) t.join();
  BOOST_TEST((std::chrono::steady_clock::now() - started < 30s));
  for (int r = 0; r < 2; ++r) {
    BOOST_TEST_INFO(errors[static_cast<std::size_t>(r)]);
    BOOST_TEST(contains(errors[static_cast<std::size_t>(r)], "rank 2 did not reach"));
  }
}

BOOST_AUTO_TEST_CASE(a_rank_dying_mid_save_fails_the_others_within_the_timeout) {
  TempDir dir;
  std::vector<std::string> errors(3);
  const auto started = std::chrono::steady_clock::now();
  ThreadGroup group(3, 2s);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 3; ++r) {
    ranks.emplace_back([&, r] {
      Checkpointer ckpt(options(), group.member(r));
      if (r == 1) return;  // dies: its Checkpointer goes before any save
      RankShards part(r, 3, 4, false);
      try {
        ckpt.async_save(part.sd(), dir.path()).committed.get();
      } catch (const Error& e) {
        errors[static_cast<std::size_t>(r)] = e.what();
      }
    });
  }
  for (auto& t : ranks) t.join();
  BOOST_TEST((std::chrono::steady_clock::now() - started < 30s));
  for (int r : {0, 2}) {
    BOOST_TEST_INFO(errors[static_cast<std::size_t>(r)]);
    BOOST_TEST(contains(errors[static_cast<std::size_t>(r)], "rank 1 did not reach"));
  }
  BOOST_TEST(checkpoint_files(dir.path()).empty());
}
