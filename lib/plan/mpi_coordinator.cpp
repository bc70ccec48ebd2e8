// mpi_coordinator.cpp — Coordinator over MPI. Payloads are binary (NUL bytes
// included): they travel as MPI_BYTE with explicit counts, never as C strings.
#include "ringckpt/mpi.hpp"

#include <cstdint>
#include <new>
#include <span>
#include <string>
#include <vector>

#include "plan/mpi_layout.hpp"
#include "ringckpt/error.hpp"

namespace ringckpt {
namespace {

using detail::kMpiIntMax;

// Throws the failure of MPI call `what` on `rank`. (Under MPI's default
// handler, MPI_ERRORS_ARE_FATAL, a failing call aborts before returning.)
void check(int rc, const char* what, int rank) {
  if (rc != MPI_SUCCESS) {
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    MPI_Error_string(rc, text, &length);
    throw Error(ErrorCode::kIo, "MPI rank " + std::to_string(rank),
                std::string(what) + " failed: " + std::string(text, length));
  }
}

// Rank 0's verdict on a vector collective, broadcast before it so that every
// rank throws the same error (and none waits in a collective another left).
struct Verdict {
  std::int64_t rank = -1;      // the rank whose payload overflows an int count; -1: none
  std::int64_t size = 0;       // that payload's size
  std::int64_t payloads = -1;  // scatter: how many payloads, when not one per rank
  std::int64_t out_of_memory = 0;  // 1: rank 0 could not allocate the collective's buffer
};

Verdict share(Verdict v, MPI_Comm comm, const char* call, int rank) {
  std::int64_t wire[4] = {v.rank, v.size, v.payloads, v.out_of_memory};
  check(MPI_Bcast(wire, 4, MPI_INT64_T, 0, comm), call, rank);
  return {wire[0], wire[1], wire[2], wire[3]};
}

// Throws, on every rank alike, what rank 0's verdict on `call` says is wrong.
void throw_if_refused(const Verdict& v, const char* call, int size) {
  if (v.out_of_memory != 0) {
    throw Error(ErrorCode::kIo, "MPI rank 0",
                std::string("out of memory allocating the ") + call + " buffer");
  }
  if (v.payloads >= 0) {
    throw Error(ErrorCode::kInvalidArgument, "MPI rank 0",
                "scatter needs one payload per rank: " + std::to_string(v.payloads) +
                    " payloads for " + std::to_string(size) + " ranks");
  }
  if (v.rank >= 0) {
    throw detail::mpi_overflow_error(call, static_cast<int>(v.rank),
                                     static_cast<std::uint64_t>(v.size));
  }
}

// Rank 0's layout of `sizes`, with its verdict: an overflowing rank, or out
// of memory (also while `prepare` allocates the collective's buffer), all
// before the broadcast that every rank waits in.
template <typename Prepare>
Verdict lay_out(std::span<const std::uint64_t> sizes, detail::MpiLayout& layout,
                Prepare&& prepare) {
  Verdict verdict;
  try {
    layout = detail::mpi_layout(sizes);
    if (layout.overflowing_rank >= 0) {
      verdict.rank = layout.overflowing_rank;
      verdict.size = static_cast<std::int64_t>(sizes[static_cast<std::size_t>(layout.overflowing_rank)]);
    } else {
      prepare();
    }
  } catch (const std::bad_alloc&) {
    verdict.out_of_memory = 1;
  }
  return verdict;
}

}  // namespace

MpiCoordinator::MpiCoordinator(MPI_Comm comm) : comm_(comm) {
  check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank", -1);
  check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size", rank_);
}

MpiCoordinator::MpiCoordinator(MPI_Comm comm, Owned) : MpiCoordinator(comm) { owned_ = true; }

MpiCoordinator::~MpiCoordinator() {
  if (!owned_) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Comm_free(&comm_);
}

std::unique_ptr<Coordinator> MpiCoordinator::duplicate() {
  // Checked alike on every rank (the level is the job's), so that all refuse
  // before the collective MPI_Comm_dup.
  int provided = MPI_THREAD_SINGLE;
  check(MPI_Query_thread(&provided), "MPI_Query_thread", rank_);
  if (provided != MPI_THREAD_MULTIPLE) {
    throw Error(ErrorCode::kInvalidArgument, "MPI rank " + std::to_string(rank_),
                "a Checkpointer runs MPI collectives on its own thread: initialize MPI with "
                "MPI_Init_thread(..., MPI_THREAD_MULTIPLE, ...) (provided level " +
                    std::to_string(provided) + ")");
  }
  MPI_Comm dup = MPI_COMM_NULL;
  check(MPI_Comm_dup(comm_, &dup), "MPI_Comm_dup", rank_);
  return std::unique_ptr<Coordinator>(new MpiCoordinator(dup, Owned{}));
}

std::vector<std::string> MpiCoordinator::gather(std::string payload) {
  // Sizes travel in 64 bits, so that rank 0 sees a payload too large for an
  // int count as it is, and the layout is checked before MPI_Gatherv.
  const std::uint64_t mine = payload.size();
  std::vector<std::uint64_t> sizes(rank_ == 0 ? size_ : 0);
  check(MPI_Gather(&mine, 1, MPI_UINT64_T, sizes.data(), 1, MPI_UINT64_T, 0, comm_),
        "MPI_Gather", rank_);
  detail::MpiLayout layout;
  std::string all;
  Verdict verdict;
  if (rank_ == 0) {
    verdict = lay_out(sizes, layout, [&] { all.assign(layout.total, '\0'); });
  }
  throw_if_refused(share(verdict, comm_, "MPI_Bcast", rank_), "MPI_Gatherv", size_);
  check(MPI_Gatherv(payload.data(), static_cast<int>(mine), MPI_BYTE, all.data(),
                    layout.counts.data(), layout.displs.data(), MPI_BYTE, 0, comm_),
        "MPI_Gatherv", rank_);
  std::vector<std::string> out;
  out.reserve(layout.counts.size());
  for (std::size_t r = 0; r < layout.counts.size(); ++r) {
    out.push_back(all.substr(static_cast<std::size_t>(layout.displs[r]),
                             static_cast<std::size_t>(layout.counts[r])));
  }
  return out;
}

std::string MpiCoordinator::scatter(std::vector<std::string> payloads) {
  detail::MpiLayout layout;
  std::string all;
  Verdict verdict;
  if (rank_ == 0) {
    if (payloads.size() != static_cast<std::size_t>(size_)) {
      verdict.payloads = static_cast<std::int64_t>(payloads.size());
    } else {
      std::vector<std::uint64_t> sizes;
      for (const auto& p : payloads) sizes.push_back(p.size());
      verdict = lay_out(sizes, layout, [&] {
        all.reserve(layout.total);
        for (const auto& p : payloads) all += p;
      });
    }
  }
  throw_if_refused(share(verdict, comm_, "MPI_Bcast", rank_), "MPI_Scatterv", size_);
  int mine = 0;
  check(MPI_Scatter(layout.counts.data(), 1, MPI_INT, &mine, 1, MPI_INT, 0, comm_),
        "MPI_Scatter", rank_);
  std::string out(static_cast<std::size_t>(mine), '\0');
  check(MPI_Scatterv(all.data(), layout.counts.data(), layout.displs.data(), MPI_BYTE,
                     out.data(), mine, MPI_BYTE, 0, comm_),
        "MPI_Scatterv", rank_);
  return out;
}

std::string MpiCoordinator::broadcast(std::string payload) {
  // The size travels in 64 bits, so that every rank refuses one too large
  // for an int count, not rank 0 alone.
  std::uint64_t n = rank_ == 0 ? payload.size() : 0;
  check(MPI_Bcast(&n, 1, MPI_UINT64_T, 0, comm_), "MPI_Bcast", rank_);
  if (n > kMpiIntMax) throw detail::mpi_overflow_error("MPI_Bcast", 0, n);
  payload.resize(static_cast<std::size_t>(n));
  check(MPI_Bcast(payload.data(), static_cast<int>(n), MPI_BYTE, 0, comm_), "MPI_Bcast", rank_);
  return payload;
}

}  // namespace ringckpt
