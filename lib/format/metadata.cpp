#include "ringckpt/metadata.hpp"

#include <ostream>

namespace ringckpt {

std::ostream& operator<<(std::ostream& out, const Fqn& fqn) { return out << fqn.str(); }

std::uint64_t Metadata::total_bytes() const noexcept {
  std::uint64_t total = 0;
  for (const FileInfo& f : files) total += f.size;
  return total;
}

}  // namespace ringckpt
