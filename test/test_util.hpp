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
