// Run as: mpirun -n 2 test_mpi. Each rank runs the same cases in the same
// order; ranks agree on a scratch directory through MPI_Bcast.
#define BOOST_TEST_MODULE mpi
#include <boost/test/unit_test.hpp>

#include <cstring>

#include "ringckpt/mpi.hpp"
#include "ringckpt/ringckpt.hpp"
#include "test_util.hpp"

using namespace ringckpt;
using ringckpt::test::OwnedTensor;

namespace {

struct MpiSession {
  MpiSession() { MPI_Init(nullptr, nullptr); }
  ~MpiSession() { MPI_Finalize(); }
};
BOOST_TEST_GLOBAL_FIXTURE(MpiSession);

// A directory every rank names alike; rank 0 makes and removes it.
struct SharedDir {
  std::filesystem::path path;
  std::unique_ptr<ringckpt::test::TempDir> owner;
  explicit SharedDir(MpiCoordinator& c) {
    std::string name;
    if (c.rank() == 0) {
      owner = std::make_unique<ringckpt::test::TempDir>("/var/tmp");
      name = owner->path().string();
    }
    path = c.broadcast(name);
  }
  ~SharedDir() { MPI_Barrier(MPI_COMM_WORLD); }
};

constexpr std::int64_t kRows = 24, kCols = 10;

// Row r of the global tensor holds bytes derived from r and the column.
std::vector<float> global_rows(std::int64_t r0, std::int64_t rows) {
  std::vector<float> v;
  for (std::int64_t r = r0; r < r0 + rows; ++r)
    for (std::int64_t c = 0; c < kCols; ++c) v.push_back(static_cast<float>(r * 1000 + c));
  return v;
}

}  // namespace

BOOST_AUTO_TEST_CASE(ranks_save_shards_and_reshard_on_load) {
  MpiCoordinator mpi;
  BOOST_TEST_REQUIRE(mpi.world_size() >= 2);
  SharedDir dir(mpi);
  const std::int64_t rows = kRows / mpi.world_size();
  std::vector<float> mine = global_rows(mpi.rank() * rows, rows);
  OwnedTensor bias(DType::F32, {kCols}, 77);  // the same on every rank: replicated
  {
    StateDict sd;
    sd.add("w", ShardedTensor{DType::F32, {kRows, kCols},
                              {{TensorView{mine.data(), DType::F32, {rows, kCols}},
                                {mpi.rank() * rows, 0}}}});
    sd.add("bias", bias.view);
    SaveOptions o;
    o.io = ringckpt::test::small_io();
    o.coordinator = &mpi;
    save(sd, dir.path, o);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  Metadata md = read_metadata(dir.path);
  BOOST_TEST(std::get<TensorStorageMetadata>(md.state_dict_metadata.at("w")).chunks.size() ==
             static_cast<std::size_t>(mpi.world_size()));
  BOOST_TEST(verify(dir.path, ringckpt::test::small_io()).ok());

  // Load as column shards: rank r takes columns [r * k, (r + 1) * k).
  const std::int64_t cols = kCols / mpi.world_size();
  std::vector<float> got(static_cast<std::size_t>(kRows * cols), -1.0f);
  OwnedTensor bias_back = bias.blank_like();
  {
    StateDict sd;
    sd.add("w", ShardedTensor{DType::F32, {kRows, kCols},
                              {{TensorView{got.data(), DType::F32, {kRows, cols}},
                                {0, mpi.rank() * cols}}}});
    sd.add("bias", bias_back.view);
    LoadOptions o;
    o.io = ringckpt::test::small_io();
    o.coordinator = &mpi;
    load(sd, dir.path, o);
  }
  bool exact = true;
  for (std::int64_t r = 0; r < kRows; ++r)
    for (std::int64_t c = 0; c < cols; ++c)
      exact &= got[r * cols + c] == static_cast<float>(r * 1000 + mpi.rank() * cols + c);
  BOOST_TEST(exact);
  BOOST_TEST((bias_back.storage == bias.storage));
}

BOOST_AUTO_TEST_CASE(a_fault_on_one_rank_fails_every_rank) {
  MpiCoordinator mpi;
  SharedDir dir(mpi);
  // Rank 1 disagrees about the dtype of "x": the global plan must refuse,
  // on every rank, and nothing may become visible.
  OwnedTensor x(mpi.rank() == 1 ? DType::BF16 : DType::F32, {4}, 1);
  StateDict sd;
  sd.add("x", x.view);
  SaveOptions o;
  o.io = ringckpt::test::small_io();
  o.coordinator = &mpi;
  BOOST_CHECK_EXCEPTION(save(sd, dir.path, o), Error, [](const Error& e) {
    return std::string(e.what()).find('x') != std::string::npos;
  });
  BOOST_TEST(!std::filesystem::exists(dir.path / "metadata.json"));
}

// A scatter from rank 0 without one payload per rank fails on every rank
// with the same error (none is left waiting in the collective), and the
// coordinator stays usable.
BOOST_AUTO_TEST_CASE(a_refused_scatter_fails_on_every_rank_alike) {
  MpiCoordinator mpi;
  std::string caught;
  try {
    mpi.scatter(std::vector<std::string>(mpi.rank() == 0 ? 1 : 0, "x"));
  } catch (const Error& e) {
    caught = e.what();
  }
  BOOST_TEST(caught.find("one payload per rank") != std::string::npos, caught);
  BOOST_TEST(mpi.broadcast(mpi.rank() == 0 ? "after" : "") == "after");
}
