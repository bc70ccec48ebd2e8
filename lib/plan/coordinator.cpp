// coordinator.cpp — the one-rank coordinator and ranks as threads.
#include "ringckpt/coordinator.hpp"

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <utility>

#include "ringckpt/error.hpp"

namespace ringckpt {

// ---------------------------------------------------------------------------
// SingleProcess

std::vector<std::string> SingleProcess::gather(std::string payload) {
  std::vector<std::string> out;
  out.push_back(std::move(payload));
  return out;
}

std::string SingleProcess::scatter(std::vector<std::string> payloads) {
  if (payloads.size() != 1) {
    throw Error(ErrorCode::kInvalidArgument, "scatter",
                "one rank, but " + std::to_string(payloads.size()) + " payloads");
  }
  return std::move(payloads[0]);
}

std::string SingleProcess::broadcast(std::string payload) { return payload; }

std::unique_ptr<Coordinator> SingleProcess::duplicate() {
  return std::make_unique<SingleProcess>();
}

// ---------------------------------------------------------------------------
// ThreadGroup
//
// Each collective is one round of a rendezvous. A member deposits its input
// under the mutex; the last member to arrive computes every member's output,
// resets the arrival count and bumps the generation; the others wait for the
// generation to change and then take their own output.
//
// Invariant: a round's outputs stay untouched until every member has taken
// its own, because the next round completes only once every member has
// arrived, and a member arrives only after taking its previous output.
//
// A member that waits longer than the timeout breaks the group: the round
// never completes, every member waiting in it (and every later call) throws.

namespace {

enum class Collective { kGather, kScatter, kBroadcast, kDuplicate };

const char* name(Collective c) {
  switch (c) {
    case Collective::kGather: return "gather";
    case Collective::kScatter: return "scatter";
    case Collective::kBroadcast: return "broadcast";
    case Collective::kDuplicate: return "duplicate";
  }
  return "?";
}

}  // namespace

struct ThreadGroup::Shared {
  Shared(int n, std::chrono::milliseconds t)
      : world_size(n), timeout(t), inputs(n), outputs(n), present(n, false) {}

  const int world_size;
  const std::chrono::milliseconds timeout;
  std::mutex mu;
  std::condition_variable cv;
  // Guarded by mu.
  std::uint64_t generation = 0;
  int arrived = 0;
  Collective kind = Collective::kGather;  // of the round under way
  bool mixed = false;                     // members called different collectives
  std::vector<std::string> inputs;        // one per rank
  std::vector<std::string> scatter_input; // rank 0's payloads, for scatter
  std::vector<std::string> outputs;       // one per rank
  std::vector<std::string> gathered;      // rank 0's output, for gather
  std::vector<bool> present;              // which ranks have arrived this round
  std::shared_ptr<Shared> duplicated;     // the new group of a duplicate round
  std::string error;                      // set if the round failed; every member throws it
  std::string broken;                     // set once a round timed out; every call throws it

  // Called by the last member to arrive. Computes the round's outputs.
  void complete() {
    error.clear();
    duplicated.reset();
    if (mixed) {
      error = "ranks called different collectives at once";
    } else if (kind == Collective::kGather) {
      gathered = std::move(inputs);
      inputs.assign(world_size, {});
    } else if (kind == Collective::kBroadcast) {
      for (int r = 1; r < world_size; ++r) outputs[r] = inputs[0];
      outputs[0] = std::move(inputs[0]);
    } else if (kind == Collective::kDuplicate) {
      duplicated = std::make_shared<Shared>(world_size, timeout);
    } else if (scatter_input.size() != static_cast<std::size_t>(world_size)) {
      error = "rank 0 scattered " + std::to_string(scatter_input.size()) + " payloads to " +
              std::to_string(world_size) + " ranks";
    } else {
      for (int r = 0; r < world_size; ++r) outputs[r] = std::move(scatter_input[r]);
    }
    scatter_input.clear();
    for (auto& in : inputs) in.clear();
    present.assign(world_size, false);
    mixed = false;
    arrived = 0;
    ++generation;
  }

  // Breaks the group: the round under way will never complete.
  // REQUIRES: mu held.
  void break_round(Collective waited) {
    std::string missing;
    for (int r = 0; r < world_size; ++r) {
      if (present[r]) continue;
      missing += (missing.empty() ? "" : ", ") + std::to_string(r);
    }
    broken = "rank " + missing + " did not reach " + name(waited) + " within " +
             std::to_string(timeout.count()) + " ms (died, or called other collectives)";
    cv.notify_all();
  }
};

class ThreadGroup::Member final : public Coordinator {
 public:
  Member(std::shared_ptr<Shared> shared, int rank) : shared_(std::move(shared)), rank_(rank) {}

  int rank() const override { return rank_; }
  int world_size() const override { return shared_->world_size; }

  std::vector<std::string> gather(std::string payload) override {
    std::vector<std::string> out;
    round(Collective::kGather, std::move(payload), {}, [&](Shared& s) {
      if (rank_ == 0) out = std::move(s.gathered);
    });
    return out;
  }

  std::string scatter(std::vector<std::string> payloads) override {
    std::string out;
    round(Collective::kScatter, {}, std::move(payloads),
          [&](Shared& s) { out = std::move(s.outputs[rank_]); });
    return out;
  }

  std::string broadcast(std::string payload) override {
    std::string out;
    round(Collective::kBroadcast, std::move(payload), {},
          [&](Shared& s) { out = std::move(s.outputs[rank_]); });
    return out;
  }

  std::unique_ptr<Coordinator> duplicate() override {
    std::shared_ptr<Shared> group;
    round(Collective::kDuplicate, {}, {}, [&](Shared& s) { group = s.duplicated; });
    return std::make_unique<Member>(std::move(group), rank_);
  }

 private:
  // Deposits this member's input, waits for the round to complete, and runs
  // `take` (under the mutex) to collect this member's output.
  template <typename Take>
  void round(Collective kind, std::string payload, std::vector<std::string> scatter_payloads,
             Take take) {
    Shared& s = *shared_;
    std::unique_lock lock(s.mu);
    if (!s.broken.empty()) throw Error(ErrorCode::kIo, "ThreadGroup", s.broken);
    if (s.arrived == 0) {
      s.kind = kind;
    } else if (s.kind != kind) {
      s.mixed = true;
    }
    s.inputs[rank_] = std::move(payload);
    s.present[rank_] = true;
    if (rank_ == 0 && kind == Collective::kScatter) s.scatter_input = std::move(scatter_payloads);
    const std::uint64_t generation = s.generation;
    if (++s.arrived == s.world_size) {
      s.complete();
      s.cv.notify_all();
    } else {
      const bool done = s.cv.wait_for(lock, s.timeout, [&] {
        return s.generation != generation || !s.broken.empty();
      });
      if (!done) s.break_round(kind);
      if (s.generation == generation) throw Error(ErrorCode::kIo, "ThreadGroup", s.broken);
    }
    // The error of this round is still in place: the next round cannot
    // complete before this member arrives at it.
    if (!s.error.empty()) throw Error(ErrorCode::kInvalidArgument, name(kind), s.error);
    take(s);
  }

  std::shared_ptr<Shared> shared_;
  const int rank_;
};

ThreadGroup::ThreadGroup(int world_size, std::chrono::milliseconds timeout) {
  if (world_size < 1) {
    throw Error(ErrorCode::kInvalidArgument, "ThreadGroup",
                "world size " + std::to_string(world_size) + " is not positive");
  }
  if (timeout <= std::chrono::milliseconds::zero()) {
    throw Error(ErrorCode::kInvalidArgument, "ThreadGroup",
                "timeout " + std::to_string(timeout.count()) + " ms is not positive");
  }
  shared_ = std::make_shared<Shared>(world_size, timeout);
  members_.reserve(static_cast<std::size_t>(world_size));
  for (int r = 0; r < world_size; ++r) members_.push_back(std::make_unique<Member>(shared_, r));
}

ThreadGroup::~ThreadGroup() = default;

Coordinator& ThreadGroup::member(int rank) {
  if (rank < 0 || rank >= world_size()) {
    throw Error(ErrorCode::kInvalidArgument, "ThreadGroup",
                "rank " + std::to_string(rank) + " is outside world size " +
                    std::to_string(world_size()));
  }
  return *members_[static_cast<std::size_t>(rank)];
}

int ThreadGroup::world_size() const { return shared_->world_size; }

}  // namespace ringckpt
