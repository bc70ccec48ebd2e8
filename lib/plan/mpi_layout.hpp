// mpi_layout.hpp — the int counts and displacements of an MPI vector
// collective (MPI_Gatherv, MPI_Scatterv), computed from 64-bit sizes and
// checked against int overflow before MPI sees them. Pure, so it is tested
// without MPI (test_wire_codec.cpp).
#pragma once

#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ringckpt/error.hpp"

namespace ringckpt::detail {

// The largest count or displacement an MPI call takes.
inline constexpr std::uint64_t kMpiIntMax =
    static_cast<std::uint64_t>(std::numeric_limits<int>::max());

// Payloads laid back to back in one buffer: rank r's bytes are
// [displs[r], displs[r] + counts[r]).
struct MpiLayout {
  std::vector<int> counts;
  std::vector<int> displs;
  std::uint64_t total = 0;  // bytes of the whole buffer
  // The first rank whose payload, added to those before it, passes
  // kMpiIntMax bytes; -1 when everything fits. counts and displs are empty
  // when it is not -1.
  int overflowing_rank = -1;
};

// The layout of `sizes` (rank r's payload size at [r]). Every running total
// is summed in 64 bits, so a size near 2^64 cannot wrap around.
inline MpiLayout mpi_layout(std::span<const std::uint64_t> sizes) {
  MpiLayout out;
  std::uint64_t end = 0;
  for (std::size_t r = 0; r < sizes.size(); ++r) {
    if (sizes[r] > kMpiIntMax || sizes[r] > kMpiIntMax - end) {
      return MpiLayout{{}, {}, 0, static_cast<int>(r)};
    }
    out.displs.push_back(static_cast<int>(end));
    out.counts.push_back(static_cast<int>(sizes[r]));
    end += sizes[r];
  }
  out.total = end;
  return out;
}

// The error every rank throws when rank `rank`'s payload of `size` bytes does
// not fit the int counts of `call`.
inline Error mpi_overflow_error(std::string_view call, int rank, std::uint64_t size) {
  return Error(ErrorCode::kInvalidArgument, "rank " + std::to_string(rank),
               "its payload of " + std::to_string(size) + " bytes makes the " +
                   std::string(call) + " buffer exceed " + std::to_string(kMpiIntMax) +
                   " bytes (MPI counts and displacements are int)");
}

}  // namespace ringckpt::detail
