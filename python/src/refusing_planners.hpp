// refusing_planners.hpp — a rank's part of a collective save or load that
// fails at once with an error the Python side met before it could start.
//
// On N ranks, a rank whose state dict cannot even be turned into StateItems
// (a CUDA tensor, a value that needs allow_pickle, a key the checkpoint
// lacks) must still take part in the collective: otherwise every other rank
// waits in a gather for it. It runs the save or load with one of these
// planners instead, whose create_local_plan throws that error; the protocol
// then fails the operation on every rank, naming this one.
#pragma once

#include "ringckpt/default_planner.hpp"
#include "ringckpt/error.hpp"

namespace ringckpt::python {

class RefusingSavePlanner final : public DefaultSavePlanner {
 public:
  explicit RefusingSavePlanner(Error reason) : reason_(std::move(reason)) {}
  SavePlan create_local_plan() override { throw reason_; }

 private:
  Error reason_;
};

class RefusingLoadPlanner final : public DefaultLoadPlanner {
 public:
  explicit RefusingLoadPlanner(Error reason) : reason_(std::move(reason)) {}
  LoadPlan create_local_plan() override { throw reason_; }

 private:
  Error reason_;
};

}  // namespace ringckpt::python
