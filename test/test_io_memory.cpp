// test_io_memory.cpp — the memory O_DIRECT goes through: aligned to huge
// pages, advised to them, pre-faulted, and what the staging ring is made of.
#define BOOST_TEST_MODULE io_memory
#include <boost/test/unit_test.hpp>

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include "io/io_memory.hpp"
#include "io/staging_ring.hpp"
#include "ringckpt/io_options.hpp"

using namespace ringckpt;

namespace {

constexpr std::uintptr_t kHugePage = std::uintptr_t{2} << 20;

std::uintptr_t address(const std::byte* p) { return reinterpret_cast<std::uintptr_t>(p); }

// The THP mode the kernel runs ("always", "madvise", "never"); nullopt where
// it has no transparent huge pages.
std::optional<std::string> thp_mode() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  const auto open = line.find('['), close = line.find(']');
  if (open == std::string::npos || close == std::string::npos) return std::nullopt;
  return line.substr(open + 1, close - open - 1);
}

// The THPeligible field of the mapping that holds `p` in /proc/self/smaps;
// -1 if no mapping holds it or the kernel does not report the field.
int thp_eligible(const std::byte* p) {
  std::ifstream in("/proc/self/smaps");
  std::string line;
  bool inside = false;
  while (std::getline(in, line)) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find(':') > line.find('-')) {
      inside = lo <= address(p) && address(p) < hi;
      continue;
    }
    int v = 0;
    if (inside && std::sscanf(line.c_str(), "THPeligible: %d", &v) == 1) return v;
  }
  return -1;
}

}  // namespace

BOOST_AUTO_TEST_CASE(starts_on_a_huge_page_boundary_whole_pages_zeroed_and_writable) {
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  IoMemory m((3u << 20) + 5, "test");
  BOOST_TEST(address(m.data()) % kHugePage == 0u);
  BOOST_TEST(m.size() == (3u << 20) + page, "rounded up to whole pages");
  bool zero = true;
  for (std::size_t i = 0; i < m.size(); i += 511) zero = zero && m.data()[i] == std::byte{0};
  BOOST_TEST(zero);
  m.data()[m.size() - 1] = std::byte{7};
  BOOST_TEST((m.data()[m.size() - 1] == std::byte{7}));

  IoMemory empty(0, "test");
  BOOST_TEST(empty.size() == page, "never less than one page");
  BOOST_TEST(address(empty.data()) % kHugePage == 0u);
}

BOOST_AUTO_TEST_CASE(advised_to_transparent_huge_pages) {
  const auto mode = thp_mode();
  if (!mode || *mode == "never") {
    BOOST_TEST_MESSAGE("no transparent huge pages on this kernel (" << mode.value_or("absent")
                                                                    << "): nothing to check");
    return;
  }
  IoMemory m(8u << 20, "test");
  const int eligible = thp_eligible(m.data());
  if (eligible < 0) {
    BOOST_TEST_MESSAGE("this kernel's smaps has no THPeligible field: nothing to check");
    return;
  }
  // In "madvise" mode only an madvise(MADV_HUGEPAGE) makes a mapping eligible.
  BOOST_TEST(eligible == 1, "THP mode " << *mode << ": the mapping is not eligible");
}

BOOST_AUTO_TEST_CASE(the_staging_ring_is_made_of_it) {
  // 4.5 MiB of 256 KiB slots: slot 8 starts the second whole huge page.
  StagingRing ring(64 * kAlignment, 18);
  BOOST_TEST(address(ring.slot_data(0)) % kHugePage == 0u);
  BOOST_TEST(address(ring.slot_data(8)) - address(ring.slot_data(0)) == kHugePage);
  const auto mode = thp_mode();
  if (mode && *mode != "never" && thp_eligible(ring.slot_data(0)) >= 0) {
    BOOST_TEST(thp_eligible(ring.slot_data(0)) == 1);
    BOOST_TEST(thp_eligible(ring.slot_data(8)) == 1);
  }
}
