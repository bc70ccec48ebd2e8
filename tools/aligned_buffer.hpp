// tools/aligned_buffer.hpp — page-aligned memory for the bench's baselines.
#pragma once

#include <cstddef>

namespace ringckpt::tools::bench {

// Page-aligned anonymous memory of at least kAlignment bytes, every page
// touched at creation (pre-faulted), so that timing never pays a page fault.
// Unmapped on destruction. Error(kIo) if it cannot be mapped.
class AlignedBuffer {
 public:
  explicit AlignedBuffer(std::size_t bytes);
  ~AlignedBuffer();
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  std::byte* data() const { return data_; }
  std::size_t size() const { return bytes_; }

 private:
  std::size_t bytes_;
  std::byte* data_ = nullptr;
};

}  // namespace ringckpt::tools::bench
