// ringckpt/mpi.hpp — ranks that are MPI processes. Present when ringckpt was
// built with MPI (meson option mpi); compile the program with mpicxx.
#pragma once

#include <mpi.h>

#include "ringckpt/coordinator.hpp"

namespace ringckpt {

// The ranks of `comm` (MPI must be initialized, and stay so while this is
// used). Every collective is one MPI collective on comm, so each rank must
// make the same ringckpt calls in the same order.
//
// duplicate() (a Checkpointer calls it in its constructor) makes a
// coordinator on MPI_Comm_dup(comm), whose collectives the Checkpointer runs
// on its own thread while the program goes on using comm: it requires MPI
// initialized with MPI_THREAD_MULTIPLE (MPI_Init_thread), checked with
// MPI_Query_thread, and throws an Error saying so otherwise. The duplicate
// frees its communicator when destroyed (unless MPI is finalized by then).
class MpiCoordinator final : public Coordinator {
 public:
  explicit MpiCoordinator(MPI_Comm comm = MPI_COMM_WORLD);
  ~MpiCoordinator() override;
  MpiCoordinator(const MpiCoordinator&) = delete;
  MpiCoordinator& operator=(const MpiCoordinator&) = delete;

  int rank() const override { return rank_; }
  int world_size() const override { return size_; }
  std::vector<std::string> gather(std::string payload) override;
  std::string scatter(std::vector<std::string> payloads) override;
  std::string broadcast(std::string payload) override;
  std::unique_ptr<Coordinator> duplicate() override;

 private:
  struct Owned {};  // the constructor of a duplicate, which frees comm
  MpiCoordinator(MPI_Comm comm, Owned);

  MPI_Comm comm_;
  bool owned_ = false;  // comm_ came from MPI_Comm_dup
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace ringckpt
