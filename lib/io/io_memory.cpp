// io_memory.cpp — anonymous memory on transparent huge pages, pre-faulted.
#include "io/io_memory.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include "format/file_extents.hpp"
#include "format/huge_pages.hpp"
#include "ringckpt/error.hpp"

namespace ringckpt {

IoMemory::IoMemory(std::size_t bytes, const char* what) {
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  if (bytes > std::numeric_limits<std::size_t>::max() - 2 * detail::kHugePageBytes)
    throw Error(ErrorCode::kInvalidArgument, what,
                std::to_string(bytes) + " bytes is too much memory");
  size_ = detail::round_up(bytes == 0 ? 1 : bytes, page);
  // Map a huge page more than asked, then unmap what lies before the first
  // 2 MiB boundary and after the block: the kernel backs only an aligned
  // 2 MiB range with a huge page.
  const std::size_t reserved = size_ + detail::kHugePageBytes;
  void* p = ::mmap(nullptr, reserved, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    throw Error(ErrorCode::kIo, what,
                "cannot map " + std::to_string(reserved) + " bytes: " + std::strerror(errno));
  const auto start = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t aligned = detail::round_up(start, detail::kHugePageBytes);
  if (aligned > start) ::munmap(p, aligned - start);
  const std::size_t tail = start + reserved - (aligned + size_);
  if (tail > 0) ::munmap(reinterpret_cast<void*>(aligned + size_), tail);
  data_ = reinterpret_cast<std::byte*>(aligned);
  // Advised before the first touch: a page's size is chosen when it faults.
  detail::advise_huge_pages(data_, size_);
  // One write a page faults the whole block in now (a huge page at a time
  // where granted, zeroed by the kernel), so that no save or load pays for it.
  for (std::size_t at = 0; at < size_; at += page) data_[at] = std::byte{0};
}

IoMemory::~IoMemory() { ::munmap(data_, size_); }

}  // namespace ringckpt
