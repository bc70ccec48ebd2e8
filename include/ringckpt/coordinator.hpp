// ringckpt/coordinator.hpp — how the ranks of one save or load talk.
//
// Plans, results and metadata cross ranks as opaque byte strings; rank 0 is
// the coordinator. SingleProcess is the one-rank case, ThreadGroup runs ranks
// as threads of one process (tests, resharding tools), MpiCoordinator (see
// ringckpt/mpi.hpp) runs them over MPI.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace ringckpt {

class Coordinator {
 public:
  virtual ~Coordinator() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  bool is_coordinator() const { return rank() == 0; }

  // Every rank calls each of these in the same order (they are collectives).
  // gather: rank 0 gets every rank's payload in rank order; others get {}.
  virtual std::vector<std::string> gather(std::string payload) = 0;
  // scatter: rank 0 passes one payload per rank; each rank gets its own.
  virtual std::string scatter(std::vector<std::string> payloads) = 0;
  // broadcast: every rank gets rank 0's payload.
  virtual std::string broadcast(std::string payload) = 0;

  // A coordinator of the same ranks whose collectives never meet this one's:
  // MPI_Comm_dup for MPI, a new round of rendezvous for threads. A collective
  // too: every rank calls it, in the same place of its sequence of calls.
  // A Checkpointer calls it once, on the constructing thread, inside its
  // constructor, and from then on calls the duplicate's collectives from its
  // own control thread only, while the caller goes on using this one. The
  // duplicate may outlive this object.
  virtual std::unique_ptr<Coordinator> duplicate() = 0;
};

class SingleProcess final : public Coordinator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  std::vector<std::string> gather(std::string payload) override;
  std::string scatter(std::vector<std::string> payloads) override;
  std::string broadcast(std::string payload) override;
  std::unique_ptr<Coordinator> duplicate() override;
};

// `world_size` ranks that are threads of this process; member(r) is the
// Coordinator that rank r's thread uses. A rank that does not reach a
// collective within `timeout` (it died, it runs another sequence of calls,
// or it is still busy that long) fails that collective on every rank that
// is waiting in it, with an Error naming the missing ranks, and the group
// stays failed. Each duplicate() is a group of its own, with the same
// timeout.
class ThreadGroup {
 public:
  explicit ThreadGroup(int world_size,
                       std::chrono::milliseconds timeout = std::chrono::minutes(10));
  ~ThreadGroup();
  Coordinator& member(int rank);
  int world_size() const;

 private:
  struct Shared;
  class Member;
  std::shared_ptr<Shared> shared_;
  std::vector<std::unique_ptr<Member>> members_;
};

}  // namespace ringckpt
