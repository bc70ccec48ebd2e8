// test_io_memory.cpp — the memory O_DIRECT goes through: aligned to huge
// pages, advised to them, pre-faulted, and what the staging ring is made of.
#define BOOST_TEST_MODULE io_memory
#include <boost/test/unit_test.hpp>

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <string>

#include "io/io_memory.hpp"
#include "io/staging_ring.hpp"
#include "ringckpt/error.hpp"
#include "ringckpt/io_options.hpp"

using namespace ringckpt;

namespace {

constexpr std::uintptr_t kHugePage = std::uintptr_t{2} << 20;

std::uintptr_t address(const std::byte* p) { return reinterpret_cast<std::uintptr_t>(p); }

// Whether this kernel has transparent huge pages at all (else madvise
// refuses MADV_HUGEPAGE and nothing is advised).
bool kernel_has_thp() {
  return std::filesystem::exists("/sys/kernel/mm/transparent_hugepage/enabled");
}

// The fields ("Size", "Rss", "VmFlags", ...) of the mapping that holds `p` in
// /proc/self/smaps, each with the text after its colon; empty if none holds it.
std::map<std::string, std::string> mapping_of(const std::byte* p) {
  std::ifstream in("/proc/self/smaps");
  std::map<std::string, std::string> fields;
  std::string line;
  bool inside = false;
  while (std::getline(in, line)) {
    unsigned long lo = 0, hi = 0;
    const auto colon = line.find(':');
    // A mapping's header ("lo-hi perms offset dev inode path"); the colon of
    // its dev field comes after the dash. Fields are "Name: value".
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && colon > line.find('-')) {
      if (inside) break;
      inside = lo <= address(p) && address(p) < hi;
      continue;
    }
    if (inside && colon != std::string::npos) fields[line.substr(0, colon)] = line.substr(colon + 1);
  }
  return fields;
}

bool has_flag(const std::map<std::string, std::string>& fields, const std::string& flag) {
  const auto it = fields.find("VmFlags");
  return it != fields.end() && (it->second + " ").find(" " + flag + " ") != std::string::npos;
}

// A size field of smaps ("  8192 kB") in kB; -1 if absent.
long kb(const std::map<std::string, std::string>& fields, const std::string& name) {
  const auto it = fields.find(name);
  long v = -1;
  if (it != fields.end()) std::sscanf(it->second.c_str(), "%ld", &v);
  return v;
}

}  // namespace

BOOST_AUTO_TEST_CASE(starts_on_a_huge_page_boundary_in_whole_pages) {
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  IoMemory m((3u << 20) + 5, "test");
  BOOST_TEST(address(m.data()) % kHugePage == 0u);
  BOOST_TEST(m.size() == (3u << 20) + page, "rounded up to whole pages");
  m.data()[m.size() - 1] = std::byte{7};
  BOOST_TEST((m.data()[m.size() - 1] == std::byte{7}));

  IoMemory empty(0, "test");
  BOOST_TEST(empty.size() == page, "never less than one page");
  BOOST_TEST(address(empty.data()) % kHugePage == 0u);
}

BOOST_AUTO_TEST_CASE(pre_faulted_and_advised_to_transparent_huge_pages) {
  IoMemory m(8u << 20, "test");
  const auto fields = mapping_of(m.data());
  BOOST_TEST_REQUIRE(!fields.empty(), "no mapping in /proc/self/smaps holds the memory");
  // Every page resident before anyone touches it.
  BOOST_TEST(kb(fields, "Rss") == kb(fields, "Size"));
  BOOST_TEST(kb(fields, "Size") >= 8 * 1024);
  if (!kernel_has_thp()) {
    BOOST_TEST_MESSAGE("no transparent huge pages on this kernel: advice not checked");
    return;
  }
  // "hg": madvise(MADV_HUGEPAGE), whatever the system-wide THP mode.
  BOOST_TEST(has_flag(fields, "hg"), "VmFlags:" << fields.at("VmFlags"));
}

BOOST_AUTO_TEST_CASE(a_size_no_mapping_can_have_is_refused_naming_its_owner) {
  BOOST_CHECK_EXCEPTION(IoMemory(std::numeric_limits<std::size_t>::max() - 4096, "test ring"),
                        Error, [](const Error& e) {
                          return e.code() == ErrorCode::kInvalidArgument &&
                                 e.where() == "test ring" &&
                                 e.message().find("too much memory") != std::string::npos;
                        });
}

BOOST_AUTO_TEST_CASE(the_staging_ring_is_made_of_it) {
  StagingRing ring(64 * kAlignment, 18);  // 4.5 MiB
  BOOST_TEST(address(ring.slot_data(0)) % kHugePage == 0u);
  const auto fields = mapping_of(ring.slot_data(0));
  BOOST_TEST(kb(fields, "Rss") == kb(fields, "Size"));
  if (kernel_has_thp()) BOOST_TEST(has_flag(fields, "hg"), "VmFlags:" << fields.at("VmFlags"));
}
