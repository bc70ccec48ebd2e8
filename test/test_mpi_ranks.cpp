// test/test_mpi_ranks.cpp — the Checkpointer on MPI ranks. Each case is one
// step of test/mpi_ranks.sh, which runs it under mpirun with the world size
// it needs and a directory shared by the steps:
//
//   mpirun -n N test_mpi_ranks --run_test=CASE -- DIR
//
// Every rank runs the case; the ranks agree on nothing but DIR and MPI.
#define BOOST_TEST_MODULE mpi_ranks
#include <boost/test/unit_test.hpp>

#include <csignal>
#include <cstdlib>
#include <filesystem>

#include "ringckpt/mpi.hpp"
#include "ringckpt/ringckpt.hpp"
#include "sharded_model.hpp"
#include "test_util.hpp"

using namespace ringckpt;
using namespace ringckpt::test;
namespace fs = std::filesystem;

namespace {

// MPI at MPI_THREAD_MULTIPLE, or at MPI_THREAD_FUNNELED when
// RINGCKPT_TEST_MPI_FUNNELED is set (the refusal case).
struct MpiSession {
  MpiSession() {
    const int level =
        std::getenv("RINGCKPT_TEST_MPI_FUNNELED") ? MPI_THREAD_FUNNELED : MPI_THREAD_MULTIPLE;
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, level, &provided);
  }
  ~MpiSession() { MPI_Finalize(); }
};
BOOST_TEST_GLOBAL_FIXTURE(MpiSession);

// DIR, the directory the steps share (after `--`).
fs::path shared_dir() {
  const auto& suite = boost::unit_test::framework::master_test_suite();
  BOOST_TEST_REQUIRE(suite.argc >= 2);
  return suite.argv[suite.argc - 1];
}

// The model's seed for a checkpoint directory of the steps.
constexpr std::uint64_t kSeed = 31;

void save_step(const fs::path& dir, std::uint64_t seed) {
  MpiCoordinator world;
  Checkpointer ckpt(options(), world);
  RankShards part(world.rank(), world.world_size(), seed, false);
  SaveHandle h = ckpt.async_save(part.sd(), dir);
  h.committed.get();
}

// A planner that fails (or kills its process) while this rank stages data.
class FailingPlanner : public DefaultSavePlanner {
 public:
  explicit FailingPlanner(bool kill) : kill_(kill) {}
  ItemData resolve_data(const WriteItem& item) override {
    if (kill_) std::raise(SIGKILL);
    throw Error(ErrorCode::kIo, item.index.fqn, "injected failure while staging");
  }

 private:
  bool kill_;
};

}  // namespace

// mpirun -n 3: one checkpoint from three ranks.
BOOST_AUTO_TEST_CASE(save_by_three) { save_step(shared_dir() / "model", kSeed); }

// Any world size: each rank loads its own part and checks every byte.
BOOST_AUTO_TEST_CASE(load_own_part) {
  MpiCoordinator world;
  Checkpointer ckpt(options(), world);
  RankShards part(world.rank(), world.world_size(), kSeed, true);
  ckpt.load(part.sd(), shared_dir() / "model");
  BOOST_TEST(part.mismatch() == "");
}

// One process, no coordinator: whole tensors.
BOOST_AUTO_TEST_CASE(load_whole) {
  RankShards whole(0, 1, kSeed, true);
  ringckpt::load(whole.sd(), shared_dir() / "model", load_options());
  BOOST_TEST(whole.mismatch() == "");
}

// The second save reuses the plan; a changed shape plans again.
BOOST_AUTO_TEST_CASE(plan_caching) {
  MpiCoordinator world;
  Checkpointer ckpt(options(), world);
  RankShards part(world.rank(), world.world_size(), 1, false);
  ckpt.async_save(part.sd(), shared_dir() / "cache-a").committed.get();
  ckpt.async_save(part.sd(), shared_dir() / "cache-b").committed.get();
  BOOST_TEST(ckpt.plan_cache().cold == 1u);
  BOOST_TEST(ckpt.plan_cache().cached == 1u);
  RankShards grown(world.rank(), world.world_size(), 2, false, 2);
  const Metadata md = ckpt.save(grown.sd(), shared_dir() / "cache-c");
  BOOST_TEST(ckpt.plan_cache().cold == 2u);
  BOOST_TEST(md.files.size() >= static_cast<std::size_t>(world.world_size()));
  // What the cached save wrote loads back byte-exact.
  RankShards back(world.rank(), world.world_size(), 1, true);
  ckpt.load(back.sd(), shared_dir() / "cache-b");
  BOOST_TEST(back.mismatch() == "");
}

// Rank 1 throws while staging: every rank's save fails, naming rank 1.
BOOST_AUTO_TEST_CASE(one_rank_throws) {
  MpiCoordinator world;
  Checkpointer ckpt(options(), world);
  RankShards part(world.rank(), world.world_size(), 3, false);
  FailingPlanner failing(false);
  AsyncSaveOptions o;
  if (world.rank() == 1) o.planner = &failing;
  SaveHandle h = ckpt.async_save(part.sd(), shared_dir() / "failed", o);
  const auto e = error_of([&] { h.committed.get(); });
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST(contains(e->what(), "injected failure while staging"));
  BOOST_TEST(contains(e->what(), "rank 1"));
  MPI_Barrier(MPI_COMM_WORLD);
  BOOST_TEST(checkpoint_files(shared_dir() / "failed").empty());
}

// Rank 1 dies while staging: mpirun must end the job (mpi_ranks.sh checks
// that it exits non-zero within its time limit).
BOOST_AUTO_TEST_CASE(one_rank_dies) {
  MpiCoordinator world;
  Checkpointer ckpt(options(), world);
  RankShards part(world.rank(), world.world_size(), 4, false);
  FailingPlanner killing(true);
  AsyncSaveOptions o;
  if (world.rank() == 1) o.planner = &killing;
  SaveHandle h = ckpt.async_save(part.sd(), shared_dir() / "died", o);
  h.committed.wait();
  BOOST_ERROR("the save of a job with a dead rank came back");
}

// Without MPI_THREAD_MULTIPLE a Checkpointer refuses, with a clear Error.
// (Run with RINGCKPT_TEST_MPI_FUNNELED set.)
BOOST_AUTO_TEST_CASE(needs_thread_multiple) {
  int provided = 0;
  MPI_Query_thread(&provided);
  BOOST_TEST_REQUIRE(provided != MPI_THREAD_MULTIPLE);
  MpiCoordinator world;
  const auto e = error_of([&] { Checkpointer ckpt(options(), world); });
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST(contains(e->what(), "MPI_THREAD_MULTIPLE"));
}
