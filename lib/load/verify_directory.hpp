// lib/load/verify_directory.hpp — verify of a checkpoint directory already
// opened: what ringckpt::verify(path) does once it has opened the path.
#pragma once

#include <cstdint>
#include <functional>

#include "io/data_file.hpp"
#include "ringckpt/verify.hpp"

namespace ringckpt::detail {

// Verifies the checkpoint in `dir` as ringckpt::verify does: metadata.json,
// the safetensors headers and every extent are read relative to the handle,
// so what is verified is the directory as it was opened, wherever its path
// leads now. REQUIRES: dir is open.
VerifyReport verify_directory(const CheckpointDirectory& dir, const IoOptions& io,
                              const std::function<void(std::uint64_t, std::uint64_t)>& progress);

}  // namespace ringckpt::detail
