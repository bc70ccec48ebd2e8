#define BOOST_TEST_MODULE corruption
#include <boost/test/unit_test.hpp>

// Every kind of bad checkpoint is caught by both ringckpt::load (an Error with
// the right code, whose what() names the file and the fault) and
// ringckpt::verify (a fault naming the file and extent); no damaged byte
// reaches the caller, and a fresh load of an intact copy still works after
// every failure.

#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "io/data_file.hpp"
#include "format/extent_checksum.hpp"
#include "format/metadata_json.hpp"
#include "ringckpt/ringckpt.hpp"
#include "format/safetensors.hpp"
#include "test_util.hpp"

using namespace ringckpt;
using ringckpt::test::OwnedTensor;
using ringckpt::test::TempDir;
using ringckpt::test::small_io;
namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t kExtent = 64 << 10;  // small_io().extent_size
const std::string kDataFile = "__0_0.safetensors";

// ---------------------------------------------------------------- files

std::string slurp(const fs::path& p) { return read_small_file(p); }

void spit(const fs::path& p, std::string_view content) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(content.data(), static_cast<std::streamsize>(content.size()));
  BOOST_TEST_REQUIRE(out.good());
}

void flip_bit(const fs::path& p, std::uint64_t offset, int bit) {
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  BOOST_TEST_REQUIRE(f.good());
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.get(c);
  BOOST_TEST_REQUIRE(f.good());
  c = static_cast<char>(c ^ (1 << bit));
  f.seekp(static_cast<std::streamoff>(offset));
  f.put(c);
  f.flush();
  BOOST_TEST_REQUIRE(f.good());
}

void overwrite_at(const fs::path& p, std::uint64_t offset, std::string_view bytes) {
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  f.flush();
  BOOST_TEST_REQUIRE(f.good());
}

struct FileStamp {
  std::string content;
  std::int64_t mtime_ns = 0;
  friend bool operator==(const FileStamp&, const FileStamp&) = default;
};

FileStamp stamp(const fs::path& p) {
  struct stat st {};
  BOOST_TEST_REQUIRE(::stat(p.c_str(), &st) == 0);
  return {slurp(p), std::int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec};
}

// ---------------------------------------------------------------- errors

bool contains(const std::string& text, const std::string& needle) {
  return text.find(needle) != std::string::npos;
}

// A predicate for BOOST_CHECK_EXCEPTION: an Error with this code whose what()
// holds every needle.
auto error_is(ErrorCode code, std::vector<std::string> needles) {
  return [code, needles = std::move(needles)](const Error& e) {
    const std::string what = e.what();
    bool ok = e.code() == code;
    for (const auto& n : needles) ok = ok && contains(what, n);
    if (ok) {
      BOOST_TEST_MESSAGE("caught as expected: " << what);
    } else {
      std::string want;
      for (const auto& n : needles) want += " '" + n + "'";
      BOOST_TEST_MESSAGE("unexpected error [" << to_string(e.code()) << "] " << what
                                              << "; wanted [" << to_string(code) << "]" << want);
    }
    return ok;
  };
}

std::string faults_text(const VerifyReport& r) {
  std::string out;
  for (const auto& f : r.faults) {
    out += "\n  " + f.file + " extent " + std::to_string(f.extent) + " [" +
           std::to_string(f.offset) + "+" + std::to_string(f.length) + "]: " + f.message;
  }
  return out;
}

VerifyReport verify_dir(const fs::path& dir) {
  VerifyReport r = verify(dir, small_io());
  BOOST_TEST_MESSAGE("verify " << dir.filename() << ": " << r.faults.size() << " fault(s)"
                               << faults_text(r));
  return r;
}

LoadOptions load_options() {
  LoadOptions o;
  o.io = small_io();
  return o;
}
SaveOptions save_options() {
  SaveOptions o;
  o.io = small_io();
  return o;
}

// ---------------------------------------------------------------- the checkpoint

// A checkpoint of a few hundred KiB over 64 KiB extents, in plan order:
//   enc.weight F32 [100, 300]  120000 B   extents 0..1 (after the 4 KiB header)
//   config     blob            36 B       extent 1
//   enc.scale  BF16 [200, 257] 102800 B   extents 1..3
//   dec.ids    I32 [40000]     160000 B   extents 3..5 (the last one partial)
struct Checkpoint {
  TempDir root;
  fs::path pristine = root / "pristine";
  OwnedTensor weight{DType::F32, {100, 300}, 11};
  OwnedTensor scale{DType::BF16, {200, 257}, 12};
  OwnedTensor ids{DType::I32, {40000}, 13};
  Bytes config = bytes_of(std::string_view("{\"lr\": 0.001, \"betas\": [0.9, 0.95]}"));
  Metadata md;

  Checkpoint() {
    StateDict sd;
    sd.add("enc.weight", weight.view);
    sd.add("config", config);
    sd.add("enc.scale", scale.view);
    sd.add("dec.ids", ids.view);
    save(sd, pristine, save_options());
    md = read_metadata(pristine);
    BOOST_TEST_REQUIRE(md.files.size() == 1u);
    BOOST_TEST_REQUIRE(md.files[0].extent_size == kExtent);
    BOOST_TEST_REQUIRE(md.files[0].extent_checksums.size() == 6u);
  }

  // A copy of the pristine checkpoint to damage.
  fs::path copy(const std::string& name) const {
    const fs::path p = root / name;
    fs::copy(pristine, p, fs::copy_options::recursive);
    return p;
  }

  std::uint64_t file_size() const { return md.files[0].size; }

  // Where the item `fqn` lies in the data file.
  StorageInfo where(const std::string& fqn) const {
    for (const auto& [index, info] : md.storage_data) {
      if (index.fqn == fqn) return info;
    }
    BOOST_FAIL("no storage entry for " << fqn);
    return {};
  }

  const OwnedTensor& tensor(const std::string& fqn) const {
    if (fqn == "enc.weight") return weight;
    if (fqn == "enc.scale") return scale;
    return ids;
  }
};

// Zeroed buffers for every item of the checkpoint, to load into.
struct Destination {
  OwnedTensor weight, scale, ids;
  StateDict sd;

  explicit Destination(const Checkpoint& c, bool with_all = true)
      : weight(c.weight.blank_like()), scale(c.scale.blank_like()), ids(c.ids.blank_like()) {
    if (with_all) {
      sd.add("enc.weight", weight.view);
      sd.add("config", Bytes{});
      sd.add("enc.scale", scale.view);
    }
    sd.add("dec.ids", ids.view);
  }
  Destination(const Destination&) = delete;
  Destination& operator=(const Destination&) = delete;

  const OwnedTensor& tensor(const std::string& fqn) const {
    if (fqn == "enc.weight") return weight;
    if (fqn == "enc.scale") return scale;
    return ids;
  }
  const Bytes* config() const {
    const StateValue* v = sd.find("config");
    return v ? &std::get<Bytes>(*v) : nullptr;
  }
  static bool zero(const OwnedTensor& t) {
    return std::all_of(t.storage.begin(), t.storage.end(), [](std::byte b) { return b == std::byte{0}; });
  }
  // Nothing was delivered: every buffer is still as it was made.
  bool untouched() const {
    return zero(weight) && zero(scale) && zero(ids) && (!config() || config()->empty());
  }
  bool matches(const Checkpoint& c) const {
    return weight.storage == c.weight.storage && scale.storage == c.scale.storage &&
           ids.storage == c.ids.storage && config() && *config() == c.config;
  }
};

// Nothing already saved was lost: a fresh load of the intact copy still works.
void expect_intact(const Checkpoint& c) {
  Destination d(c);
  load(d.sd, c.pristine, load_options());
  BOOST_TEST(d.matches(c));
  BOOST_TEST(verify(c.pristine, small_io()).ok());
}

// Re-encodes metadata.json of `dir` after `edit`, with a valid checksum, so
// that only the checks of meaning can catch the forgery.
void forge_metadata(const fs::path& dir, const std::function<void(Metadata&)>& edit) {
  Metadata md = read_metadata(dir);
  edit(md);
  spit(dir / kMetadataFile, encode_metadata(md));
}

bool any_fault(const VerifyReport& r, const std::function<bool(const VerifyFault&)>& pred) {
  return std::any_of(r.faults.begin(), r.faults.end(), pred);
}

bool ends_with(const std::string& s, const std::string& suffix) { return s.ends_with(suffix); }

}  // namespace

// ===========================================================================
// A flipped bit in tensor (or blob) bytes: the extent that holds it fails its
// checksum; load names the file, the extent and the fault and delivers none
// of that extent; verify lists exactly that extent.

BOOST_AUTO_TEST_CASE(flipped_bit_in_item_bytes) {
  Checkpoint c;
  struct Case {
    std::string fqn;
    std::uint64_t byte;  // within the item
  };
  const std::vector<Case> cases = {
      {"enc.weight", 70000},  // extent 1
      {"config", 5},          // a blob
      {"enc.scale", 100},     // first bytes of enc.scale, extent 1
      {"enc.scale", 90000},   // extent 3, shared with dec.ids
      {"dec.ids", 159999},    // the last byte of the file, in the partial tail extent
  };
  int n = 0;
  for (const auto& k : cases) {
    BOOST_TEST_CONTEXT("bit flipped in " << k.fqn << " byte " << k.byte) {
      const fs::path dir = c.copy("flip" + std::to_string(n));
      const StorageInfo at = c.where(k.fqn);
      const std::uint64_t off = at.offset + k.byte;
      const std::uint64_t extent = off / kExtent;
      const std::uint64_t lo = extent * kExtent, hi = std::min(c.file_size(), lo + kExtent);
      flip_bit(dir / kDataFile, off, n % 8);
      ++n;

      Destination d(c);
      BOOST_CHECK_EXCEPTION(
          load(d.sd, dir, load_options()), Error,
          error_is(ErrorCode::kCorrupt, {kDataFile, "extent " + std::to_string(extent) + " ",
                                         "checksum mismatch"}));
      // Not one byte of the bad extent reached the caller.
      for (const std::string fqn : {"enc.weight", "enc.scale", "dec.ids"}) {
        const StorageInfo s = c.where(fqn);
        const std::uint64_t a = std::max(lo, s.offset), b = std::min(hi, s.offset + s.length);
        if (a >= b) continue;
        const auto& t = d.tensor(fqn);
        BOOST_TEST_INFO("destination " << fqn << " bytes " << a - s.offset << ".." << b - s.offset);
        BOOST_TEST(std::all_of(t.storage.begin() + (a - s.offset), t.storage.begin() + (b - s.offset),
                               [](std::byte x) { return x == std::byte{0}; }));
      }
      BOOST_TEST(d.config()->empty());  // blobs are handed over only after every extent passed

      const VerifyReport r = verify_dir(dir);
      BOOST_TEST_REQUIRE(r.faults.size() == 1u);
      BOOST_TEST(ends_with(r.faults[0].file, kDataFile));
      BOOST_TEST(r.faults[0].extent == static_cast<std::int64_t>(extent));
      BOOST_TEST(r.faults[0].offset == lo);
      BOOST_TEST(r.faults[0].length == hi - lo);
      BOOST_TEST(contains(r.faults[0].message, "checksum mismatch"));
      BOOST_TEST(r.extents == 6u);
      expect_intact(c);
    }
  }
}

// A flipped bit inside the JSON of the safetensors header. Load reads and
// verifies the header extent whatever it loads, so even a load of a tensor
// that lies far from the header fails, naming the header.
BOOST_AUTO_TEST_CASE(flipped_bit_in_safetensors_header) {
  Checkpoint c;
  for (std::uint64_t byte : {std::uint64_t{20}, std::uint64_t{3}, std::uint64_t{4000}}) {
    BOOST_TEST_CONTEXT("bit flipped in header byte " << byte) {
      const fs::path dir = c.copy("header" + std::to_string(byte));
      flip_bit(dir / kDataFile, byte, 1);
      const auto fails = error_is(ErrorCode::kCorrupt, {kDataFile, "extent 0 ", "safetensors header",
                                                        "checksum mismatch"});
      {
        Destination d(c);
        BOOST_CHECK_EXCEPTION(load(d.sd, dir, load_options()), Error, fails);
        // enc.weight starts in extent 0: none of its bytes there were delivered.
        const std::uint64_t in_extent0 = kExtent - c.where("enc.weight").offset;
        BOOST_TEST(std::all_of(d.weight.storage.begin(), d.weight.storage.begin() + in_extent0,
                               [](std::byte x) { return x == std::byte{0}; }));
        BOOST_TEST(d.config()->empty());
      }
      {
        BOOST_TEST_REQUIRE(c.where("dec.ids").offset >= kExtent);  // far from extent 0
        Destination d(c, /*with_all=*/false);
        BOOST_CHECK_EXCEPTION(load(d.sd, dir, load_options()), Error, fails);
      }
      const VerifyReport r = verify_dir(dir);
      BOOST_TEST(!r.ok());
      // The extent that holds the header fails its checksum, and the header
      // itself no longer parses (or its length prefix is wrong): a whole-file
      // fault that says so.
      BOOST_TEST(any_fault(r, [](const VerifyFault& f) {
        return f.extent == 0 && contains(f.message, "checksum mismatch");
      }));
      BOOST_TEST(any_fault(r, [](const VerifyFault& f) {
        return f.extent == -1 && contains(f.message, "safetensors header");
      }));
      for (const auto& f : r.faults) BOOST_TEST(ends_with(f.file, kDataFile));
      expect_intact(c);
    }
  }
}

// A flipped bit in metadata.json (that keeps the JSON valid) breaks its own
// checksum; other damage (invalid JSON, a cut file, an empty one) is corrupt
// too. Nothing is read, nothing delivered.
BOOST_AUTO_TEST_CASE(damaged_metadata_json) {
  Checkpoint c;
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
  };
  int n = 0;
  for (const auto& k : cases) {
    BOOST_TEST_CONTEXT("metadata.json " << k.name) {
      const fs::path dir = c.copy("meta" + std::to_string(n++));
      spit(dir / kMetadataFile, k.damage(pristine));
      Destination d(c);
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

// A data file shorter or longer than metadata.json records.
BOOST_AUTO_TEST_CASE(truncated_or_extended_data_file) {
  Checkpoint c;
  const std::uint64_t size = c.file_size();
  struct Case {
    std::uint64_t new_size;
    std::string fault;
  };
  const std::vector<Case> cases = {
      {size - 1, "truncated"},   {size - 5000, "truncated"}, {size - kExtent, "truncated"},
      {100, "truncated"},        {4, "truncated"},           {0, "truncated"},
      {size + 1, "more than"},   {size + kExtent, "more than"},
  };
  int n = 0;
  for (const auto& k : cases) {
    BOOST_TEST_CONTEXT("data file of " << k.new_size << " bytes, " << size << " recorded") {
      const fs::path dir = c.copy("size" + std::to_string(n++));
      fs::resize_file(dir / kDataFile, k.new_size);
      Destination d(c);
      BOOST_CHECK_EXCEPTION(load(d.sd, dir, load_options()), Error,
                            error_is(ErrorCode::kCorrupt, {kDataFile, k.fault}));
      BOOST_TEST(d.untouched());
      const VerifyReport r = verify_dir(dir);
      BOOST_TEST_REQUIRE(r.faults.size() == 1u);
      BOOST_TEST(ends_with(r.faults[0].file, kDataFile));
      BOOST_TEST(r.faults[0].extent == -1);
      BOOST_TEST(contains(r.faults[0].message, k.fault));
      expect_intact(c);
    }
  }
}

BOOST_AUTO_TEST_CASE(missing_files) {
  Checkpoint c;
  {
    const fs::path dir = c.copy("no-data");
    fs::remove(dir / kDataFile);
    Destination d(c);
    BOOST_CHECK_EXCEPTION(load(d.sd, dir, load_options()), Error,
                          error_is(ErrorCode::kNotFound, {kDataFile, "missing"}));
    BOOST_TEST(d.untouched());
    const VerifyReport r = verify_dir(dir);
    BOOST_TEST_REQUIRE(r.faults.size() == 1u);
    BOOST_TEST(ends_with(r.faults[0].file, kDataFile));
    BOOST_TEST(contains(r.faults[0].message, "missing"));
    expect_intact(c);
  }
  {
    const fs::path dir = c.copy("no-metadata");
    fs::remove(dir / kMetadataFile);
    Destination d(c);
    BOOST_CHECK_EXCEPTION(load(d.sd, dir, load_options()), Error,
                          error_is(ErrorCode::kNotFound, {"metadata.json"}));
    const VerifyReport r = verify_dir(dir);
    BOOST_TEST_REQUIRE(r.faults.size() == 1u);
    BOOST_TEST(ends_with(r.faults[0].file, "metadata.json"));
    expect_intact(c);
  }
}

// metadata.json, forged with a valid checksum, names a data file outside the
// checkpoint directory. The file there is a perfect copy of the real data
// file, so only the path check stands between it and the caller.
BOOST_AUTO_TEST_CASE(path_escaping_metadata) {
  Checkpoint c;
  const fs::path parent = c.root / "escape";
  fs::create_directories(parent / "ckpt");
  fs::copy_file(c.pristine / kDataFile, parent / "escape.safetensors");
  fs::create_directories(parent / "ckpt" / "sub");
  fs::copy_file(c.pristine / kDataFile, parent / "ckpt" / "sub" / "dir.safetensors");
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
      fs::copy_file(c.pristine / kDataFile, dir / kDataFile, fs::copy_options::overwrite_existing);
      forge_metadata(dir, [&](Metadata& md) {
        md.files[0].relative_path = bad;
        for (auto& [index, info] : md.storage_data) info.relative_path = bad;
      });
      Destination d(c);
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

// A data file whose 8-byte header length claims 2^60 bytes. With the extent
// checksum fixed up in a forged metadata.json, only the header check can
// catch it: verify reports a clear header fault. Load trusts metadata.json's
// byte ranges and checksums (it does not parse the safetensors header), so it
// either refuses the file or delivers the intact tensor bytes, never garbage.
BOOST_AUTO_TEST_CASE(absurd_header_length) {
  Checkpoint c;
  std::string prefix(8, '\0');
  const std::uint64_t absurd = std::uint64_t{1} << 60;
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>((absurd >> (8 * i)) & 0xff);

  {  // Checksum left stale: load catches it by the header extent's checksum.
    const fs::path dir = c.copy("absurd-stale");
    overwrite_at(dir / kDataFile, 0, prefix);
    Destination d(c);
    BOOST_CHECK_EXCEPTION(load(d.sd, dir, load_options()), Error,
                          error_is(ErrorCode::kCorrupt, {kDataFile, "safetensors header"}));
    const VerifyReport r = verify_dir(dir);
    BOOST_TEST(any_fault(r, [](const VerifyFault& f) {
      return f.extent == -1 && contains(f.message, "length prefix");
    }));
    BOOST_TEST(any_fault(r, [](const VerifyFault& f) { return f.extent == 0; }));
    expect_intact(c);
  }
  {  // Checksum fixed up: only the header check can catch it.
    const fs::path dir = c.copy("absurd-forged");
    overwrite_at(dir / kDataFile, 0, prefix);
    const std::string data = slurp(dir / kDataFile);
    const std::uint64_t sum = checksum_of(
        std::as_bytes(std::span<const char>(data.data(), std::min<std::size_t>(data.size(), kExtent))));
    forge_metadata(dir, [&](Metadata& md) { md.files[0].extent_checksums[0] = sum; });
    BOOST_TEST_REQUIRE(read_metadata(dir).files[0].extent_checksums[0] == sum);

    const VerifyReport r = verify_dir(dir);
    BOOST_TEST_REQUIRE(r.faults.size() == 1u);
    BOOST_TEST(ends_with(r.faults[0].file, kDataFile));
    BOOST_TEST(r.faults[0].extent == -1);
    BOOST_TEST(contains(r.faults[0].message, "safetensors header"));
    BOOST_TEST(contains(r.faults[0].message, "length prefix"));
    BOOST_TEST(contains(r.faults[0].message, std::to_string(absurd)));

    Destination d(c);
    try {
      load(d.sd, dir, load_options());
      BOOST_TEST_MESSAGE("load delivered the (intact) tensor bytes of the forged file");
      BOOST_TEST(d.matches(c));
    } catch (const Error& e) {
      BOOST_TEST_MESSAGE("load refused: " << e.what());
      BOOST_TEST((e.code() == ErrorCode::kCorrupt && contains(e.what(), kDataFile)));
    }
    expect_intact(c);
  }
}

// Absurd sizes in a forged (validly checksummed) metadata.json: caught when
// metadata.json is read, before a byte of data is touched or a buffer sized.
BOOST_AUTO_TEST_CASE(absurd_sizes_in_metadata) {
  Checkpoint c;
  struct Case {
    std::string name;
    std::function<void(Metadata&)> forge;
    std::vector<std::string> needles;
  };
  const std::vector<Case> cases = {
      {"file size 2^61", [](Metadata& md) { md.files[0].size = std::uint64_t{1} << 61; },
       {"metadata.json", kDataFile}},
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
      Destination d(c);
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
  Checkpoint c;
  const fs::path dir = c.copy("absurd-extent");
  const std::string data = slurp(dir / kDataFile);
  forge_metadata(dir, [&](Metadata& md) {
    md.files[0].extent_size = std::uint64_t{1} << 40;
    md.files[0].extent_checksums = {checksum_of(std::as_bytes(std::span<const char>(data)))};
  });
  AddressSpaceCap cap(std::uint64_t{4} << 30);  // the suite itself needs far less
  BOOST_TEST_REQUIRE(cap.active());
  Destination d(c);
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

BOOST_AUTO_TEST_CASE(dtype_mismatch_names_the_key) {
  Checkpoint c;
  OwnedTensor wrong(DType::BF16, {100, 300}, 0);
  std::fill(wrong.storage.begin(), wrong.storage.end(), std::byte{0});
  StateDict sd;
  sd.add("enc.weight", wrong.view);
  BOOST_CHECK_EXCEPTION(load(sd, c.pristine, load_options()), Error, [](const Error& e) {
    BOOST_TEST_MESSAGE(e.what());
    return e.code() == ErrorCode::kMismatch && e.where() == "enc.weight" &&
           contains(e.what(), "F32") && contains(e.what(), "BF16");
  });
  BOOST_TEST(Destination::zero(wrong));
  expect_intact(c);
}

// A rank that writes several data files: a fault in the second one names
// that file, not the first.
BOOST_AUTO_TEST_CASE(fault_in_a_second_data_file_names_it) {
  TempDir root;
  std::vector<OwnedTensor> ts;
  for (int i = 0; i < 4; ++i) ts.emplace_back(DType::F32, Shape{100, 100}, 70 + i);
  StateDict sd;
  for (int i = 0; i < 4; ++i) sd.add("t" + std::to_string(i), ts[i].view);
  SaveOptions so = save_options();
  so.io.max_file_bytes = 80000;
  save(sd, root / "ckpt", so);
  BOOST_TEST_REQUIRE(fs::exists(root / "ckpt" / "__0_1.safetensors"));
  flip_bit(root / "ckpt" / "__0_1.safetensors", 4096 + 777, 5);

  std::vector<OwnedTensor> back;
  for (const auto& t : ts) back.push_back(t.blank_like());
  StateDict into;
  for (int i = 0; i < 4; ++i) into.add("t" + std::to_string(i), back[i].view);
  BOOST_CHECK_EXCEPTION(load(into, root / "ckpt", load_options()), Error,
                        error_is(ErrorCode::kCorrupt, {"__0_1.safetensors", "extent 0 ",
                                                       "checksum mismatch"}));
  const VerifyReport r = verify_dir(root / "ckpt");
  BOOST_TEST_REQUIRE(r.faults.size() == 1u);
  BOOST_TEST(ends_with(r.faults[0].file, "__0_1.safetensors"));
  BOOST_TEST(r.faults[0].extent == 0);
}

// ===========================================================================
// A full disk: a 1 MiB tmpfs. An older checkpoint in a sibling directory on
// the same mount stays loadable; a 4 MiB save fails with kIo naming the data
// file and ENOSPC, commits nothing and leaves nothing behind.

namespace {

class TmpfsMount {
 public:
  explicit TmpfsMount(const char* options) {
    mounted_ = ::mount("tmpfs", dir_.path().c_str(), "tmpfs", 0, options) == 0;
    if (!mounted_) error_ = std::strerror(errno);
  }
  ~TmpfsMount() {
    if (mounted_) ::umount2(dir_.path().c_str(), MNT_DETACH);
  }
  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }
  const fs::path& path() const { return dir_.path(); }

 private:
  TempDir dir_;
  bool mounted_ = false;
  std::string error_;
};

}  // namespace

BOOST_AUTO_TEST_CASE(full_disk) {
  TmpfsMount mnt("size=1m");
  if (!mnt.mounted()) {
    BOOST_TEST_MESSAGE("cannot mount a 1 MiB tmpfs here (" << mnt.error()
                                                           << "): the full-disk case is skipped");
    return;
  }
  const fs::path old_dir = mnt.path() / "step-100";
  const fs::path new_dir = mnt.path() / "step-200";

  OwnedTensor small(DType::F32, {64, 100}, 21);  // 25 KiB
  {
    StateDict sd;
    sd.add("w", small.view);
    sd.add("step", bytes_of(std::int64_t{100}));
    save(sd, old_dir, save_options());
  }
  const std::string old_metadata = slurp(old_dir / kMetadataFile);

  OwnedTensor big(DType::F32, {1024, 1024}, 22);  // 4 MiB: four times the disk
  StateDict sd;
  sd.add("w", big.view);
  sd.add("step", bytes_of(std::int64_t{200}));
  BOOST_CHECK_EXCEPTION(save(sd, new_dir, save_options()), Error,
                        error_is(ErrorCode::kIo, {(new_dir / kDataFile).string(),
                                                  std::strerror(ENOSPC)}));
  // Nothing committed, nothing left behind.
  BOOST_TEST(!fs::exists(new_dir / kMetadataFile));
  BOOST_TEST(!fs::exists(new_dir / "metadata.json.tmp"));
  if (fs::exists(new_dir)) {
    for (const auto& e : fs::directory_iterator(new_dir)) {
      BOOST_ERROR("left behind after the failed save: " << e.path());
    }
  }
  // The older checkpoint on the same full disk is untouched and loadable.
  BOOST_TEST(slurp(old_dir / kMetadataFile) == old_metadata);
  OwnedTensor back = small.blank_like();
  StateDict into;
  into.add("w", back.view);
  into.add("step", Bytes{});
  load(into, old_dir, load_options());
  BOOST_TEST((back.storage == small.storage));
  std::int64_t step = 0;
  std::memcpy(&step, std::get<Bytes>(*into.find("step")).data(), sizeof step);
  BOOST_TEST(step == 100);
  BOOST_TEST(verify(old_dir, small_io()).ok());

  // The space the failed save took is free again: a save that fits succeeds.
  StateDict again;
  again.add("w", small.view);
  save(again, new_dir, save_options());
  BOOST_TEST(verify(new_dir, small_io()).ok());
}
