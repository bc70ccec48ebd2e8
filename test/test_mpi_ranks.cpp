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
#include <cstring>
#include <set>
#include <tuple>
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

// ---------------------------------------------------------------------------
// DCP's example planners and cross-dtype loads, on every rank.

namespace {

constexpr std::int64_t kRows = 12, kCols = 8;

// Element (r, c) of the global "w": a quarter, exact in F16 and BF16.
double w_at(std::int64_t r, std::int64_t c) { return static_cast<double>(r * kCols + c) / 4; }

// This rank's rows of "w" as T, and a replicated "bias", in a state dict.
template <typename T>
struct Rows {
  std::int64_t begin = 0, end = 0;
  std::vector<T> w, bias;
  StateDict sd;
  Rows(int rank, int world, DType dtype, bool blank) {
    std::tie(begin, end) = part(kRows, rank, world);
    for (std::int64_t r = begin; r < end; ++r) {
      for (std::int64_t c = 0; c < kCols; ++c) w.push_back(blank ? T{} : static_cast<T>(w_at(r, c)));
    }
    for (std::int64_t c = 0; c < kCols; ++c) bias.push_back(blank ? T{} : static_cast<T>(c) / 2);
    sd.add("w", ShardedTensor{dtype, {kRows, kCols},
                              {{TensorView{w.data(), dtype, {end - begin, kCols}}, {begin, 0}}}});
    sd.add("bias", TensorView{bias.data(), dtype, {kCols}});
  }
  bool holds_model() const {
    for (std::int64_t r = begin; r < end; ++r) {
      for (std::int64_t c = 0; c < kCols; ++c) {
        if (static_cast<double>(w[static_cast<std::size_t>((r - begin) * kCols + c)]) != w_at(r, c)) {
          return false;
        }
      }
    }
    for (std::int64_t c = 0; c < kCols; ++c) {
      if (static_cast<double>(bias[static_cast<std::size_t>(c)]) != static_cast<double>(c) / 2) {
        return false;
      }
    }
    return true;
  }
};

}  // namespace

BOOST_AUTO_TEST_CASE(example_planners) {
  MpiCoordinator world;
  const int rank = world.rank(), n = world.world_size();
  Checkpointer ckpt(options(), world);
  const fs::path dir = shared_dir() / "planners";
  Rows<float> model(rank, n, DType::F32, false);
  {  // RenamePlanner: saved under a prefix, loaded back under the original names.
    RenameSavePlanner save_planner("ema.");
    const Metadata md = ckpt.save(model.sd, dir / "rename", {.planner = &save_planner});
    BOOST_TEST(md.state_dict_metadata.count("ema.w") == 1u);
    Rows<float> back(rank, n, DType::F32, true);
    RenameLoadPlanner load_planner("ema.");
    ckpt.load(back.sd, dir / "rename", &load_planner);
    BOOST_TEST(back.holds_model());
  }
  for (DType stored : {DType::F16, DType::BF16}) {  // FP16Planner: stored narrow, loaded as F32
    BOOST_TEST_CONTEXT("stored as " << dtype_name(stored)) {
      FP16Planner save_planner(stored);
      const fs::path at = dir / ("fp16-" + std::string(dtype_name(stored)));
      const Metadata md = ckpt.save(model.sd, at, {.planner = &save_planner});
      BOOST_TEST((std::get<TensorStorageMetadata>(md.state_dict_metadata.at("w")).properties.dtype ==
                  stored));
      Rows<float> back(rank, n, DType::F32, true);
      ckpt.load(back.sd, at);
      BOOST_TEST(back.holds_model());
    }
  }
  {  // LoadBalancingPlanner: every rank holds everything; the writes are spread.
    std::vector<float> whole;
    for (std::int64_t r = 0; r < kRows; ++r) {
      for (std::int64_t c = 0; c < kCols; ++c) whole.push_back(static_cast<float>(w_at(r, c)));
    }
    StateDict all;
    all.add("w", TensorView{whole.data(), DType::F32, {kRows, kCols}});
    all.add("bias", TensorView{model.bias.data(), DType::F32, {kCols}});
    LoadBalancingPlanner save_planner;
    const Metadata md = ckpt.save(all, dir / "balanced", {.planner = &save_planner});
    std::set<std::string> writers;  // the ranks ("__r") whose files hold items
    for (const auto& [index, where] : md.storage_data) {
      writers.insert(where.relative_path.substr(0, where.relative_path.find('_', 2)));
    }
    BOOST_TEST(writers.size() == std::min<std::size_t>(2, static_cast<std::size_t>(n)));
    Rows<float> back(rank, n, DType::F32, true);
    ckpt.load(back.sd, dir / "balanced");
    BOOST_TEST(back.holds_model());
  }
  {  // SaveExtraDataPlanner: each rank's bytes in planner_data, read back by all.
    SaveExtraDataPlanner save_planner(rank, {{"rank", std::to_string(rank)}});
    const Metadata md = ckpt.save(model.sd, dir / "extra", {.planner = &save_planner});
    for (int q = 0; q < n; ++q) {
      BOOST_TEST(SaveExtraDataPlanner::rank_data(md, q).at("rank") == std::to_string(q));
    }
  }
  {  // MetaModelMaterialize: destinations allocated while loading.
    std::vector<std::vector<std::byte>> owned;
    MetaModelMaterialize load_planner([&](const std::string&, DType dtype, const Shape& shape) {
      owned.emplace_back(static_cast<std::size_t>(numel(shape)) * dtype_size(dtype));
      return static_cast<void*>(owned.back().data());
    });
    StateDict meta;  // empty: the planner makes every entry the checkpoint holds
    ckpt.load(meta, dir / "balanced", &load_planner);
    BOOST_TEST(load_planner.allocations() == 2u);  // w and bias
    const auto* w = std::get_if<TensorView>(meta.find("w"));
    BOOST_TEST_REQUIRE(w != nullptr);
    BOOST_TEST_REQUIRE(w->data != nullptr);
    BOOST_TEST_REQUIRE(w->numel() == kRows * kCols);
    const auto* values = static_cast<const float*>(w->data);
    bool same = true;
    for (std::int64_t i = 0; i < kRows * kCols; ++i) {
      same = same && values[i] == static_cast<float>(w_at(i / kCols, i % kCols));
    }
    BOOST_TEST(same);
  }
}

BOOST_AUTO_TEST_CASE(dtype_casts) {
  MpiCoordinator world;
  const int rank = world.rank(), n = world.world_size();
  Checkpointer ckpt(options(), world);
  const fs::path dir = shared_dir() / "casts";
  {  // F32 saved, loaded as F64 (widening) and refused under strict_dtype
    Rows<float> narrow(rank, n, DType::F32, false);
    ckpt.save(narrow.sd, dir / "f32");
    Rows<double> wide(rank, n, DType::F64, true);
    ckpt.load(wide.sd, dir / "f32");
    BOOST_TEST(wide.holds_model());
    Rows<double> strict(rank, n, DType::F64, true);
    DefaultLoadPlanner refusing({.allow_partial_load = false, .strict_dtype = true});
    const auto e = error_of([&] { ckpt.load(strict.sd, dir / "f32", &refusing); });
    BOOST_TEST_REQUIRE(e.has_value());
    BOOST_TEST((e->code() == ErrorCode::kMismatch), e->what());
    BOOST_TEST((contains(e->what(), "bias") || contains(e->what(), "w")), e->what());
  }
  {  // F64 saved, loaded as F32 (narrowing)
    Rows<double> wide(rank, n, DType::F64, false);
    ckpt.save(wide.sd, dir / "f64");
    Rows<float> narrow(rank, n, DType::F32, true);
    ckpt.load(narrow.sd, dir / "f64");
    BOOST_TEST(narrow.holds_model());
  }
}
