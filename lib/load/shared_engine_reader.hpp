// lib/load/shared_engine_reader.hpp — FileSystemReaders that borrow an engine
// (ring, io_uring, staging threads) owned by someone else: the Checkpointer.
// Internal, so that no engine type appears in the public headers.
#pragma once

#include <filesystem>
#include <memory>

#include "ringckpt/filesystem_reader.hpp"

namespace ringckpt {

namespace detail {
class IoEngine;
}

class SharedEngineReader {
 public:
  // A reader of `dir` that reads through `engine`; the engine outlives none
  // of its jobs (the reader keeps a reference).
  static std::unique_ptr<FileSystemReader> open(std::filesystem::path dir,
                                                std::shared_ptr<detail::IoEngine> engine);
};

}  // namespace ringckpt
