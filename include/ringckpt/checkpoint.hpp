// ringckpt/checkpoint.hpp — synchronous save and load, as DCP's save / load.
#pragma once

#include <filesystem>

#include "ringckpt/coordinator.hpp"
#include "ringckpt/io_options.hpp"
#include "ringckpt/metadata.hpp"
#include "ringckpt/planner.hpp"
#include "ringckpt/storage.hpp"
#include "ringckpt/tensor.hpp"

namespace ringckpt {

// Runs the save protocol on every rank of `coordinator` (each rank calls it):
// plan, write, and on rank 0 commit. Returns the committed metadata on every
// rank (rank 0 broadcasts it with the outcome). A failure on any rank fails every rank,
// and no checkpoint becomes visible. planner and coordinator may be null
// (DefaultSavePlanner, SingleProcess).
Metadata save(const StateDict& state_dict, StorageWriter& writer,
              SavePlanner* planner = nullptr, Coordinator* coordinator = nullptr);

// Runs the load protocol: every tensor of state_dict is filled in place, every
// blob replaced, each extent verified before its bytes are used.
void load(StateDict& state_dict, StorageReader& reader,
          LoadPlanner* planner = nullptr, Coordinator* coordinator = nullptr);

struct SaveOptions {
  IoOptions io;
  bool overwrite = false;
  SavePlanner* planner = nullptr;
  Coordinator* coordinator = nullptr;
};

struct LoadOptions {
  IoOptions io;
  LoadPlanner* planner = nullptr;
  Coordinator* coordinator = nullptr;
};

// The same, with a FileSystemWriter / FileSystemReader on `dir`.
Metadata save(const StateDict& state_dict, const std::filesystem::path& dir,
              const SaveOptions& options = {});
void load(StateDict& state_dict, const std::filesystem::path& dir,
          const LoadOptions& options = {});

// Reads and checks metadata.json of `dir` (its own checksum, the paths it
// names). Throws Error naming the file and the fault.
Metadata read_metadata(const std::filesystem::path& dir);

}  // namespace ringckpt
