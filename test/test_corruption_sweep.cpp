#define BOOST_TEST_MODULE corruption_sweep
#include <boost/test/unit_test.hpp>

// A sweep of random damage over a small pristine checkpoint: 200 seeded
// single-bit flips in each of metadata.json, the data file's safetensors
// header region and its data region, then truncations to several lengths and
// appended bytes of each file. Every damaged copy must be caught by both
// verify (a fault naming the damaged file; for a flip in the data region,
// the extent that holds it) and load (a ringckpt::Error naming the file).
// The damaged file is restored between cases (the bit flipped back, or the
// pristine bytes written again) instead of copying the checkpoint each time.

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "ringckpt/ringckpt.hpp"
#include "test_util.hpp"

using namespace ringckpt;
using namespace ringckpt::test;
namespace fs = std::filesystem;

namespace {

constexpr int kFlipsPerRegion = 200;

// What verify and load read each damaged copy with: small_io() with a ring of
// two extents, the least a read takes. Every call maps and zeroes a fresh
// ring, over a thousand times a run: under ThreadSanitizer its size is most
// of the suite's time.
IoOptions sweep_io() {
  IoOptions io = small_io();
  io.ring_bytes = 2 * io.extent_size;
  return io;
}

// Whether verify of `dir` reports a fault naming `file` (and, where extent is
// not -1, that extent of it).
bool verify_catches(const fs::path& dir, const std::string& file, std::int64_t extent) {
  const VerifyReport r = verify(dir, sweep_io());
  const bool caught = any_fault(r, [&](const VerifyFault& f) {
    return ends_with(f.file, file) && (extent < 0 || f.extent == extent);
  });
  if (!caught) {
    BOOST_TEST_MESSAGE("verify missed damage to " << file << " (extent " << extent << "): "
                                                  << r.faults.size() << " fault(s)"
                                                  << faults_text(r));
  }
  return caught;
}

// Whether load of `dir` throws a ringckpt::Error naming `file`.
bool load_catches(const PristineCheckpoint& c, const fs::path& dir, const std::string& file) {
  ZeroedDestination d(c);
  try {
    LoadOptions o = load_options();
    o.io = sweep_io();
    load(d.sd, dir, o);
  } catch (const Error& e) {
    if (contains(e.what(), file)) return true;
    BOOST_TEST_MESSAGE("load's error does not name " << file << ": " << e.what());
    return false;
  } catch (const std::exception& e) {
    BOOST_TEST_MESSAGE("load threw something else than ringckpt::Error: " << e.what());
    return false;
  }
  BOOST_TEST_MESSAGE("load accepted damage to " << file);
  return false;
}

struct Region {
  std::string name;
  std::string file;  // its file's name in the checkpoint
  std::uint64_t begin, end;
  bool data;  // faults are expected at the extent of the flipped byte
};

}  // namespace

BOOST_AUTO_TEST_CASE(random_bit_flips_are_all_caught) {
  PristineCheckpoint c;
  const fs::path dir = c.copy("sweep");
  std::uint64_t header_end = c.file_size();  // where the first item begins
  for (const auto& [index, info] : c.md.storage_data) header_end = std::min(header_end, info.offset);
  BOOST_TEST_REQUIRE(header_end > 8u);
  const std::uint64_t metadata_size = fs::file_size(dir / kMetadataFile);
  const std::vector<Region> regions = {
      {"metadata.json", kMetadataFile, 0, metadata_size, false},
      {"safetensors header", c.data, 0, header_end, false},
      {"data", c.data, header_end, c.file_size(), true},
  };
  std::mt19937_64 rng(0x5eed'f1);
  for (const Region& region : regions) {
    int applied = 0, by_verify = 0, by_load = 0;
    std::uniform_int_distribution<std::uint64_t> where(region.begin, region.end - 1);
    for (int i = 0; i < kFlipsPerRegion; ++i) {
      const std::uint64_t offset = where(rng);
      const int bit = static_cast<int>(rng() % 8);
      BOOST_TEST_CONTEXT(region.name << ": bit " << bit << " of byte " << offset) {
        const fs::path p = dir / region.file;
        flip_bit(p, offset, bit);
        ++applied;
        const std::int64_t extent =
            region.data ? static_cast<std::int64_t>(offset / kSmallIoExtent) : -1;
        if (verify_catches(dir, region.file, extent)) ++by_verify;
        else BOOST_ERROR("verify missed it");
        if (load_catches(c, dir, region.file)) ++by_load;
        else BOOST_ERROR("load missed it");
        flip_bit(p, offset, bit);  // restored
      }
    }
    BOOST_TEST_MESSAGE(region.name << ": " << applied << " flips, verify caught " << by_verify
                                   << ", load caught " << by_load);
    BOOST_TEST(applied == kFlipsPerRegion);
    BOOST_TEST(by_verify == applied, region.name);
    BOOST_TEST(by_load == applied, region.name);
  }
  // Restored exactly: the swept copy verifies and loads again.
  BOOST_TEST(verify(dir, small_io()).ok());
  ZeroedDestination d(c);
  load(d.sd, dir, load_options());
  BOOST_TEST(d.matches(c));
}

BOOST_AUTO_TEST_CASE(truncations_and_extensions_are_all_caught) {
  PristineCheckpoint c;
  const fs::path dir = c.copy("cut");
  std::size_t planned = 0;
  int applied = 0, by_verify = 0, by_load = 0;
  for (const std::string& file : {std::string(kMetadataFile), c.data}) {
    const fs::path p = dir / file;
    const std::string pristine = slurp(p);
    const std::uint64_t size = pristine.size();
    std::vector<std::string> damaged;
    // Cut anywhere, the last byte (metadata.json's final newline) included.
    for (std::uint64_t n : {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{8}, size / 3,
                            size / 2, size - 4096, size - 1}) {
      if (n < size) damaged.push_back(pristine.substr(0, n));
    }
    // Anything appended is damage, whitespace included: metadata.json must
    // end exactly as written ("}" and one newline), as a data file must.
    std::vector<std::string> tails = {"x", "{}", std::string(4096, '\0'), "\n", " ", "\r\n"};
    // The last byte changed into other whitespace.
    for (const char last : {' ', '\r', '\t'}) {
      std::string changed = pristine;
      changed.back() = last;
      damaged.push_back(changed);
    }
    for (const std::string& tail : tails) damaged.push_back(pristine + tail);
    planned += damaged.size();
    for (const std::string& bytes : damaged) {
      BOOST_TEST_CONTEXT(file << " of " << bytes.size() << " bytes instead of " << size) {
        spit(p, bytes);
        ++applied;
        if (verify_catches(dir, file, -1)) ++by_verify;
        else BOOST_ERROR("verify missed it");
        if (load_catches(c, dir, file)) ++by_load;
        else BOOST_ERROR("load missed it");
      }
    }
    spit(p, pristine);  // restored
  }
  BOOST_TEST_MESSAGE(applied << " truncations and extensions, verify caught " << by_verify
                             << ", load caught " << by_load);
  BOOST_TEST(applied >= 20);
  BOOST_TEST(static_cast<std::size_t>(applied) == planned);
  BOOST_TEST(by_verify == applied);
  BOOST_TEST(by_load == applied);
  BOOST_TEST(verify(dir, small_io()).ok());
}
