// test_uring.cpp — the staging ring, the io_uring queue, O_DIRECT and their
// fallbacks, each against the real kernel.
#define BOOST_TEST_MODULE uring
#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <future>
#include <latch>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "io/data_file.hpp"
#include "ringckpt/error.hpp"
#include "ringckpt/io_options.hpp"
#include "io/staging_ring.hpp"
#include "io/uring_queue.hpp"

namespace fs = std::filesystem;
using namespace ringckpt;

namespace {

// A fresh directory under `base`, removed with everything in it.
struct TempDir {
  fs::path path;
  explicit TempDir(const fs::path& base) {
    std::string t = (base / "ringckpt-test-XXXXXX").string();
    BOOST_TEST_REQUIRE(::mkdtemp(t.data()) != nullptr, "mkdtemp under " << base);
    path = t;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

long fs_type(const fs::path& p) {
  struct statfs st;
  BOOST_TEST_REQUIRE(::statfs(p.c_str(), &st) == 0);
  return static_cast<long>(st.f_type);
}

// Where O_DIRECT must be granted: an ext4 directory (/var/tmp here).
fs::path direct_base() {
  const char* env = std::getenv("RINGCKPT_TEST_DIRECT_DIR");
  return env != nullptr ? fs::path(env) : fs::path("/var/tmp");
}

bool has_o_direct(int fd) { return (::fcntl(fd, F_GETFL) & O_DIRECT) != 0; }

// The byte at position i of extent `id`: every extent differs from every other.
std::byte pattern(std::uint64_t id, std::size_t i) {
  std::uint64_t x = (id + 1) * 0x9E3779B97F4A7C15ull + (i / 8) * 0xBF58476D1CE4E5B9ull;
  x ^= x >> 31;
  return static_cast<std::byte>(x >> ((i % 8) * 8));
}

void fill(std::byte* p, std::size_t n, std::uint64_t id) {
  for (std::size_t i = 0; i < n; ++i) p[i] = pattern(id, i);
}

// Index of the first byte that differs from the pattern, or n.
std::size_t first_mismatch(const std::byte* p, std::size_t n, std::uint64_t id) {
  for (std::size_t i = 0; i < n; ++i)
    if (p[i] != pattern(id, i)) return i;
  return n;
}

std::vector<std::byte> pread_all(int fd, std::size_t n, std::uint64_t offset) {
  std::vector<std::byte> v(n);
  std::size_t got = 0;
  while (got < n) {
    ssize_t r = ::pread(fd, v.data() + got, n - got, static_cast<off_t>(offset + got));
    BOOST_TEST_REQUIRE(r > 0, "pread: " << (r < 0 ? std::strerror(errno) : "EOF"));
    got += static_cast<std::size_t>(r);
  }
  return v;
}

// A completion that fulfils a future, and a bounded wait for it.
struct Result {
  std::shared_ptr<std::promise<std::int64_t>> promise = std::make_shared<std::promise<std::int64_t>>();
  std::future<std::int64_t> future = promise->get_future();
  UringQueue::Completion callback() {
    return [p = promise](std::int64_t r) { p->set_value(r); };
  }
  std::int64_t get() {
    BOOST_TEST_REQUIRE((future.wait_for(std::chrono::seconds(30)) == std::future_status::ready),
                       "operation did not complete within 30 s");
    return future.get();
  }
};

std::int64_t write_sync(UringQueue& q, int fd, unsigned index, const std::byte* p, std::size_t n,
                        std::uint64_t off) {
  Result r;
  q.write(fd, index, p, n, off, r.callback());
  return r.get();
}

std::int64_t read_sync(UringQueue& q, int fd, unsigned index, std::byte* p, std::size_t n,
                       std::uint64_t off) {
  Result r;
  q.read(fd, index, p, n, off, r.callback());
  return r.get();
}

std::int64_t fdatasync_sync(UringQueue& q, int fd) {
  Result r;
  q.fdatasync(fd, r.callback());
  return r.get();
}

// Notes said by a queue, kept for assertions.
struct Notes {
  std::shared_ptr<std::vector<std::string>> said = std::make_shared<std::vector<std::string>>();
  UringQueue::Note callback() {
    return [s = said](std::string_view n) { s->emplace_back(n); };
  }
  std::string all() const {
    std::string a;
    for (auto& n : *said) a += n + "\n";
    return a;
  }
};

// Writes `count` extents of the ring's slot size through `q` into `file` in a
// shuffled order (extent e from slot e % slots), checks every result, syncs,
// and checks the file byte for byte with pread.
void write_extents_and_check(UringQueue& q, StagingRing& ring, const DataFile& file,
                             unsigned count) {
  const std::size_t n = ring.slot_bytes();
  const unsigned slots = static_cast<unsigned>(ring.slot_count());
  std::vector<unsigned> order(count);
  std::iota(order.begin(), order.end(), 0u);
  std::shuffle(order.begin(), order.end(), std::mt19937(42));
  // Rounds of at most `slots` writes: a slot's bytes stay put while in flight.
  for (unsigned base = 0; base < count; base += slots) {
    std::vector<Result> results(std::min(slots, count - base));
    for (unsigned k = 0; k < results.size(); ++k) {
      const unsigned e = order[base + k];
      fill(ring.slot_data(k), n, e);
      q.write(file.fd(), k, ring.slot_data(k), n, std::uint64_t{e} * n, results[k].callback());
    }
    for (auto& r : results) BOOST_TEST(r.get() == static_cast<std::int64_t>(n));
  }
  BOOST_TEST(fdatasync_sync(q, file.fd()) == 0);
  BOOST_TEST(file.size() == std::uint64_t{count} * n);

  int fd = ::open(file.path().c_str(), O_RDONLY | O_CLOEXEC);
  BOOST_TEST_REQUIRE(fd >= 0);
  for (unsigned e = 0; e < count; ++e) {
    auto bytes = pread_all(fd, n, std::uint64_t{e} * n);
    BOOST_TEST(first_mismatch(bytes.data(), n, e) == n, "extent " << e << " differs on disk");
  }
  ::close(fd);
}

}  // namespace

// ───────────────────────────── StagingRing ─────────────────────────────

BOOST_AUTO_TEST_SUITE(staging_ring)

BOOST_AUTO_TEST_CASE(slots_are_aligned_distinct_and_all_acquirable) {
  StagingRing ring(3 * kAlignment, 5);
  BOOST_TEST(ring.total_bytes() == 15 * kAlignment);
  BOOST_TEST(ring.free_count() == 5u);

  std::set<unsigned> got;
  for (int i = 0; i < 5; ++i) {
    bool ran = false;
    ring.async_acquire([&](unsigned s) {
      ran = true;
      got.insert(s);
    });
    BOOST_TEST(ran, "a free slot is handed over at once, on the calling thread");
  }
  BOOST_TEST(got.size() == 5u);
  BOOST_TEST(*got.rbegin() < 5u);
  BOOST_TEST(ring.free_count() == 0u);

  // Aligned, non-overlapping, writable end to end, and matching iovecs().
  std::vector<std::uintptr_t> starts;
  for (unsigned s : got) {
    auto p = reinterpret_cast<std::uintptr_t>(ring.slot_data(s));
    BOOST_TEST(p % kAlignment == 0u);
    starts.push_back(p);
    std::memset(ring.slot_data(s), static_cast<int>(s), ring.slot_bytes());
  }
  std::sort(starts.begin(), starts.end());
  for (std::size_t i = 1; i < starts.size(); ++i)
    BOOST_TEST(starts[i] - starts[i - 1] >= ring.slot_bytes());
  for (unsigned s : got)
    BOOST_TEST((ring.slot_data(s)[ring.slot_bytes() - 1] == static_cast<std::byte>(s)));
  auto iov = ring.iovecs();
  BOOST_TEST_REQUIRE(iov.size() == 5u);
  for (unsigned s = 0; s < 5; ++s) {
    BOOST_TEST(iov[s].iov_base == static_cast<void*>(ring.slot_data(s)));
    BOOST_TEST(iov[s].iov_len == ring.slot_bytes());
  }

  for (unsigned s : got) ring.release(s);
  BOOST_TEST(ring.free_count() == 5u);
}

BOOST_AUTO_TEST_CASE(waiters_are_served_on_release_first_come_first_served) {
  StagingRing ring(kAlignment, 1);
  unsigned held = 99;
  ring.async_acquire([&](unsigned s) { held = s; });
  BOOST_TEST_REQUIRE(held == 0u);

  std::mutex mu;
  std::vector<int> served;  // waiter ids, in the order they got the slot
  std::vector<std::thread::id> on_thread;
  for (int id = 0; id < 3; ++id)
    ring.async_acquire([&, id](unsigned s) {
      std::lock_guard lock(mu);
      BOOST_TEST(s == 0u);
      served.push_back(id);
      on_thread.push_back(std::this_thread::get_id());
    });
  BOOST_TEST(served.empty(), "no slot is free: every waiter must wait");
  BOOST_TEST(ring.free_count() == 0u);

  // Each release serves exactly the oldest waiter, on the releasing thread.
  for (int i = 0; i < 3; ++i) {
    std::thread::id releaser;
    std::thread t([&] {
      releaser = std::this_thread::get_id();
      ring.release(0);
    });
    t.join();
    std::lock_guard lock(mu);
    BOOST_TEST_REQUIRE(served.size() == static_cast<std::size_t>(i + 1));
    BOOST_TEST(served[i] == i);
    BOOST_TEST((on_thread[i] == releaser));
    BOOST_TEST(ring.free_count() == 0u);
  }
  ring.release(0);
  BOOST_TEST(ring.free_count() == 1u);
}

BOOST_AUTO_TEST_CASE(concurrent_borrowers_never_share_a_slot) {
  constexpr unsigned kSlots = 3, kThreads = 6, kRounds = 2000;
  StagingRing ring(kAlignment, kSlots);
  std::atomic<int> owners[kSlots] = {};
  std::atomic<int> violations{0};

  auto borrower = [&](unsigned me) {
    for (unsigned round = 0; round < kRounds; ++round) {
      std::promise<unsigned> got;
      auto fut = got.get_future();
      ring.async_acquire([&got](unsigned s) { got.set_value(s); });
      const unsigned s = fut.get();
      if (s >= kSlots || owners[s].fetch_add(1) != 0) violations.fetch_add(1);
      // Stamp the slot, let others run, and check nobody else stamped it.
      std::byte stamp = static_cast<std::byte>(me * 31 + round);
      std::memset(ring.slot_data(s), static_cast<int>(stamp), 64);
      std::this_thread::yield();
      for (int i = 0; i < 64; ++i)
        if (ring.slot_data(s)[i] != stamp) {
          violations.fetch_add(1);
          break;
        }
      owners[s].fetch_sub(1);
      ring.release(s);
    }
  };
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < kThreads; ++t) threads.emplace_back(borrower, t);
  for (auto& t : threads) t.join();
  BOOST_TEST(violations.load() == 0);
  BOOST_TEST(ring.free_count() == kSlots);
}

BOOST_AUTO_TEST_CASE(bad_sizes_are_invalid_arguments) {
  auto code_of = [](std::size_t bytes, std::size_t count) {
    try {
      StagingRing ring(bytes, count);
    } catch (const Error& e) {
      return e.code();
    }
    return ErrorCode::kCorrupt;  // "did not throw"
  };
  BOOST_TEST((code_of(1000, 4) == ErrorCode::kInvalidArgument));
  BOOST_TEST((code_of(kAlignment + 512, 4) == ErrorCode::kInvalidArgument));
  BOOST_TEST((code_of(0, 4) == ErrorCode::kInvalidArgument));
  BOOST_TEST((code_of(kAlignment, 0) == ErrorCode::kInvalidArgument));
  BOOST_TEST((code_of(std::size_t{1} << 40, std::size_t{1} << 30) == ErrorCode::kInvalidArgument));
}

BOOST_AUTO_TEST_SUITE_END()

// ────────────────────────────── DataFile ───────────────────────────────

BOOST_AUTO_TEST_SUITE(data_file)

BOOST_AUTO_TEST_CASE(o_direct_is_granted_on_ext4) {
  TempDir dir(direct_base());
  const long type = fs_type(dir.path);
  if (type != EXT4_SUPER_MAGIC) {
    BOOST_TEST_MESSAGE("skipped: " << dir.path << " is not ext4 (set RINGCKPT_TEST_DIRECT_DIR)");
    return;
  }
  DataFile w = CheckpointDirectory::open(dir.path).create_file("d", true);
  BOOST_TEST(w.direct());
  BOOST_TEST(has_o_direct(w.fd()));
  // O_DIRECT really is in force: ext4 refuses an offset off the block size.
  // (Buffer alignment is only the device's DMA alignment, so not tested.)
  alignas(kAlignment) static char buf[kAlignment];
  errno = 0;
  BOOST_TEST(::pwrite(w.fd(), buf, kAlignment, 100) == -1);
  BOOST_TEST(errno == EINVAL);
  BOOST_TEST(::pwrite(w.fd(), buf, kAlignment, 0) == static_cast<ssize_t>(kAlignment));
  BOOST_TEST(w.size() == kAlignment);
  w.truncate(100);
  BOOST_TEST(w.size() == 100u);
  w.close();
  BOOST_TEST(w.fd() == -1);

  DataFile r = CheckpointDirectory::open(dir.path).open_read("d", true);
  BOOST_TEST(r.direct());
  BOOST_TEST(has_o_direct(r.fd()));
  BOOST_TEST(r.path() == dir.path / "d");
  DataFile plain = CheckpointDirectory::open(dir.path).create_file("p", false);
  BOOST_TEST(!plain.direct());
  BOOST_TEST(!has_o_direct(plain.fd()));
}

BOOST_AUTO_TEST_CASE(o_direct_refused_falls_back_to_buffered) {
  // create never replaces a device (it only creates regular files anew), so
  // a refusal of O_DIRECT is tested on ramfs (file_system_without_o_direct_*).
  // Nor does it take a name that leaves its directory.
  {
    TempDir dir(direct_base());
    const CheckpointDirectory d = CheckpointDirectory::open(dir.path);
    for (const char* bad : {"../f", "a/b", "..", ".", ""}) {
      BOOST_CHECK_EXCEPTION(d.create_file(bad, true), Error, [](const Error& e) {
        return e.code() == ErrorCode::kInvalidArgument &&
               std::string(e.what()).find("not a plain file name") != std::string::npos;
      });
    }
    BOOST_TEST(fs::is_empty(dir.path));
  }

  // tmpfs: since Linux 6.6 it accepts O_DIRECT; either way direct() must say
  // what the kernel granted.
  TempDir shm("/dev/shm");
  BOOST_TEST(fs_type(shm.path) == static_cast<long>(TMPFS_MAGIC));
  DataFile t = CheckpointDirectory::open(shm.path).create_file("t", true);
  BOOST_TEST(t.direct() == has_o_direct(t.fd()));
  BOOST_TEST_MESSAGE("tmpfs O_DIRECT " << (t.direct() ? "granted" : "refused"));
}

BOOST_AUTO_TEST_CASE(missing_file_is_not_found_naming_the_path) {
  TempDir dir(direct_base());
  const fs::path missing = dir.path / "no-such.safetensors";
  for (bool direct : {true, false}) {
    try {
      CheckpointDirectory::open(dir.path).open_read("no-such.safetensors", direct);
      BOOST_FAIL("open_read of a missing file did not throw");
    } catch (const Error& e) {
      BOOST_TEST((e.code() == ErrorCode::kNotFound));
      BOOST_TEST(e.where() == missing.string());
      BOOST_TEST(std::string(e.what()).find(missing.string()) != std::string::npos);
    }
  }
  try {
    CheckpointDirectory::open(dir.path).read_small_file("no-such.safetensors");
    BOOST_FAIL("read_small_file of a missing file did not throw");
  } catch (const Error& e) {
    BOOST_TEST((e.code() == ErrorCode::kNotFound));
    BOOST_TEST(e.where() == missing.string());
  }
  // Opening a missing directory is kNotFound naming it; a file is no directory.
  try {
    CheckpointDirectory::open(dir.path / "nodir");
    BOOST_FAIL("opening a missing directory did not throw");
  } catch (const Error& e) {
    BOOST_TEST((e.code() == ErrorCode::kNotFound));
    BOOST_TEST(e.where() == (dir.path / "nodir").string());
  }
  CheckpointDirectory::open(dir.path).create_file("plain", false);
  try {
    CheckpointDirectory::open(dir.path / "plain");
    BOOST_FAIL("opening a file as a directory did not throw");
  } catch (const Error& e) {
    BOOST_TEST((e.code() == ErrorCode::kIo));
    BOOST_TEST(e.where() == (dir.path / "plain").string());
  }
}

BOOST_AUTO_TEST_CASE(write_file_atomically_replaces_and_leaves_no_temporary) {
  TempDir dir(direct_base());
  const CheckpointDirectory d = CheckpointDirectory::open(dir.path);
  d.write_file_atomically("metadata.json", "first");
  BOOST_TEST(d.read_small_file("metadata.json") == "first");
  std::string big(200000, 'x');
  big[123456] = 'y';
  d.write_file_atomically("metadata.json", big);
  BOOST_TEST(d.read_small_file("metadata.json") == big);
  d.write_file_atomically("metadata.json", "");
  BOOST_TEST(d.read_small_file("metadata.json").empty());
  std::vector<std::string> names;
  for (auto& e : fs::directory_iterator(dir.path)) names.push_back(e.path().filename().string());
  BOOST_TEST(names == std::vector<std::string>{"metadata.json"}, boost::test_tools::per_element());
  // list() sees the same, every time (each listing reads from the start).
  for (int i = 0; i < 2; ++i) {
    BOOST_TEST(d.list() == names, boost::test_tools::per_element());
  }
  d.sync();
}

// write_all (the bench's naive baseline) writes every byte in order, in
// pieces of any size; sync and sync_data succeed on a plain file and name
// the file when they cannot work.
BOOST_AUTO_TEST_CASE(buffered_write_all_then_sync) {
  TempDir dir(direct_base());
  DataFile f = CheckpointDirectory::open(dir.path).create_file("naive.bin", false);
  std::vector<std::byte> a(300000), b(7);
  fill(a.data(), a.size(), 1);
  fill(b.data(), b.size(), 2);
  f.write_all(a);
  f.write_all({});
  f.write_all(b);
  f.sync();
  f.sync_data();
  BOOST_TEST(f.size() == a.size() + b.size());
  const std::string back = CheckpointDirectory::open(dir.path).read_small_file("naive.bin");
  BOOST_TEST_REQUIRE(back.size() == a.size() + b.size());
  BOOST_TEST(first_mismatch(reinterpret_cast<const std::byte*>(back.data()), a.size(), 1) == a.size());
  BOOST_TEST(std::memcmp(back.data() + a.size(), b.data(), b.size()) == 0);

  DataFile r = CheckpointDirectory::open(dir.path).open_read("naive.bin", false);
  try {
    r.write_all(b);  // opened for reading: write(2) answers EBADF
    BOOST_FAIL("write_all on a read-only file did not throw");
  } catch (const Error& e) {
    BOOST_TEST((e.code() == ErrorCode::kIo));
    BOOST_TEST(e.where() == (dir.path / "naive.bin").string());
    BOOST_TEST(std::string(e.what()).find("write") != std::string::npos);
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ───────────────────────────── UringQueue ──────────────────────────────

BOOST_AUTO_TEST_SUITE(uring_queue)

BOOST_AUTO_TEST_CASE(fixed_direct_writes_land_at_their_offsets) {
  TempDir dir(direct_base());
  StagingRing ring(64 * 1024, 8);
  auto iov = ring.iovecs();
  Notes notes;
  UringQueue q(4, iov, true, notes.callback());
  BOOST_TEST(q.registered_buffers(), "registration refused: " << notes.all());
  BOOST_TEST(notes.said->empty());

  DataFile f = CheckpointDirectory::open(dir.path).create_file("__0_0.safetensors", true);
  BOOST_TEST_MESSAGE("O_DIRECT " << (f.direct() ? "on" : "off") << " in " << dir.path);
  write_extents_and_check(q, ring, f, 40);
}

BOOST_AUTO_TEST_CASE(fixed_reads_return_what_was_written) {
  TempDir dir(direct_base());
  StagingRing ring(64 * 1024, 4);
  auto iov = ring.iovecs();
  UringQueue q(4, iov, true, {});
  BOOST_TEST_REQUIRE(q.registered_buffers());
  const std::size_t n = ring.slot_bytes();
  {
    DataFile w = CheckpointDirectory::open(dir.path).create_file("f", true);
    write_extents_and_check(q, ring, w, 12);
  }
  DataFile r = CheckpointDirectory::open(dir.path).open_read("f", true);
  for (unsigned e = 0; e < 12; ++e) {
    const unsigned s = e % 4;
    std::memset(ring.slot_data(s), 0, n);
    BOOST_TEST(read_sync(q, r.fd(), s, ring.slot_data(s), n, std::uint64_t{e} * n) ==
               static_cast<std::int64_t>(n));
    BOOST_TEST(first_mismatch(ring.slot_data(s), n, e) == n, "extent " << e << " read back wrong");
  }
  // A read that is a part of an extent, from inside a slot (not its start).
  std::memset(ring.slot_data(1), 0, n);
  BOOST_TEST(read_sync(q, r.fd(), 1, ring.slot_data(1) + kAlignment, 2 * kAlignment, 3 * n) ==
             static_cast<std::int64_t>(2 * kAlignment));
  BOOST_TEST(first_mismatch(ring.slot_data(1) + kAlignment, 2 * kAlignment, 3) == 2 * kAlignment);
}

BOOST_AUTO_TEST_CASE(a_read_past_end_of_file_returns_the_short_count) {
  for (const fs::path& base : {direct_base(), fs::path("/dev/shm")}) {
    BOOST_TEST_CONTEXT(base) {
      TempDir dir(base);
      StagingRing ring(16 * 1024, 2);
      auto iov = ring.iovecs();
      UringQueue q(2, iov, true, {});
      {
        DataFile w = CheckpointDirectory::open(dir.path).create_file("f", true);
        fill(ring.slot_data(0), 16 * 1024, 7);
        BOOST_TEST(write_sync(q, w.fd(), 0, ring.slot_data(0), 16 * 1024, 0) == 16 * 1024);
        w.truncate(10000);  // the unaligned tail of a data file
      }
      DataFile r = CheckpointDirectory::open(dir.path).open_read("f", true);
      std::byte* p = ring.slot_data(1);
      std::memset(p, 0, 16 * 1024);
      BOOST_TEST(read_sync(q, r.fd(), 1, p, 16 * 1024, 0) == 10000);
      BOOST_TEST(first_mismatch(p, 10000, 7) == 10000u);
      BOOST_TEST(read_sync(q, r.fd(), 1, p, 8192, 8192) == 10000 - 8192);
      BOOST_TEST(read_sync(q, r.fd(), 1, p, 4096, 12288) == 0);
      BOOST_TEST(read_sync(q, r.fd(), 1, p, 4096, 1 << 20) == 0);
    }
  }
}

BOOST_AUTO_TEST_CASE(failed_operations_complete_with_negative_errno) {
  TempDir dir(direct_base());
  StagingRing ring(kAlignment, 1);
  auto iov = ring.iovecs();
  UringQueue q(2, iov, true, {});
  { DataFile w = CheckpointDirectory::open(dir.path).create_file("f", false); }
  DataFile r = CheckpointDirectory::open(dir.path).open_read("f", false);
  BOOST_TEST(write_sync(q, r.fd(), 0, ring.slot_data(0), kAlignment, 0) == -EBADF);
  BOOST_TEST(write_sync(q, -1, 0, ring.slot_data(0), kAlignment, 0) == -EBADF);
  BOOST_TEST(read_sync(q, -1, 0, ring.slot_data(0), kAlignment, 0) == -EBADF);
  BOOST_TEST(fdatasync_sync(q, -1) == -EBADF);
  // The queue still works after failures.
  DataFile w = CheckpointDirectory::open(dir.path).create_file("g", true);
  BOOST_TEST(write_sync(q, w.fd(), 0, ring.slot_data(0), kAlignment, 0) == 4096);
  BOOST_TEST(fdatasync_sync(q, w.fd()) == 0);
  // An O_DIRECT write from a misaligned offset is refused by ext4.
  if (w.direct() && fs_type(dir.path) == EXT4_SUPER_MAGIC)
    BOOST_TEST(write_sync(q, w.fd(), 0, ring.slot_data(0), kAlignment, 100) == -EINVAL);
  // A fixed-buffer operation outside its buffer is caught before it is queued.
  try {
    q.write(w.fd(), 0, ring.slot_data(0) + 1, kAlignment, 0, {});
    BOOST_FAIL("write outside the registered buffer was accepted");
  } catch (const Error& e) {
    BOOST_TEST((e.code() == ErrorCode::kInvalidArgument));
  }
  BOOST_CHECK_THROW(q.read(w.fd(), 1, ring.slot_data(0), kAlignment, 0, {}), Error);
}

BOOST_AUTO_TEST_CASE(a_thousand_operations_from_four_threads_complete_exactly_once) {
  constexpr unsigned kThreads = 4, kPerThread = 250, kTotal = kThreads * kPerThread, kSlots = 8;
  TempDir dir(direct_base());
  StagingRing ring(kAlignment, kSlots);
  for (unsigned s = 0; s < kSlots; ++s) fill(ring.slot_data(s), kAlignment, s);
  auto iov = ring.iovecs();
  DataFile f = CheckpointDirectory::open(dir.path).create_file("many", true);

  std::vector<std::atomic<int>> calls(kTotal);
  std::vector<std::int64_t> results(kTotal, 0);  // each written once, by its completion
  std::atomic<int> syncs{0};
  std::latch all_done(kTotal);
  {
    UringQueue q(4, iov, true, {});
    auto submitter = [&](unsigned t) {
      for (unsigned i = 0; i < kPerThread; ++i) {
        const unsigned id = t * kPerThread + i;  // extent id; its bytes come from slot id % 8
        q.write(f.fd(), id % kSlots, ring.slot_data(id % kSlots), kAlignment,
                std::uint64_t{id} * kAlignment, [&, id](std::int64_t r) {
                  results[id] = r;
                  calls[id].fetch_add(1);
                  all_done.count_down();
                });
        if (i % 50 == 0) q.fdatasync(f.fd(), [&](std::int64_t r) { syncs.fetch_add(r == 0); });
      }
    };
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < kThreads; ++t) threads.emplace_back(submitter, t);
    for (auto& t : threads) t.join();
    all_done.wait();
  }  // the destructor drains the last fdatasyncs
  for (unsigned id = 0; id < kTotal; ++id) {
    BOOST_TEST(calls[id].load() == 1, "operation " << id);
    BOOST_TEST(results[id] == static_cast<std::int64_t>(kAlignment), "operation " << id);
  }
  BOOST_TEST(syncs.load() == static_cast<int>(kThreads * (kPerThread / 50)));
  BOOST_TEST(f.size() == std::uint64_t{kTotal} * kAlignment);
  int fd = ::open(f.path().c_str(), O_RDONLY | O_CLOEXEC);
  BOOST_TEST_REQUIRE(fd >= 0);
  auto bytes = pread_all(fd, kTotal * kAlignment, 0);
  ::close(fd);
  for (unsigned id = 0; id < kTotal; ++id)
    BOOST_TEST(first_mismatch(bytes.data() + std::size_t{id} * kAlignment, kAlignment, id % kSlots) ==
                   kAlignment,
               "extent " << id);
}

BOOST_AUTO_TEST_CASE(destruction_finishes_queued_work_and_what_completions_queue) {
  TempDir dir(direct_base());
  StagingRing ring(kAlignment, 1);
  fill(ring.slot_data(0), kAlignment, 0);
  auto iov = ring.iovecs();
  DataFile f = CheckpointDirectory::open(dir.path).create_file("f", true);
  std::atomic<int> writes{0}, syncs{0};
  {
    UringQueue q(2, iov, true, {});
    for (unsigned i = 0; i < 64; ++i)
      q.write(f.fd(), 0, ring.slot_data(0), kAlignment, std::uint64_t{i} * kAlignment,
              [&, i](std::int64_t r) {
                writes.fetch_add(r == static_cast<std::int64_t>(kAlignment));
                // A completion may queue a follow-up, even while stopping.
                if (i == 63) q.fdatasync(f.fd(), [&](std::int64_t s) { syncs.fetch_add(s == 0); });
              });
  }  // no waiting: the destructor must finish all of it
  BOOST_TEST(writes.load() == 64);
  BOOST_TEST(syncs.load() == 1);
  BOOST_TEST(f.size() == 64 * kAlignment);
}

BOOST_AUTO_TEST_CASE(without_registration_plain_operations_are_used) {
  TempDir dir(direct_base());
  StagingRing ring(64 * 1024, 4);
  auto iov = ring.iovecs();
  Notes notes;
  UringQueue q(4, iov, false, notes.callback());
  BOOST_TEST(!q.registered_buffers());
  BOOST_TEST(notes.said->empty(), "not asked for, so nothing is refused: " << notes.all());
  DataFile f = CheckpointDirectory::open(dir.path).create_file("f", true);
  write_extents_and_check(q, ring, f, 10);
  // Unregistered: any aligned memory will do, not only the ring's slots.
  StagingRing other(64 * 1024, 1);
  DataFile r = CheckpointDirectory::open(dir.path).open_read("f", true);
  BOOST_TEST(read_sync(q, r.fd(), 0, other.slot_data(0), 64 * 1024, 5 * 64 * 1024) == 64 * 1024);
  BOOST_TEST(first_mismatch(other.slot_data(0), 64 * 1024, 5) == 64u * 1024);
}

BOOST_AUTO_TEST_CASE(refused_registration_is_noted_and_falls_back) {
  TempDir dir(direct_base());
  StagingRing ring(kAlignment, 2);
  Notes notes;
  UringQueue q(2, std::span<const iovec>{}, true, notes.callback());  // nothing to register
  BOOST_TEST(!q.registered_buffers());
  BOOST_TEST_REQUIRE(notes.said->size() == 1u);
  BOOST_TEST(notes.said->front().find("io_uring buffer registration refused") == 0u);
  BOOST_TEST(notes.said->front().find("using unregistered buffers") != std::string::npos);
  DataFile f = CheckpointDirectory::open(dir.path).create_file("f", true);
  write_extents_and_check(q, ring, f, 6);
}

BOOST_AUTO_TEST_CASE(buffered_path_on_tmpfs_works) {
  TempDir dir("/dev/shm");
  StagingRing ring(64 * 1024, 4);
  auto iov = ring.iovecs();
  UringQueue q(4, iov, false, {});
  DataFile f = CheckpointDirectory::open(dir.path).create_file("f", false);
  BOOST_TEST(!f.direct());
  write_extents_and_check(q, ring, f, 10);
  DataFile r = CheckpointDirectory::open(dir.path).open_read("f", false);
  BOOST_TEST(read_sync(q, r.fd(), 2, ring.slot_data(2), 64 * 1024, 9 * 64 * 1024) == 64 * 1024);
  BOOST_TEST(first_mismatch(ring.slot_data(2), 64 * 1024, 9) == 64u * 1024);
}

// A file system that refuses O_DIRECT (ramfs), end to end through the queue.
// Needs CAP_SYS_ADMIN to mount; skipped without it.
BOOST_AUTO_TEST_CASE(file_system_without_o_direct_falls_back_end_to_end) {
  TempDir mnt(direct_base());
  if (::mount("ramfs", mnt.path.c_str(), "ramfs", 0, nullptr) != 0) {
    BOOST_TEST_MESSAGE("skipped: cannot mount ramfs (" << std::strerror(errno) << ")");
    return;
  }
  struct Unmount {
    const fs::path& p;
    ~Unmount() { ::umount2(p.c_str(), MNT_DETACH); }
  } unmount{mnt.path};
  BOOST_TEST(fs_type(mnt.path) == static_cast<long>(RAMFS_MAGIC));
  DataFile f = CheckpointDirectory::open(mnt.path).create_file("f", true);
  BOOST_TEST(!f.direct());
  StagingRing ring(64 * 1024, 4);
  auto iov = ring.iovecs();
  UringQueue q(4, iov, true, {});
  write_extents_and_check(q, ring, f, 8);
  DataFile r = CheckpointDirectory::open(mnt.path).open_read("f", true);
  BOOST_TEST(!r.direct());
}

// A pipe takes at most its capacity per write: a large write to it comes back
// short and the queue must resubmit the rest until every byte is through.
BOOST_AUTO_TEST_CASE(short_writes_are_resubmitted_until_complete) {
  StagingRing ring(1 << 20, 1);
  fill(ring.slot_data(0), ring.slot_bytes(), 3);
  auto iov = ring.iovecs();
  UringQueue q(2, iov, true, {});
  int p[2];
  BOOST_TEST_REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  ::fcntl(p[1], F_SETPIPE_SZ, 4096);

  std::vector<std::byte> got;
  std::thread reader([&] {
    std::byte buf[3000];  // drain in small bites, slowly at first
    for (ssize_t n; (n = ::read(p[0], buf, sizeof buf)) > 0;) {
      got.insert(got.end(), buf, buf + n);
      if (got.size() < 20000) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  const auto before = q.resubmissions();
  const std::int64_t r = write_sync(q, p[1], 0, ring.slot_data(0), ring.slot_bytes(), 0);
  ::close(p[1]);
  reader.join();
  ::close(p[0]);
  BOOST_TEST(r == static_cast<std::int64_t>(ring.slot_bytes()));
  BOOST_TEST_REQUIRE(got.size() == ring.slot_bytes());
  BOOST_TEST(first_mismatch(got.data(), got.size(), 3) == got.size());
  BOOST_TEST_MESSAGE("resubmissions for 1 MiB through a 4 KiB pipe: " << q.resubmissions() - before);
  BOOST_TEST(q.resubmissions() > before, "the pipe never returned a short write");
}

BOOST_AUTO_TEST_CASE(zero_queue_depth_is_invalid) {
  try {
    UringQueue q(0, {}, false, {});
    BOOST_FAIL("queue depth 0 was accepted");
  } catch (const Error& e) {
    BOOST_TEST((e.code() == ErrorCode::kInvalidArgument));
  }
}

// The queue cannot hand an exception to anyone, and dropping it would leave
// the job's waiters hanging: a throwing completion ends the process
// (uring_queue.hpp). Checked in a child process, under a time limit.
BOOST_AUTO_TEST_CASE(a_throwing_completion_terminates_the_process_instead_of_being_dropped) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  BOOST_REQUIRE(pid >= 0);
  if (pid == 0) {
    std::signal(SIGABRT, SIG_DFL);  // Boost.Test's handler would catch it
    std::freopen("/dev/null", "w", stdout);
    std::freopen("/dev/null", "w", stderr);
    {
      UringQueue q(1, {}, false, {});
      q.fdatasync(-1, [](std::int64_t) { throw std::runtime_error("a completion threw"); });
      std::this_thread::sleep_for(std::chrono::seconds(5));
    }
    std::_Exit(0);  // not reached if the rule holds
  }
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  pid_t r;
  while ((r = ::waitpid(pid, &status, WNOHANG)) == 0 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (r == 0) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    BOOST_FAIL("the child neither terminated nor exited");
  }
  BOOST_TEST(WIFSIGNALED(status));
  BOOST_TEST(WTERMSIG(status) == SIGABRT);
}

BOOST_AUTO_TEST_SUITE_END()
