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

namespace {

enum class Collective { kGather, kScatter, kBroadcast };

const char* name(Collective c) {
  switch (c) {
    case Collective::kGather: return "gather";
    case Collective::kScatter: return "scatter";
    case Collective::kBroadcast: return "broadcast";
  }
  return "?";
}

}  // namespace

struct ThreadGroup::Shared {
  explicit Shared(int n) : world_size(n), inputs(n), outputs(n) {}

  const int world_size;
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
  std::string error;                      // set if the round failed; every member throws it

  // Called by the last member to arrive. Computes the round's outputs.
  void complete() {
    error.clear();
    if (mixed) {
      error = "ranks called different collectives at once";
    } else if (kind == Collective::kGather) {
      gathered = std::move(inputs);
      inputs.assign(world_size, {});
    } else if (kind == Collective::kBroadcast) {
      for (int r = 1; r < world_size; ++r) outputs[r] = inputs[0];
      outputs[0] = std::move(inputs[0]);
    } else if (scatter_input.size() != static_cast<std::size_t>(world_size)) {
      error = "rank 0 scattered " + std::to_string(scatter_input.size()) + " payloads to " +
              std::to_string(world_size) + " ranks";
    } else {
      for (int r = 0; r < world_size; ++r) outputs[r] = std::move(scatter_input[r]);
    }
    scatter_input.clear();
    for (auto& in : inputs) in.clear();
    mixed = false;
    arrived = 0;
    ++generation;
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

 private:
  // Deposits this member's input, waits for the round to complete, and runs
  // `take` (under the mutex) to collect this member's output.
  template <typename Take>
  void round(Collective kind, std::string payload, std::vector<std::string> scatter_payloads,
             Take take) {
    Shared& s = *shared_;
    std::unique_lock lock(s.mu);
    if (s.arrived == 0) {
      s.kind = kind;
    } else if (s.kind != kind) {
      s.mixed = true;
    }
    s.inputs[rank_] = std::move(payload);
    if (rank_ == 0 && kind == Collective::kScatter) s.scatter_input = std::move(scatter_payloads);
    const std::uint64_t generation = s.generation;
    if (++s.arrived == s.world_size) {
      s.complete();
      s.cv.notify_all();
    } else {
      s.cv.wait(lock, [&] { return s.generation != generation; });
    }
    // The error of this round is still in place: the next round cannot
    // complete before this member arrives at it.
    if (!s.error.empty()) throw Error(ErrorCode::kInvalidArgument, name(kind), s.error);
    take(s);
  }

  std::shared_ptr<Shared> shared_;
  const int rank_;
};

ThreadGroup::ThreadGroup(int world_size) {
  if (world_size < 1) {
    throw Error(ErrorCode::kInvalidArgument, "ThreadGroup",
                "world size " + std::to_string(world_size) + " is not positive");
  }
  shared_ = std::make_shared<Shared>(world_size);
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
