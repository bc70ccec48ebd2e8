// ringckpt/mpi.hpp — ranks that are MPI processes. Present when ringckpt was
// built with MPI (meson option mpi); compile the program with mpicxx.
#pragma once

#include <mpi.h>

#include "ringckpt/coordinator.hpp"

namespace ringckpt {

// The ranks of `comm` (MPI must be initialized, and stay so while this is
// used). Every collective is one MPI collective on comm, so each rank must
// make the same ringckpt calls in the same order.
class MpiCoordinator final : public Coordinator {
 public:
  explicit MpiCoordinator(MPI_Comm comm = MPI_COMM_WORLD);

  int rank() const override { return rank_; }
  int world_size() const override { return size_; }
  std::vector<std::string> gather(std::string payload) override;
  std::string scatter(std::vector<std::string> payloads) override;
  std::string broadcast(std::string payload) override;

 private:
  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace ringckpt
