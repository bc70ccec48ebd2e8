// lib/io/io_memory.hpp — the memory that O_DIRECT reads and writes go through.
//
// A virtual disk (virtio-blk) takes at most max_segments physically
// contiguous runs a request. Anonymous memory on 4 KiB pages is as scattered
// as the kernel's free lists happen to be, so one 8 MiB extent may need two
// thousand segments and many requests, and a ring made after the machine's
// memory has been churned writes measurably slower than one made fresh. On
// 2 MiB pages an extent is four segments, as far as the kernel grants huge
// pages when the memory is made (transparent huge pages not "never", and a
// free or compactable 2 MiB block for each); where it does not, the pages
// stay small, and io_uring's registration keeps them so.
#pragma once

#include <cstddef>

namespace ringckpt {

class IoMemory {
 public:
  // At least `bytes` (rounded up to whole pages, never less than one page) of
  // anonymous, zeroed, pre-faulted memory, starting on a 2 MiB boundary and
  // advised to transparent huge pages (MADV_HUGEPAGE). Throws
  // Error(kInvalidArgument, `what`) for a size no mapping can have, and
  // Error(kIo, `what`) if the memory cannot be mapped.
  IoMemory(std::size_t bytes, const char* what);
  ~IoMemory();
  IoMemory(const IoMemory&) = delete;
  IoMemory& operator=(const IoMemory&) = delete;

  std::byte* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }

 private:
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace ringckpt
