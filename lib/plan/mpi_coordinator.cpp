// mpi_coordinator.cpp — Coordinator over MPI. Payloads are binary (NUL bytes
// included): they travel as MPI_BYTE with explicit counts, never as C strings.
#include "ringckpt/mpi.hpp"

#include <limits>
#include <numeric>

#include "ringckpt/error.hpp"

namespace ringckpt {
namespace {

void check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) {
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    MPI_Error_string(rc, text, &length);
    throw Error(ErrorCode::kIo, "MPI", std::string(what) + " failed: " + std::string(text, length));
  }
}

int count_of(std::size_t n) {
  if (n > static_cast<std::size_t>(std::numeric_limits<int>::max())) {
    throw Error(ErrorCode::kInvalidArgument, "MPI", "a plan payload exceeds 2 GiB");
  }
  return static_cast<int>(n);
}

// Displacements for counts laid back to back.
std::vector<int> displacements(const std::vector<int>& counts) {
  std::vector<int> d(counts.size(), 0);
  std::partial_sum(counts.begin(), counts.end() - 1, d.begin() + 1);
  return d;
}

}  // namespace

MpiCoordinator::MpiCoordinator(MPI_Comm comm) : comm_(comm) {
  check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
  check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
}

std::vector<std::string> MpiCoordinator::gather(std::string payload) {
  const int mine = count_of(payload.size());
  std::vector<int> counts(rank_ == 0 ? size_ : 0);
  check(MPI_Gather(&mine, 1, MPI_INT, counts.data(), 1, MPI_INT, 0, comm_), "MPI_Gather");
  std::vector<int> displs;
  std::string all;
  if (rank_ == 0) {
    displs = displacements(counts);
    all.resize(static_cast<std::size_t>(displs.back()) + counts.back());
  }
  check(MPI_Gatherv(payload.data(), mine, MPI_BYTE, all.data(), counts.data(), displs.data(),
                    MPI_BYTE, 0, comm_),
        "MPI_Gatherv");
  std::vector<std::string> out;
  for (int r = 0; r < static_cast<int>(counts.size()); ++r) out.push_back(all.substr(displs[r], counts[r]));
  return out;
}

std::string MpiCoordinator::scatter(std::vector<std::string> payloads) {
  std::vector<int> counts;
  std::vector<int> displs;
  std::string all;
  if (rank_ == 0) {
    if (static_cast<int>(payloads.size()) != size_) {
      throw Error(ErrorCode::kInvalidArgument, "MPI", "scatter needs one payload per rank");
    }
    for (const auto& p : payloads) {
      counts.push_back(count_of(p.size()));
      all += p;
    }
    displs = displacements(counts);
  }
  int mine = 0;
  check(MPI_Scatter(counts.data(), 1, MPI_INT, &mine, 1, MPI_INT, 0, comm_), "MPI_Scatter");
  std::string out(static_cast<std::size_t>(mine), '\0');
  check(MPI_Scatterv(all.data(), counts.data(), displs.data(), MPI_BYTE, out.data(), mine,
                     MPI_BYTE, 0, comm_),
        "MPI_Scatterv");
  return out;
}

std::string MpiCoordinator::broadcast(std::string payload) {
  int n = rank_ == 0 ? count_of(payload.size()) : 0;
  check(MPI_Bcast(&n, 1, MPI_INT, 0, comm_), "MPI_Bcast");
  payload.resize(static_cast<std::size_t>(n));
  check(MPI_Bcast(payload.data(), n, MPI_BYTE, 0, comm_), "MPI_Bcast");
  return payload;
}

}  // namespace ringckpt
