// ringckpt/storage.hpp — where bytes go: the StorageWriter / StorageReader
// interfaces of torch.distributed.checkpoint.
#pragma once

#include <filesystem>
#include <optional>
#include <vector>

#include "ringckpt/metadata.hpp"
#include "ringckpt/plan.hpp"
#include "ringckpt/planner.hpp"

namespace ringckpt {

class StorageWriter {
 public:
  virtual ~StorageWriter() = default;

  virtual void reset(const std::filesystem::path& checkpoint_id) = 0;
  virtual void set_up_storage_writer(bool is_coordinator, int rank) = 0;
  virtual SavePlan prepare_local_plan(SavePlan plan) = 0;
  virtual std::vector<SavePlan> prepare_global_plan(std::vector<SavePlan> plans) = 0;
  // DCP's storage_meta(): called by the coordinator once per save, after
  // prepare_global_plan; what it returns is recorded in the committed
  // metadata (Metadata::storage_meta). Default: nothing.
  virtual std::optional<StorageMeta> storage_meta() const { return std::nullopt; }
  // Writes every item of `plan` and makes the data durable.
  virtual WriteResults write_data(const SavePlan& plan, SavePlanner& planner) = 0;
  // Coordinator only: commits the checkpoint. After finish returns, the
  // checkpoint is durable and visible; before, it does not exist.
  virtual void finish(const Metadata& metadata, const std::vector<WriteResults>& results) = 0;
  // Removes what this writer wrote for a save that will not commit.
  virtual void abort() noexcept = 0;
};

class StorageReader {
 public:
  virtual ~StorageReader() = default;

  virtual void reset(const std::filesystem::path& checkpoint_id) = 0;
  virtual Metadata read_metadata() = 0;
  virtual void set_up_storage_reader(const Metadata& metadata, bool is_coordinator) = 0;
  virtual LoadPlan prepare_local_plan(LoadPlan plan) = 0;
  virtual std::vector<LoadPlan> prepare_global_plan(std::vector<LoadPlan> plans) = 0;
  // Reads, verifies and delivers every item of `plan` through the planner.
  virtual void read_data(const LoadPlan& plan, LoadPlanner& planner) = 0;
};

}  // namespace ringckpt
