#define BOOST_TEST_MODULE corruption_metadata
#include <boost/test/unit_test.hpp>

// Damaged or hostile metadata.json — broken checksums and JSON, data-file
// paths that escape the checkpoint, absurd sizes and extent sizes forged
// with a valid checksum — is refused by both ringckpt::load (an Error naming
// metadata.json and the fault) and ringckpt::verify (one fault naming
// metadata.json) before a byte of data is read or a buffer sized from it;
// nothing is delivered, and a fresh load of an intact copy still works.
// Damaged data files are test_corruption_data.cpp.

#include <sys/resource.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "format/extent_checksum.hpp"
#include "ringckpt/ringckpt.hpp"
#include "test_util.hpp"

using namespace ringckpt;
using namespace ringckpt::test;
namespace fs = std::filesystem;

// A flipped bit in metadata.json (that keeps the JSON valid) breaks its own
// checksum; other damage (invalid JSON, a cut file, an empty one) is corrupt
// too. Nothing is read, nothing delivered.
BOOST_AUTO_TEST_CASE(damaged_metadata_json) {
  PristineCheckpoint c;
  const std::string pristine = slurp(c.pristine / kMetadataFile);
  struct Case {
    std::string name;
    std::function<std::string(std::string)> damage;
    std::string fault;
  };
  const std::vector<Case> cases = {
      {"bit flip in a number",
       [](std::string s) {
         const auto at = s.find("\"extent_size\":65536");
         BOOST_TEST_REQUIRE(at != std::string::npos);
         s[at + 14] ^= 1;  // '6' -> '7': still valid JSON
         return s;
       },
       "checksum mismatch"},
      {"bit flip in a name",
       [](std::string s) {
         const auto at = s.find("\"dec.ids\"");
         BOOST_TEST_REQUIRE(at != std::string::npos);
         s[at + 1] ^= 4;  // 'd' -> '`'
         return s;
       },
       "checksum mismatch"},
      {"bit flip in the checksum",
       [](std::string s) {
         const auto at = s.rfind("\"checksum\":\"");
         BOOST_TEST_REQUIRE(at != std::string::npos);
         char& ch = s[at + 12];
         ch = ch == '0' ? '1' : '0';
         return s;
       },
       "checksum mismatch"},
      {"bit flip that breaks the JSON", [](std::string s) { s[0] ^= 1; return s; }, "JSON"},
      {"cut in half", [](std::string s) { return s.substr(0, s.size() / 2); }, "JSON"},
      {"empty", [](std::string) { return std::string(); }, "JSON"},
      // The document must end exactly as written, "}" and one newline: even
      // whitespace after it, which JSON ignores, is refused.
      {"a newline appended", [](std::string s) { return s + "\n"; }, "trailing bytes"},
      {"a space appended", [](std::string s) { return s + " "; }, "trailing bytes"},
      {"the final newline changed to a space",
       [](std::string s) {
         BOOST_TEST_REQUIRE(s.ends_with("}\n"));
         s.back() = ' ';
         return s;
       },
       "trailing bytes"},
      {"the final newline removed", [](std::string s) { s.pop_back(); return s; },
       "trailing bytes"},
  };
  int n = 0;
  for (const auto& k : cases) {
    BOOST_TEST_CONTEXT("metadata.json " << k.name) {
      const fs::path dir = c.copy("meta" + std::to_string(n++));
      spit(dir / kMetadataFile, k.damage(pristine));
      ZeroedDestination d(c);
      BOOST_CHECK_EXCEPTION(load(d.sd, dir, load_options()), Error,
                            error_is(ErrorCode::kCorrupt, {"metadata.json", k.fault}));
      BOOST_TEST(d.untouched());
      BOOST_CHECK_EXCEPTION(read_metadata(dir), Error,
                            error_is(ErrorCode::kCorrupt, {"metadata.json", k.fault}));
      const VerifyReport r = verify_dir(dir);
      BOOST_TEST_REQUIRE(r.faults.size() == 1u);
      BOOST_TEST(ends_with(r.faults[0].file, "metadata.json"));
      BOOST_TEST(contains(r.faults[0].message, k.fault));
      expect_intact(c);
    }
  }
}

// metadata.json, forged with a valid checksum, names a data file outside the
// checkpoint directory. The file there is a perfect copy of the real data
// file, so only the path check stands between it and the caller.
BOOST_AUTO_TEST_CASE(path_escaping_metadata) {
  PristineCheckpoint c;
  const fs::path parent = c.root / "escape";
  fs::create_directories(parent / "ckpt");
  fs::copy_file(c.pristine / c.data, parent / "escape.safetensors");
  fs::create_directories(parent / "ckpt" / "sub");
  fs::copy_file(c.pristine / c.data, parent / "ckpt" / "sub" / "dir.safetensors");
  const std::vector<fs::path> bystanders = {parent / "escape.safetensors",
                                            parent / "ckpt" / "sub" / "dir.safetensors",
                                            "/etc/passwd"};
  std::vector<std::pair<fs::path, FileStamp>> before;
  for (const auto& p : bystanders) {
    if (fs::exists(p)) before.emplace_back(p, stamp(p));
  }

  for (const std::string bad : {"../escape.safetensors", "/etc/passwd", "sub/dir.safetensors",
                                "..", ".", "metadata.json", "./__0_0.safetensors"}) {
    BOOST_TEST_CONTEXT("data file named " << bad) {
      const fs::path dir = parent / "ckpt";
      fs::copy_file(c.pristine / kMetadataFile, dir / kMetadataFile,
                    fs::copy_options::overwrite_existing);
      fs::copy_file(c.pristine / c.data, dir / c.data,
                    fs::copy_options::overwrite_existing);
      forge_metadata(dir, [&](Metadata& md) {
        md.files[0].relative_path = bad;
        for (auto& [index, info] : md.storage_data) info.relative_path = bad;
      });
      ZeroedDestination d(c);
      BOOST_CHECK_EXCEPTION(load(d.sd, dir, load_options()), Error,
                            error_is(ErrorCode::kCorrupt, {"metadata.json", "'" + bad + "'"}));
      BOOST_TEST(d.untouched());
      const VerifyReport r = verify_dir(dir);
      BOOST_TEST_REQUIRE(r.faults.size() == 1u);
      BOOST_TEST(ends_with(r.faults[0].file, "metadata.json"));
      BOOST_TEST(contains(r.faults[0].message, bad));
      expect_intact(c);
    }
  }
  // The files outside were neither changed nor (as the refusals show) used.
  for (const auto& [p, was] : before) {
    BOOST_TEST_INFO("bystander " << p);
    BOOST_TEST((stamp(p) == was));
  }
  BOOST_TEST(!fs::exists(parent / "ckpt" / "escape.safetensors"));
}

// Absurd sizes in a forged (validly checksummed) metadata.json: caught when
// metadata.json is read, before a byte of data is touched or a buffer sized.
BOOST_AUTO_TEST_CASE(absurd_sizes_in_metadata) {
  PristineCheckpoint c;
  struct Case {
    std::string name;
    std::function<void(Metadata&)> forge;
    std::vector<std::string> needles;
  };
  const std::vector<Case> cases = {
      {"file size 2^61", [](Metadata& md) { md.files[0].size = std::uint64_t{1} << 61; },
       {"metadata.json", c.data}},
      {"file size 2^64-1",
       [](Metadata& md) { md.files[0].size = std::numeric_limits<std::uint64_t>::max(); },
       {"metadata.json", "files[0].size"}},
      {"storage offset 2^62",
       [](Metadata& md) {
         for (auto& [index, info] : md.storage_data) {
           if (index.fqn == "dec.ids") info.offset = std::uint64_t{1} << 62;
         }
       },
       {"metadata.json", "dec.ids", "beyond the end"}},
      {"tensor shape 2^31 x 2^31 x 2^31",
       [](Metadata& md) {
         auto& t = std::get<TensorStorageMetadata>(md.state_dict_metadata.at("dec.ids"));
         t.size = {std::int64_t{1} << 31, std::int64_t{1} << 31, std::int64_t{1} << 31};
       },
       {"metadata.json", "dec.ids", "absurdly large"}},
      {"chunk length beyond the tensor",
       [](Metadata& md) {
         auto& t = std::get<TensorStorageMetadata>(md.state_dict_metadata.at("dec.ids"));
         t.chunks[0].sizes = {std::int64_t{1} << 40};
       },
       {"metadata.json", "dec.ids"}},
  };
  int n = 0;
  for (const auto& k : cases) {
    BOOST_TEST_CONTEXT("forged metadata: " << k.name) {
      const fs::path dir = c.copy("absurd" + std::to_string(n++));
      forge_metadata(dir, k.forge);
      ZeroedDestination d(c);
      BOOST_CHECK_EXCEPTION(load(d.sd, dir, load_options()), Error,
                            error_is(ErrorCode::kCorrupt, k.needles));
      BOOST_TEST(d.untouched());
      const VerifyReport r = verify_dir(dir);
      BOOST_TEST_REQUIRE(r.faults.size() == 1u);
      BOOST_TEST(ends_with(r.faults[0].file, "metadata.json"));
      expect_intact(c);
    }
  }
}

namespace {

// Caps this process's address space for a scope, so that a library that
// believed an absurd size fails to map it instead of taking the machine.
class AddressSpaceCap {
 public:
  explicit AddressSpaceCap(std::uint64_t headroom) {
    ::getrlimit(RLIMIT_AS, &old_);
    std::ifstream statm("/proc/self/statm");
    std::uint64_t pages = 0;
    statm >> pages;
    rlimit cap = old_;
    cap.rlim_cur = pages * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE)) + headroom;
    if (old_.rlim_cur != RLIM_INFINITY && old_.rlim_cur < cap.rlim_cur) cap.rlim_cur = old_.rlim_cur;
    active_ = ::setrlimit(RLIMIT_AS, &cap) == 0;
  }
  ~AddressSpaceCap() {
    if (active_) ::setrlimit(RLIMIT_AS, &old_);
  }
  bool active() const { return active_; }

 private:
  rlimit old_{};
  bool active_ = false;
};

}  // namespace

// An absurd extent size (2^40, one checksum for the whole file: consistent
// as far as counting goes) is a size the reader would believe: it sizes its
// ring slots for the largest extent on disk, 2 x 2^40 bytes of pre-faulted
// memory. It must be refused as corrupt metadata, naming metadata.json and
// the field, before any buffer is sized from it.
BOOST_AUTO_TEST_CASE(absurd_extent_size_in_metadata) {
  PristineCheckpoint c;
  const fs::path dir = c.copy("absurd-extent");
  const std::string data = slurp(dir / c.data);
  forge_metadata(dir, [&](Metadata& md) {
    md.files[0].extent_size = std::uint64_t{1} << 40;
    md.files[0].extent_checksums = {checksum_of(std::as_bytes(std::span<const char>(data)))};
  });
  AddressSpaceCap cap(std::uint64_t{4} << 30);  // the suite itself needs far less
  BOOST_TEST_REQUIRE(cap.active());
  ZeroedDestination d(c);
  BOOST_CHECK_EXCEPTION(load(d.sd, dir, load_options()), Error,
                        error_is(ErrorCode::kCorrupt, {"metadata.json", "extent_size"}));
  BOOST_TEST(d.untouched());
  try {
    const VerifyReport r = verify_dir(dir);
    BOOST_TEST_REQUIRE(r.faults.size() == 1u);
    BOOST_TEST(ends_with(r.faults[0].file, "metadata.json"));
    BOOST_TEST(contains(r.faults[0].message, "extent_size"));
  } catch (const Error& e) {
    BOOST_ERROR("verify threw instead of reporting a fault: " << e.what());
  }
}
