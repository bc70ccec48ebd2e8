// lib/save/shared_engine_writer.hpp — FileSystemWriters that borrow an engine
// (ring, io_uring, staging threads) owned by someone else: the Checkpointer.
// Internal, so that no engine type appears in the public headers.
#pragma once

#include <filesystem>
#include <memory>

#include "ringckpt/filesystem_writer.hpp"

namespace ringckpt {

namespace detail {
class IoEngine;
class RankWriter;
}  // namespace detail

class SharedEngineWriter {
 public:
  // A writer of `dir` that writes through `engine` (see FileSystemWriter for
  // overwrite).
  static std::unique_ptr<FileSystemWriter> open(std::filesystem::path dir,
                                                std::shared_ptr<detail::IoEngine> engine,
                                                bool overwrite);
  // The RankWriter under `writer`, for a write that runs as a job (the
  // Checkpointer's) rather than through write_data.
  static detail::RankWriter& rank_writer(FileSystemWriter& writer);
};

}  // namespace ringckpt
