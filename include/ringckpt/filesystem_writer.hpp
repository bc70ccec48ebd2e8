// ringckpt/filesystem_writer.hpp — the file-system StorageWriter, on io_uring.
//
// A checkpoint directory holds metadata.json and one or more data files
// __{rank}_{n}.safetensors per rank. Data goes through a ring of aligned,
// registered buffers as O_DIRECT fixed-buffer writes at offsets the finished
// plan fixed; every extent is checksummed while staged.
#pragma once

#include <filesystem>
#include <memory>

#include "ringckpt/io_options.hpp"
#include "ringckpt/storage.hpp"

namespace ringckpt {

class SharedEngineWriter;  // lib/save: writers on an engine another owner shares

class FileSystemWriter final : public StorageWriter {
 public:
  // overwrite: replace a checkpoint already in `dir`; it stays whole until the
  // new metadata.json has committed, then its data files are removed.
  // Otherwise saving there fails.
  explicit FileSystemWriter(std::filesystem::path dir, IoOptions io = {}, bool overwrite = false);
  ~FileSystemWriter() override;

  // DCP's validate_checkpoint_id: whether this writer could save to
  // `checkpoint_id`: not empty, not a URL, not an existing non-directory, and
  // its nearest existing ancestor (or itself) a writable directory. Never throws.
  static bool validate_checkpoint_id(const std::filesystem::path& checkpoint_id) noexcept;

  void reset(const std::filesystem::path& checkpoint_id) override;
  void set_up_storage_writer(bool is_coordinator, int rank) override;
  SavePlan prepare_local_plan(SavePlan plan) override;
  std::vector<SavePlan> prepare_global_plan(std::vector<SavePlan> plans) override;
  // {checkpoint_id: the directory as given, save_id: the generation (16 hex
  // digits, as in the data file names) the last prepare_global_plan chose};
  // nullopt before any prepare_global_plan (and after reset).
  std::optional<StorageMeta> storage_meta() const override;
  WriteResults write_data(const SavePlan& plan, SavePlanner& planner) override;
  void finish(const Metadata& metadata, const std::vector<WriteResults>& results) override;
  void abort() noexcept override;

  IoReport report() const;

 private:
  friend class SharedEngineWriter;
  struct Impl;
  explicit FileSystemWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ringckpt
