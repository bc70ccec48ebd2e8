// test_full_disk.cpp — a save larger than the file system's free space fails
// with a clear "no space" error naming the file, through ringckpt::save and
// through both completions of a Checkpointer in every staging mode; nothing
// of it stays visible, no descriptor, ring slot or disk block is leaked, the
// old checkpoint it was to overwrite verifies and loads byte-exact, and the
// same Checkpointer then saves what fits.
//
// The file system is a 32 MiB ext4 image the test makes and loop-mounts
// (root only), so that O_DIRECT writes (and their fallocate) meet the full
// disk; where mounting it is not allowed, a 32 MiB tmpfs; where neither is,
// the case is skipped with a message. A second case fills a tmpfs through
// buffered writes (direct_io off), so that the writes themselves fail.
#define BOOST_TEST_MODULE full_disk
#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "plan/layout.hpp"
#include "ringckpt/ringckpt.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using namespace ringckpt;
using namespace ringckpt::test;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::uint64_t kDiskBytes = 32 * MiB;

// Runs argv (argv[0] looked up in PATH, then /usr/sbin and /sbin) with its
// output appended to `log`; true if it exits 0 within `limit` (killed and
// false otherwise). REQUIRES: log lies in a test's TempDir.
bool run_command(const std::vector<std::string>& argv, const fs::path& log,
                 std::chrono::seconds limit = 30s) {
  const int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (out < 0) return false;
  std::vector<std::string> paths = {argv[0], "/usr/sbin/" + argv[0], "/sbin/" + argv[0]};
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {  // only async-signal-safe calls from here on
    ::dup2(out, 1);
    ::dup2(out, 2);
    ::execvp(paths[0].c_str(), args.data());
    ::execv(paths[1].c_str(), args.data());
    ::execv(paths[2].c_str(), args.data());
    ::_exit(127);
  }
  ::close(out);
  if (pid < 0) return false;
  const auto start = Clock::now();
  int status = 0;
  for (;;) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0) return false;
    if (Clock::now() - start > limit) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return false;
    }
    std::this_thread::sleep_for(1ms);
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// A size-limited file system on a fresh directory: a loop-mounted ext4 image
// (ext4_allowed and root), else a tmpfs, else none (why() says why). Always
// unmounted on destruction (lazily as a last resort); the image goes with
// its TempDir.
class LimitedFs {
 public:
  enum class Kind { none, ext4, tmpfs };

  LimitedFs(std::uint64_t bytes, bool ext4_allowed) {
    fs::create_directories(mnt_);
    if (ext4_allowed && ::geteuid() == 0) {
      if (make_ext4(bytes)) return;
      std::string said = fs::exists(log_) ? slurp(log_) : std::string();
      if (said.size() > 300) said.resize(300);
      why_ = "no loop-mounted ext4 (" + said + "); ";
    }
    const std::string opts = "size=" + std::to_string(bytes);
    if (::mount("tmpfs", mnt_.c_str(), "tmpfs", 0, opts.c_str()) == 0) {
      kind_ = Kind::tmpfs;
      return;
    }
    why_ += std::string("mounting a tmpfs: ") + std::strerror(errno);
  }
  ~LimitedFs() {
    if (kind_ == Kind::none) return;
    for (int i = 0; i < 50; ++i) {
      if (::umount2(mnt_.c_str(), 0) == 0) return;
      if (errno != EBUSY) break;
      std::this_thread::sleep_for(20ms);
    }
    ::umount2(mnt_.c_str(), MNT_DETACH);  // the last resort: umount -l
  }
  LimitedFs(const LimitedFs&) = delete;
  LimitedFs& operator=(const LimitedFs&) = delete;

  Kind kind() const { return kind_; }
  const char* name() const { return kind_ == Kind::ext4 ? "ext4" : "tmpfs"; }
  const std::string& why() const { return why_; }
  const fs::path& path() const { return mnt_; }

  // Free bytes once what was freed is committed (syncfs).
  std::uint64_t free_bytes() const {
    const int fd = ::open(mnt_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
      ::syncfs(fd);
      ::close(fd);
    }
    struct statvfs s {};
    if (::statvfs(mnt_.c_str(), &s) != 0) return 0;
    return std::uint64_t{s.f_bavail} * s.f_frsize;
  }

 private:
  bool make_ext4(std::uint64_t bytes) {
    const int fd =
        ::open(image_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) return false;
    const bool sized = ::ftruncate(fd, static_cast<off_t>(bytes)) == 0;
    ::close(fd);
    // No reserved blocks: root and others see the same free space.
    if (!sized ||
        !run_command({"mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0", image_.string()}, log_)) {
      return false;
    }
    if (!run_command({"mount", "-o", "loop", image_.string(), mnt_.string()}, log_)) return false;
    kind_ = Kind::ext4;
    return true;
  }

  TempDir root_;
  fs::path image_ = root_ / "disk.img";
  fs::path log_ = root_ / "commands.log";
  fs::path mnt_ = root_ / "mnt";
  Kind kind_ = Kind::none;
  std::string why_;
};

AsyncSaveOptions overwrite(StagingMode mode) {
  AsyncSaveOptions o;
  o.mode = mode;
  o.overwrite = true;
  return o;
}

// The full disk's error: an I/O error saying "No space left on device" and
// naming the file (in the checkpoint directory) it happened to.
void expect_no_space(const std::optional<Error>& e, const fs::path& dir) {
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST((e->code() == ErrorCode::kIo), e->what());
  BOOST_TEST(contains(e->what(), std::strerror(ENOSPC)), e->what());
  BOOST_TEST(e->where().starts_with(dir.string() + "/"), e->what());
  BOOST_TEST((e->where().ends_with(".safetensors") || contains(e->where(), kMetadataFile)),
             e->what());
}

// What a failed save must give back: every descriptor, every disk block.
struct Resources {
  std::size_t fds;
  std::uint64_t free;
  static Resources now(const LimitedFs& disk) { return {open_fds(), disk.free_bytes()}; }
  void expect_released(const LimitedFs& disk) const {
    BOOST_TEST(open_fds() == fds, "descriptors leaked");
    // ext4 may return freed blocks only as its journal commits: wait a little.
    const auto deadline = Clock::now() + 10s;
    while (disk.free_bytes() < free && Clock::now() < deadline) std::this_thread::sleep_for(10ms);
    BOOST_TEST(disk.free_bytes() >= free, "the new generation's partial file is removed");
  }
};

bool failed(const std::shared_future<void>& f) {
  try {
    f.get();
  } catch (...) {
    return true;
  }
  return false;
}

// 1 MiB extents; the ring's 36 slots hold a 32 MiB state dict, which the
// disk (32 MiB, holding a 4 MiB checkpoint) does not.
constexpr std::size_t kExtent = 1 * MiB;
constexpr std::size_t kRingSlots = 36;

CheckpointerOptions disk_options(bool direct_io) {
  CheckpointerOptions o = options(StagingMode::lazy, kRingSlots * kExtent);
  o.io.extent_size = kExtent;
  o.io.direct_io = direct_io;
  return o;
}

// The one full-disk scenario, on `disk`: a 4 MiB checkpoint, then overwrites
// that do not fit (64 MiB through ringckpt::save, 32 MiB through the
// Checkpointer in each mode), each refused with ENOSPC and leaving the old
// checkpoint as it was; then the ring is whole (a snapshot of exactly its
// size elsewhere) and the same Checkpointer overwrites with what fits.
void save_more_than_fits(const LimitedFs& disk, bool direct_io) {
  const fs::path dir = disk.path() / "latest";
  TempDir elsewhere;
  const bool expect_direct = direct_io && disk.kind() == LimitedFs::Kind::ext4;
  Checkpointer ckpt(disk_options(direct_io));
  auto old_model = model_of(4 * MiB, 1);
  ckpt.save(old_model->sd(), dir);
  const Saved old(dir, *old_model);
  old.expect_intact(ckpt, *old_model);  // the load thread exists from here on
  if (expect_direct) BOOST_TEST(ckpt.report().direct_io, "O_DIRECT on the ext4 mount");
  const Resources before = Resources::now(disk);
  BOOST_TEST_MESSAGE(disk.name() << (direct_io ? ", O_DIRECT" : ", buffered") << ": "
                                 << before.free / KiB << " KiB free beside the old checkpoint");

  {  // Through ringckpt::save.
    auto huge = model_of(64 * MiB, 2);
    SaveOptions o = save_options();
    o.io.direct_io = direct_io;
    o.overwrite = true;
    const auto e = error_of([&] { save(huge->sd(), dir, o); });
    expect_no_space(e, dir);
    if (e) BOOST_TEST_MESSAGE("ringckpt::save: " << e->what());
    old.expect_intact(ckpt, *old_model);
    before.expect_released(disk);
  }

  auto big = model_of(32 * MiB, 3);
  for (StagingMode mode : {StagingMode::snapshot, StagingMode::bounded, StagingMode::lazy}) {
    BOOST_TEST_CONTEXT("Checkpointer, mode " << mode_name(mode)) {
      SaveHandle h = ckpt.async_save(big->sd(), dir, overwrite(mode));
      BOOST_TEST_REQUIRE(ready_within(h.committed, 60s));
      BOOST_TEST_REQUIRE(ready_within(h.staged, 60s));
      // O_DIRECT reserves each file's size when it creates it: that fails
      // before a byte is staged. Buffered writes fail later, and a state
      // dict that fits the ring may be staged whole by then: staged is
      // either fine or the same error.
      if (expect_direct || failed(h.staged)) {
        expect_no_space(error_of([&] { h.staged.get(); }), dir);
      }
      expect_no_space(error_of([&] { h.committed.get(); }), dir);
      old.expect_intact(ckpt, *old_model);
      before.expect_released(disk);
    }
  }
  if (expect_direct) BOOST_TEST(ckpt.report().direct_io, "O_DIRECT on the ext4 mount");

  // No slot leaked: a snapshot needing every slot of the ring stages and
  // commits (elsewhere: it does not fit this disk). Bounded, so that a leak
  // fails the test instead of hanging it.
  {
    auto whole = model_of(kRingSlots * kExtent - 8 * KiB, 4);
    auto saving = std::async(std::launch::async, [&] {
      return ckpt.save(whole->sd(), elsewhere / "whole-ring", with_mode(StagingMode::snapshot));
    });
    if (saving.wait_for(60s) != std::future_status::ready) {
      std::fprintf(stderr, "a snapshot of the whole ring hung for 60 s: slots leaked\n");
      std::abort();
    }
    const Metadata md = saving.get();
    BOOST_TEST_REQUIRE(md.files.size() == 1u);
    BOOST_TEST(md.files[0].extent_checksums.size() == kRingSlots, "the snapshot fills the ring");
    BOOST_TEST((load_contents(ckpt, *whole, elsewhere / "whole-ring") == whole->contents()));
  }

  // The same Checkpointer overwrites fine with what fits.
  auto fits = model_of(2 * MiB, 5);
  SaveHandle h = ckpt.async_save(fits->sd(), dir, overwrite(StagingMode::lazy));
  BOOST_TEST_REQUIRE(ready_within(h.committed, 60s));
  h.committed.get();
  BOOST_TEST((listing(dir) == committed_files(dir)));
  BOOST_TEST(verify(dir, small_io()).ok());
  BOOST_TEST((load_contents(ckpt, *fits, dir) == fits->contents()));
}

}  // namespace

BOOST_AUTO_TEST_CASE(overwrite_larger_than_a_loop_mounted_ext4) {
  LimitedFs disk(kDiskBytes, true);
  if (disk.kind() == LimitedFs::Kind::none) {
    BOOST_TEST_MESSAGE("no size-limited file system can be mounted here (" << disk.why()
                                                                           << "): skipped");
    return;
  }
  if (disk.kind() == LimitedFs::Kind::tmpfs) {
    BOOST_TEST_MESSAGE(disk.why() << "the full disk is a tmpfs instead");
  }
  save_more_than_fits(disk, true);
}

BOOST_AUTO_TEST_CASE(buffered_writes_filling_a_tmpfs) {
  LimitedFs disk(kDiskBytes, false);
  if (disk.kind() == LimitedFs::Kind::none) {
    BOOST_TEST_MESSAGE("cannot mount a tmpfs here (" << disk.why() << "): skipped");
    return;
  }
  save_more_than_fits(disk, false);
}
