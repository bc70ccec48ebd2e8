// test/test_util.hpp — scratch directories and seeded tensors for the suites.
#pragma once

#include <cstddef>
#include <cstdint>
#include <fcntl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "ringckpt/io_options.hpp"
#include "ringckpt/tensor.hpp"

namespace ringckpt::test {

// A fresh directory, removed with everything in it on destruction. The
// default root is on the machine's disk (ext4 here); /dev/shm is tmpfs.
class TempDir {
 public:
  explicit TempDir(const std::filesystem::path& root = std::filesystem::temp_directory_path()) {
    std::random_device rd;
    path_ = root / ("ringckpt-test-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::permissions(path_, std::filesystem::perms::owner_all,
                                 std::filesystem::perm_options::add, ignored);
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// Whether the file system holding `dir` grants O_DIRECT (tmpfs does since
// Linux 6.6, ext4 does, ramfs does not).
inline bool grants_o_direct(const std::filesystem::path& dir) {
  const std::filesystem::path probe = dir / ".o_direct_probe";
  int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_DIRECT | O_CLOEXEC, 0644);
  if (fd >= 0) ::close(fd);
  std::filesystem::remove(probe);
  return fd >= 0;
}

// A ramfs mounted on a fresh directory: a file system that refuses O_DIRECT.
// mounted() is false where mounting is not allowed (no CAP_SYS_ADMIN).
class RamfsMount {
 public:
  RamfsMount() : dir_() {
    mounted_ = ::mount("ramfs", dir_.path().c_str(), "ramfs", 0, nullptr) == 0;
  }
  ~RamfsMount() {
    if (mounted_) ::umount2(dir_.path().c_str(), MNT_DETACH);
  }
  bool mounted() const { return mounted_; }
  const std::filesystem::path& path() const { return dir_.path(); }

 private:
  TempDir dir_;
  bool mounted_ = false;
};

// Owned storage for a tensor, filled with seeded pseudo-random bytes.
struct OwnedTensor {
  std::vector<std::byte> storage;
  TensorView view;

  OwnedTensor(DType dtype, Shape shape, std::uint64_t seed) {
    view.dtype = dtype;
    view.shape = std::move(shape);
    storage.resize(view.nbytes());
    std::mt19937_64 rng(seed);
    for (auto& b : storage) b = static_cast<std::byte>(rng());
    view.data = storage.data();
  }
  // A zeroed tensor of the same dtype and shape, to load into.
  OwnedTensor blank_like() const {
    OwnedTensor t(view.dtype, view.shape, 0);
    std::fill(t.storage.begin(), t.storage.end(), std::byte{0});
    return t;
  }
  OwnedTensor(const OwnedTensor& o) : storage(o.storage), view(o.view) { view.data = storage.data(); }
  OwnedTensor(OwnedTensor&& o) noexcept : storage(std::move(o.storage)), view(std::move(o.view)) {
    view.data = storage.data();
  }
};

// Small extents and ring, so that modest tensors span many extents.
inline IoOptions small_io() {
  IoOptions io;
  io.extent_size = 64 << 10;
  io.ring_bytes = 1 << 20;
  io.queue_depth = 8;
  io.staging_threads = 2;
  io.report = [](std::string_view) {};
  return io;
}

}  // namespace ringckpt::test

// ---------------------------------------------------------------------------
// Damaged checkpoints (the corruption_* suites): a small pristine checkpoint,
// copies of it to damage, the damage, and predicates on what load and verify
// report. REQUIRES: <boost/test/unit_test.hpp> included first (the module).

#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <string_view>

#include <boost/test/unit_test.hpp>

#include "format/metadata_json.hpp"
#include "io/data_file.hpp"
#include "ringckpt/ringckpt.hpp"

namespace ringckpt::test {

inline constexpr std::uint64_t kSmallIoExtent = 64 << 10;  // small_io().extent_size
inline const std::string kFirstDataFile = "__0_0.safetensors";  // rank 0's first

// ---------------------------------------------------------------- files

inline std::string slurp(const std::filesystem::path& p) { return read_small_file(p); }

inline void spit(const std::filesystem::path& p, std::string_view content) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(content.data(), static_cast<std::streamsize>(content.size()));
  BOOST_TEST_REQUIRE(out.good());
}

inline void flip_bit(const std::filesystem::path& p, std::uint64_t offset, int bit) {
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

inline void overwrite_at(const std::filesystem::path& p, std::uint64_t offset,
                         std::string_view bytes) {
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

inline FileStamp stamp(const std::filesystem::path& p) {
  struct stat st {};
  BOOST_TEST_REQUIRE(::stat(p.c_str(), &st) == 0);
  return {slurp(p), std::int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec};
}

// ---------------------------------------------------------------- errors

inline bool contains(const std::string& text, const std::string& needle) {
  return text.find(needle) != std::string::npos;
}

// A predicate for BOOST_CHECK_EXCEPTION: an Error with this code whose what()
// holds every needle.
inline auto error_is(ErrorCode code, std::vector<std::string> needles) {
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

inline std::string faults_text(const VerifyReport& r) {
  std::string out;
  for (const auto& f : r.faults) {
    out += "\n  " + f.file + " extent " + std::to_string(f.extent) + " [" +
           std::to_string(f.offset) + "+" + std::to_string(f.length) + "]: " + f.message;
  }
  return out;
}

inline VerifyReport verify_dir(const std::filesystem::path& dir) {
  VerifyReport r = verify(dir, small_io());
  BOOST_TEST_MESSAGE("verify " << dir.filename() << ": " << r.faults.size() << " fault(s)"
                               << faults_text(r));
  return r;
}

inline LoadOptions load_options() {
  LoadOptions o;
  o.io = small_io();
  return o;
}
inline SaveOptions save_options() {
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
struct PristineCheckpoint {
  TempDir root;
  std::filesystem::path pristine = root / "pristine";
  OwnedTensor weight{DType::F32, {100, 300}, 11};
  OwnedTensor scale{DType::BF16, {200, 257}, 12};
  OwnedTensor ids{DType::I32, {40000}, 13};
  Bytes config = bytes_of(std::string_view("{\"lr\": 0.001, \"betas\": [0.9, 0.95]}"));
  Metadata md;

  PristineCheckpoint() {
    StateDict sd;
    sd.add("enc.weight", weight.view);
    sd.add("config", config);
    sd.add("enc.scale", scale.view);
    sd.add("dec.ids", ids.view);
    save(sd, pristine, save_options());
    md = read_metadata(pristine);
    BOOST_TEST_REQUIRE(md.files.size() == 1u);
    BOOST_TEST_REQUIRE(md.files[0].extent_size == kSmallIoExtent);
    BOOST_TEST_REQUIRE(md.files[0].extent_checksums.size() == 6u);
  }

  // A copy of the pristine checkpoint to damage.
  std::filesystem::path copy(const std::string& name) const {
    const std::filesystem::path p = root / name;
    std::filesystem::copy(pristine, p, std::filesystem::copy_options::recursive);
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
struct ZeroedDestination {
  OwnedTensor weight, scale, ids;
  StateDict sd;

  explicit ZeroedDestination(const PristineCheckpoint& c, bool with_all = true)
      : weight(c.weight.blank_like()), scale(c.scale.blank_like()), ids(c.ids.blank_like()) {
    if (with_all) {
      sd.add("enc.weight", weight.view);
      sd.add("config", Bytes{});
      sd.add("enc.scale", scale.view);
    }
    sd.add("dec.ids", ids.view);
  }
  ZeroedDestination(const ZeroedDestination&) = delete;
  ZeroedDestination& operator=(const ZeroedDestination&) = delete;

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
  bool matches(const PristineCheckpoint& c) const {
    return weight.storage == c.weight.storage && scale.storage == c.scale.storage &&
           ids.storage == c.ids.storage && config() && *config() == c.config;
  }
};

// Nothing already saved was lost: a fresh load of the intact copy still works.
inline void expect_intact(const PristineCheckpoint& c) {
  ZeroedDestination d(c);
  load(d.sd, c.pristine, load_options());
  BOOST_TEST(d.matches(c));
  BOOST_TEST(verify(c.pristine, small_io()).ok());
}

// Re-encodes metadata.json of `dir` after `edit`, with a valid checksum, so
// that only the checks of meaning can catch the forgery.
inline void forge_metadata(const std::filesystem::path& dir,
                           const std::function<void(Metadata&)>& edit) {
  Metadata md = read_metadata(dir);
  edit(md);
  spit(dir / kMetadataFile, encode_metadata(md));
}

inline bool any_fault(const VerifyReport& r, const std::function<bool(const VerifyFault&)>& pred) {
  return std::any_of(r.faults.begin(), r.faults.end(), pred);
}

inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.ends_with(suffix);
}

}  // namespace ringckpt::test
