// tools/aligned_buffer.cpp — page-aligned, pre-faulted anonymous memory.
#include "aligned_buffer.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "ringckpt/error.hpp"
#include "ringckpt/io_options.hpp"
#include "synthetic.hpp"

namespace ringckpt::tools::bench {

AlignedBuffer::AlignedBuffer(std::size_t bytes) : bytes_(std::max<std::size_t>(bytes, kAlignment)) {
  void* p = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    throw Error(ErrorCode::kIo, "bench", "cannot map " + format_bytes(bytes_) + ": " +
                                             std::strerror(errno));
  }
  data_ = static_cast<std::byte*>(p);
  for (std::size_t i = 0; i < bytes_; i += kAlignment) data_[i] = std::byte{0};
}

AlignedBuffer::~AlignedBuffer() { ::munmap(data_, bytes_); }

}  // namespace ringckpt::tools::bench
