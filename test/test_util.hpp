// test/test_util.hpp — scratch directories and seeded tensors for the suites.
#pragma once

#include <cstddef>
#include <cstdint>
#include <fcntl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <boost/test/unit_test.hpp>

#include <sys/statvfs.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <optional>
#include <span>
#include <thread>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "ringckpt/io_options.hpp"
#include "ringckpt/ringckpt.hpp"
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
  // A zeroed tensor of the same dtype and shape, to load into (zeroed
  // directly: drawing seeded bytes first costs seconds a sweep under
  // ThreadSanitizer).
  OwnedTensor blank_like() const {
    OwnedTensor t;
    t.view.dtype = view.dtype;
    t.view.shape = view.shape;
    t.storage.assign(view.nbytes(), std::byte{0});
    t.view.data = t.storage.data();
    return t;
  }
  OwnedTensor(const OwnedTensor& o) : storage(o.storage), view(o.view) { view.data = storage.data(); }
  OwnedTensor(OwnedTensor&& o) noexcept : storage(std::move(o.storage)), view(std::move(o.view)) {
    view.data = storage.data();
  }

 private:
  OwnedTensor() = default;  // for blank_like
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
#include "format/safetensors.hpp"
#include "io/data_file.hpp"
#include "plan/layout.hpp"
#include "ringckpt/ringckpt.hpp"

namespace ringckpt::test {

inline constexpr std::uint64_t kSmallIoExtent = 64 << 10;  // small_io().extent_size
// The name of data file n of `rank` in a save of `generation`.
inline std::string data_file_name(std::string_view generation, int rank = 0, int n = 0) {
  return data_prefix(rank, generation) + std::to_string(n) + ".safetensors";
}

// The name of data file n of `rank` in the checkpoint in dir: the one file
// named like it (any generation); fails the test unless there is exactly one.
inline std::string data_file(const std::filesystem::path& dir, int rank = 0, int n = 0) {
  const std::string head = "__" + std::to_string(rank) + "_";
  const std::string tail = "_" + std::to_string(n) + ".safetensors";
  std::vector<std::string> found;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (is_data_file_name(name) && name.starts_with(head) && name.ends_with(tail) &&
        name.size() == head.size() + 16 + tail.size()) {
      found.push_back(name);
    }
  }
  BOOST_TEST_REQUIRE(found.size() == 1u, dir.string() << ": " << found.size()
                                                      << " data files of rank " << rank
                                                      << ", number " << n);
  return found[0];
}

// Rank 0's first data file in dir.
inline std::string first_data_file(const std::filesystem::path& dir) { return data_file(dir); }

// ---------------------------------------------------------------- files

// The whole of regular file p (not a link), read by name in its directory.
inline std::string slurp(const std::filesystem::path& p) {
  return CheckpointDirectory::open(p.parent_path()).read_small_file(p.filename().string());
}

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

// Options of ringckpt::save and load over small_io().
inline LoadOptions load_options(LoadPlanner* planner = nullptr) {
  LoadOptions o;
  o.io = small_io();
  o.planner = planner;
  return o;
}
inline SaveOptions save_options(SavePlanner* planner = nullptr,
                                Coordinator* coordinator = nullptr) {
  SaveOptions o;
  o.io = small_io();
  o.planner = planner;
  o.coordinator = coordinator;
  return o;
}

// The safetensors header of a data file.
inline SafetensorsHeader read_header(const std::filesystem::path& file) {
  const std::string bytes = slurp(file);
  return decode_safetensors_header(std::as_bytes(std::span<const char>(bytes)), bytes.size(),
                                   file.string());
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
  std::string data;  // the name of its one data file

  PristineCheckpoint() {
    StateDict sd;
    sd.add("enc.weight", weight.view);
    sd.add("config", config);
    sd.add("enc.scale", scale.view);
    sd.add("dec.ids", ids.view);
    save(sd, pristine, save_options());
    md = read_metadata(pristine);
    BOOST_TEST_REQUIRE(md.files.size() == 1u);
    data = md.files[0].relative_path;
    BOOST_TEST_REQUIRE(data == first_data_file(pristine));
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

// ------------------------------------------------------------------------
// Checkpointer suites (test_checkpointer_*.cpp): models, options, waits.

namespace ringckpt::test {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

inline constexpr std::size_t KiB = std::size_t{1} << 10;
inline constexpr std::size_t MiB = std::size_t{1} << 20;

// Seeded pseudo-random bytes, a word at a time (fast enough for 64 MiB even
// under ThreadSanitizer).
inline void fill(std::span<std::byte> out, std::uint64_t seed) {
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
  std::size_t i = 0;
  for (; i + 8 <= out.size(); i += 8) {
    x += 0x9E3779B97F4A7C15ull;
    std::uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    std::memcpy(out.data() + i, &z, 8);
  }
  for (; i < out.size(); ++i) out[i] = static_cast<std::byte>(seed + i);
}

struct Spec {
  std::string name;
  DType dtype;
  Shape shape;
};

// A state dict together with the memory its tensors point to. Every tensor
// and the blob (if any) hold seeded data; blank() gives zeroed twins to load
// into.
class Model {
 public:
  Model(std::vector<Spec> specs, std::uint64_t seed, std::size_t blob_bytes = 0,
        std::string blob_name = "blob")
      : specs_(std::move(specs)), blob_name_(std::move(blob_name)) {
    storage_.reserve(specs_.size());
    for (const Spec& s : specs_) {
      TensorView v{nullptr, s.dtype, s.shape};
      storage_.emplace_back(v.nbytes());
    }
    for (std::size_t i = 0; i < specs_.size(); ++i) {
      sd_.add(specs_[i].name, TensorView{storage_[i].data(), specs_[i].dtype, specs_[i].shape});
    }
    if (blob_bytes > 0) sd_.add(blob_name_, Bytes(blob_bytes));
    scribble(seed);
  }
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // Same names and shapes, every byte zero.
  std::unique_ptr<Model> blank() const {
    auto m = std::make_unique<Model>(specs_, 0, blob_bytes(), blob_name_);
    m->zero();
    return m;
  }

  // Overwrites every tensor and the blob in place with data of `seed`.
  void scribble(std::uint64_t seed) {
    for (std::size_t i = 0; i < storage_.size(); ++i) fill(storage_[i], seed * 1000 + i);
    if (Bytes* b = blob()) fill(*b, seed * 1000 + 999);
  }
  void zero() {
    for (auto& s : storage_) std::fill(s.begin(), s.end(), std::byte{0});
    if (Bytes* b = blob()) std::fill(b->begin(), b->end(), std::byte{0});
  }

  // Every byte of every tensor and the blob, in order (a copy).
  std::vector<std::vector<std::byte>> contents() {
    auto out = storage_;
    if (Bytes* b = blob()) out.push_back(*b);
    return out;
  }

  StateDict& sd() { return sd_; }
  std::uint64_t nbytes() const { return sd_.nbytes(); }
  std::size_t blob_bytes() const {
    const StateValue* v = sd_.find(blob_name_);
    return v ? std::get<Bytes>(*v).size() : 0;
  }
  const std::vector<Spec>& specs() const { return specs_; }

 private:
  Bytes* blob() {
    StateValue* v = sd_.find(blob_name_);
    return v ? &std::get<Bytes>(*v) : nullptr;
  }
  std::vector<Spec> specs_;
  std::string blob_name_;
  std::vector<std::vector<std::byte>> storage_;
  StateDict sd_;
};

// A few tensors of odd sizes (so that items straddle extents and the file
// tail is unaligned) adding up to about `total` bytes, plus a 1 KiB blob.
inline std::unique_ptr<Model> model_of(std::size_t total, std::uint64_t seed,
                                const std::string& prefix = "") {
  const std::int64_t a = static_cast<std::int64_t>(total / 2 / 4) + 3;      // F32
  const std::int64_t b = static_cast<std::int64_t>(total / 4 / 2) + 1;      // BF16
  const std::int64_t c = static_cast<std::int64_t>(total / 4) - 4097;       // U8
  return std::make_unique<Model>(
      std::vector<Spec>{{prefix + "layer.0.weight", DType::F32, {a}},
                        {prefix + "layer.0.bias", DType::BF16, {b}},
                        {prefix + "layer.1.weight", DType::U8, {std::max<std::int64_t>(c, 1)}}},
      seed, 1000 + 24, prefix + "step");
}

// Loads `dir` through `ckpt` into a blank twin of `m` and returns its contents.
inline std::vector<std::vector<std::byte>> load_contents(Checkpointer& ckpt, const Model& m,
                                                  const fs::path& dir) {
  auto into = m.blank();
  ckpt.load(into->sd(), dir);
  return into->contents();
}

inline CheckpointerOptions options(StagingMode mode = StagingMode::lazy,
                            std::size_t ring_bytes = 1 * MiB) {
  CheckpointerOptions o;
  o.io = ringckpt::test::small_io();  // 64 KiB extents, 1 MiB ring, silent reports
  o.io.ring_bytes = ring_bytes;
  o.default_mode = mode;
  return o;
}

inline AsyncSaveOptions with_mode(StagingMode mode) {
  AsyncSaveOptions o;
  o.mode = mode;
  return o;
}

inline const char* mode_name(StagingMode m) {
  switch (m) {
    case StagingMode::snapshot: return "snapshot";
    case StagingMode::bounded: return "bounded";
    case StagingMode::lazy: return "lazy";
  }
  return "?";
}

// What a save that did not commit may leave: the directory, nothing else a
// reader would take for (part of) a checkpoint.
inline std::vector<std::string> checkpoint_files(const fs::path& dir) {
  std::vector<std::string> found;
  if (!fs::exists(dir)) return found;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.starts_with("metadata.json") ||
        (e.is_regular_file() && name.ends_with(".safetensors"))) {
      found.push_back(name);
    }
  }
  return found;
}

// Runs f and returns the ringckpt::Error it throws; fails the test if it
// throws nothing or something else.
template <typename F>
std::optional<Error> error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  } catch (const std::exception& e) {
    BOOST_ERROR("expected ringckpt::Error, got " << e.what());
    return std::nullopt;
  }
  BOOST_ERROR("expected ringckpt::Error, nothing was thrown");
  return std::nullopt;
}

inline std::optional<Error> error_in(const std::exception_ptr& p) {
  if (!p) return std::nullopt;
  try {
    std::rethrow_exception(p);
  } catch (const Error& e) {
    return e;
  } catch (...) {
  }
  return std::nullopt;
}

inline bool ready(const std::shared_future<void>& f, std::chrono::milliseconds wait = 0ms) {
  return f.wait_for(wait) == std::future_status::ready;
}

inline std::size_t open_fds() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

inline std::size_t thread_count() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/self/task")) ++n;
  return n;
}

inline std::size_t rss_kib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with("VmRSS:")) return std::stoul(line.substr(6));
  }
  return 0;
}

// The generation block_data_file fixes while it lives.
inline const std::string kBlockedGeneration = "00000000000b10c4";

// Makes `dir/` + data_file_name(kBlockedGeneration) a directory and fixes the
// generation of every save to kBlockedGeneration while it lives: opening that
// data file for writing then fails with EISDIR, even for root, once the save
// has started.
class BlockedDataFile {
 public:
  explicit BlockedDataFile(const fs::path& dir) {
    fs::create_directories(dir / data_file_name(kBlockedGeneration));
    detail::fix_save_generation_for_tests(kBlockedGeneration);
  }
  ~BlockedDataFile() { detail::fix_save_generation_for_tests({}); }
  BlockedDataFile(const BlockedDataFile&) = delete;
  BlockedDataFile& operator=(const BlockedDataFile&) = delete;
};

[[nodiscard]] inline BlockedDataFile block_data_file(const fs::path& dir) {
  return BlockedDataFile(dir);
}

// A tmpfs of `bytes` mounted on a fresh directory; mounted() is false where
// mounting is not allowed.
class TmpfsMount {
 public:
  explicit TmpfsMount(std::size_t bytes) {
    const std::string opts = "size=" + std::to_string(bytes);
    mounted_ = ::mount("tmpfs", dir_.path().c_str(), "tmpfs", 0, opts.c_str()) == 0;
    if (!mounted_) error_ = std::strerror(errno);
  }
  ~TmpfsMount() {
    if (mounted_) ::umount2(dir_.path().c_str(), MNT_DETACH);
  }
  bool mounted() const { return mounted_; }
  // Why mounting failed (strerror), where it did.
  const std::string& error() const { return error_; }
  const fs::path& path() const { return dir_.path(); }
  std::uint64_t free_bytes() const {
    struct statvfs s {};
    ::statvfs(dir_.path().c_str(), &s);
    return std::uint64_t{s.f_bavail} * s.f_frsize;
  }

 private:
  TempDir dir_;
  bool mounted_ = false;
  std::string error_;
};

// Every name in dir (files, links, directories).
inline std::set<std::string> listing(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

// metadata.json and the data files it lists: all a committed save leaves.
inline std::set<std::string> committed_files(const fs::path& dir) {
  std::set<std::string> names{std::string(kMetadataFile)};
  for (const auto& f : read_metadata(dir).files) names.insert(f.relative_path);
  return names;
}

// The old checkpoint in dir, as it was saved: its files, its metadata.json
// and the contents of the model it holds (the overwrite and full_disk suites).
struct Saved {
  fs::path dir;
  std::set<std::string> files;
  std::string metadata;
  std::vector<std::vector<std::byte>> contents;

  Saved(const fs::path& d, Model& m)
      : dir(d), files(listing(d)), metadata(slurp(d / kMetadataFile)), contents(m.contents()) {
    BOOST_TEST_REQUIRE((files == committed_files(d)));
  }

  // Whole, byte-exact, verifying, and nothing beside it (no new metadata.json).
  void expect_intact(Checkpointer& ckpt, const Model& m) const {
    BOOST_TEST((listing(dir) == files), "files of the old checkpoint changed, or new ones left");
    BOOST_TEST(slurp(dir / kMetadataFile) == metadata);
    BOOST_TEST(verify(dir, small_io()).ok());
    BOOST_TEST((load_contents(ckpt, m, dir) == contents));
  }
};

// Destroys `ckpt` on another thread; aborts the run if that takes longer
// than `limit` (a hung destructor would otherwise hang the suite).
inline void destroy_within(std::unique_ptr<Checkpointer> ckpt, std::chrono::seconds limit) {
  std::promise<void> done;
  auto fut = done.get_future();
  std::thread t([&] {
    ckpt.reset();
    done.set_value();
  });
  if (fut.wait_for(limit) != std::future_status::ready) {
    std::fprintf(stderr, "~Checkpointer did not return within %llds: hung\n",
                 static_cast<long long>(limit.count()));
    std::abort();
  }
  t.join();
}

// Waits at most `limit` for `f`; false if it is still not ready (a hang),
// so that a test fails instead of blocking.
template <typename Future>
bool ready_within(Future& f, std::chrono::seconds limit) {
  return f.wait_for(limit) == std::future_status::ready;
}

}  // namespace ringckpt::test

// ------------------------------------------------------------------------
// Metadata compared field by field (format and wire_codec suites): each
// field its own BOOST_TEST, so a failure names it. MetadataIndex's operator==
// ignores the index hint; these compare it too.

namespace ringckpt::test {

inline void check_same(const MetadataIndex& a, const MetadataIndex& b) {
  BOOST_TEST(a.fqn == b.fqn);
  BOOST_TEST((a.offset == b.offset));
  BOOST_TEST((a.index == b.index));
}

inline void check_same(const StorageMetadata& a, const StorageMetadata& b) {
  BOOST_TEST_REQUIRE(a.index() == b.index());
  if (const auto* ta = std::get_if<TensorStorageMetadata>(&a)) {
    const auto& tb = std::get<TensorStorageMetadata>(b);
    BOOST_TEST((ta->properties == tb.properties));
    BOOST_TEST(ta->size == tb.size);
    BOOST_TEST((ta->chunks == tb.chunks));
  }
}

inline void check_same(const Metadata& a, const Metadata& b) {
  BOOST_TEST(a.version == b.version);
  BOOST_TEST_REQUIRE(a.state_dict_metadata.size() == b.state_dict_metadata.size());
  for (auto ia = a.state_dict_metadata.begin(), ib = b.state_dict_metadata.begin();
       ia != a.state_dict_metadata.end(); ++ia, ++ib) {
    BOOST_TEST(ia->first == ib->first);
    check_same(ia->second, ib->second);
  }
  BOOST_TEST_REQUIRE(a.storage_data.size() == b.storage_data.size());
  for (auto ia = a.storage_data.begin(), ib = b.storage_data.begin(); ia != a.storage_data.end();
       ++ia, ++ib) {
    check_same(ia->first, ib->first);  // the index hint too
    BOOST_TEST((ia->second == ib->second));
  }
  BOOST_TEST((a.files == b.files));
  BOOST_TEST((a.planner_data == b.planner_data));
}

}  // namespace ringckpt::test
