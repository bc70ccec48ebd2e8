// lib/format/huge_pages.hpp — advice to back memory with transparent huge pages.
//
// Not part of the file format: it lives in the lowest layer because both the
// load planner (plan/) and the I/O memory (io/) use it.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>

namespace ringckpt::detail {

inline constexpr std::size_t kHugePageBytes = std::size_t{2} << 20;

// Advises the kernel to back the whole 2 MiB pages inside [p, p + bytes) with
// huge pages, where it does so on request (transparent huge pages in
// "madvise" mode as well as "always"). Advice only: nothing changes where the
// kernel declines or has none. Call before the pages are first touched.
inline void advise_huge_pages(const void* p, std::size_t bytes) {
  const auto at = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t begin = (at + kHugePageBytes - 1) & ~std::uintptr_t{kHugePageBytes - 1};
  const std::uintptr_t end = (at + bytes) & ~std::uintptr_t{kHugePageBytes - 1};
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

}  // namespace ringckpt::detail
