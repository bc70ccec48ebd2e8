// ringckpt/filesystem_reader.hpp — the file-system StorageReader, on io_uring.
//
// Reads whole extents of the data files that metadata.json lists, verifies
// each extent's XXH3 before any of its bytes reach the planner.
#pragma once

#include <filesystem>
#include <memory>

#include "ringckpt/io_options.hpp"
#include "ringckpt/storage.hpp"

namespace ringckpt {

class SharedEngineReader;  // lib/load: readers on an engine another owner shares

class FileSystemReader final : public StorageReader {
 public:
  explicit FileSystemReader(std::filesystem::path dir, IoOptions io = {});
  ~FileSystemReader() override;

  // DCP's validate_checkpoint_id: whether `checkpoint_id` names a checkpoint
  // this reader can open (a directory, not a URL, holding a regular
  // metadata.json, not a link). Reads nothing else; never throws.
  static bool validate_checkpoint_id(const std::filesystem::path& checkpoint_id) noexcept;

  void reset(const std::filesystem::path& checkpoint_id) override;
  Metadata read_metadata() override;
  void set_up_storage_reader(const Metadata& metadata, bool is_coordinator) override;
  LoadPlan prepare_local_plan(LoadPlan plan) override;
  std::vector<LoadPlan> prepare_global_plan(std::vector<LoadPlan> plans) override;
  void read_data(const LoadPlan& plan, LoadPlanner& planner) override;

  IoReport report() const;

 private:
  friend class SharedEngineReader;
  struct Impl;
  explicit FileSystemReader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ringckpt
