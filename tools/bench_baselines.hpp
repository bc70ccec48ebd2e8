// tools/bench_baselines.hpp — what ringckpt is measured against, on the same
// machine and the same bytes:
//
//   device       io_uring O_DIRECT writes from one registered buffer into a
//                preallocated file (fallocate) + fdatasync
//   naive        buffered write() of each tensor to one file + fsync (torch.save)
//   memcpy       one thread copying the tensors into a pre-faulted buffer
//   device-read  io_uring O_DIRECT reads of the checkpoint's data files
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <vector>

#include "io/io_memory.hpp"
#include "io/uring_queue.hpp"
#include "io_notes.hpp"
#include "ringckpt/tensor.hpp"

namespace ringckpt::tools::bench {

// The raw device: io_uring O_DIRECT transfers through one registered buffer
// of queue_depth extents, at the bench's extent size and queue depth. The
// buffer holds a pre-filled, non-constant pattern (no zero-page shortcuts).
class RawDevice {
 public:
  // REQUIRES: extent is a positive multiple of kAlignment.
  RawDevice(std::uint64_t extent, unsigned depth, std::uint64_t max_bytes, IoNotes& notes);
  bool registered() const { return queue_->registered_buffers(); }
  // Whether the last file written or read got O_DIRECT.
  bool last_direct() const { return direct_; }

  // Writes `bytes` to a new `path` (blocks reserved first when O_DIRECT, as
  // ringckpt does), then fdatasync. Returns seconds.
  double write(const std::filesystem::path& path, std::uint64_t bytes);
  // Reads every byte of `paths`. Returns seconds.
  double read(const std::vector<std::filesystem::path>& paths);

 private:
  std::uint64_t extent_;
  std::uint64_t slots_;
  IoMemory buffer_;
  std::unique_ptr<UringQueue> queue_;
  bool direct_ = false;
};

// naive: what torch.save does — buffered write() of a header of
// `header_bytes`, then each tensor, to one file; then fsync. Returns seconds.
double naive_write(const std::filesystem::path& path, const StateDict& sd,
                   std::uint64_t header_bytes);

// memcpy: one thread copying every tensor of `src` to where `dst` has it.
// REQUIRES: dst has the entries of src, in the same order and shapes.
// Returns seconds.
double memcpy_copy(const StateDict& src, const StateDict& dst);

}  // namespace ringckpt::tools::bench
