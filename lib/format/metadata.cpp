#include "ringckpt/metadata.hpp"

namespace ringckpt {

std::uint64_t Metadata::total_bytes() const noexcept {
  std::uint64_t total = 0;
  for (const FileInfo& f : files) total += f.size;
  return total;
}

}  // namespace ringckpt
