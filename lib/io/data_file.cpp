// data_file.cpp — opening, sizing and syncing the files of a checkpoint.
#include "io/data_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "ringckpt/error.hpp"

namespace ringckpt {
namespace {

std::string errno_text(int err) { return std::strerror(err); }

[[noreturn]] void throw_errno(const std::filesystem::path& path, std::string_view what, int err) {
  if (err == ENOENT) throw Error(ErrorCode::kNotFound, path.string(), "no such file");
  throw Error(ErrorCode::kIo, path.string(), std::string(what) + ": " + errno_text(err));
}

// open(2), retried on EINTR.
int open_retrying(const std::filesystem::path& path, int flags, mode_t mode) {
  int fd;
  do fd = ::open(path.c_str(), flags, mode);
  while (fd < 0 && errno == EINTR);
  return fd;
}

// Opens with O_DIRECT when asked and the file system takes it; a file system
// that refuses O_DIRECT (tmpfs on older kernels, some FUSE) answers EINVAL, and
// the file is then opened without it. *direct says which happened.
int open_maybe_direct(const std::filesystem::path& path, int flags, bool want_direct,
                      bool* direct) {
  if (want_direct) {
    int fd = open_retrying(path, flags | O_DIRECT, 0644);
    if (fd >= 0) {
      *direct = true;
      return fd;
    }
    if (errno != EINVAL) throw_errno(path, "open", errno);
  }
  *direct = false;
  int fd = open_retrying(path, flags, 0644);
  if (fd < 0) throw_errno(path, "open", errno);
  return fd;
}

// Writes all of `data` to fd; false with errno set on failure.
bool write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

}  // namespace

DataFile DataFile::create(const std::filesystem::path& path, bool want_direct) {
  DataFile f;
  f.fd_ = open_maybe_direct(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, want_direct,
                            &f.direct_);
  f.path_ = path;
  return f;
}

void DataFile::allocate(std::uint64_t size) {
  if (size == 0) return;
  if (::fallocate(fd_, 0, 0, static_cast<off_t>(size)) == 0) return;
  const int err = errno;
  if (err == EOPNOTSUPP || err == ENOSYS) return;  // the writes allocate as they go
  throw Error(ErrorCode::kIo, path_.string(),
              "cannot reserve " + std::to_string(size) + " bytes: " + std::strerror(err));
}

void DataFile::write_all(std::span<const std::byte> data) {
  if (!ringckpt::write_all(fd_, {reinterpret_cast<const char*>(data.data()), data.size()}))
    throw Error(ErrorCode::kIo, path_.string(), "write: " + errno_text(errno));
}

void DataFile::sync() {
  if (::fsync(fd_) != 0) throw Error(ErrorCode::kIo, path_.string(), "fsync: " + errno_text(errno));
}

void DataFile::sync_data() {
  if (::fdatasync(fd_) != 0)
    throw Error(ErrorCode::kIo, path_.string(), "fdatasync: " + errno_text(errno));
}

DataFile DataFile::open_read(const std::filesystem::path& path, bool want_direct) {
  DataFile f;
  // O_NONBLOCK: opening a FIFO planted in place of a data file must not hang.
  f.fd_ = open_maybe_direct(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK, want_direct, &f.direct_);
  f.path_ = path;
  struct stat st {};
  if (::fstat(f.fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    throw Error(ErrorCode::kCorrupt, path.string(), "not a regular file");
  }
  // io_uring would answer -EAGAIN instead of waiting on a non-blocking file.
  ::fcntl(f.fd_, F_SETFL, ::fcntl(f.fd_, F_GETFL) & ~O_NONBLOCK);
  return f;
}

DataFile::DataFile(DataFile&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      direct_(std::exchange(other.direct_, false)),
      path_(std::move(other.path_)) {}

DataFile& DataFile::operator=(DataFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    direct_ = std::exchange(other.direct_, false);
    path_ = std::move(other.path_);
  }
  return *this;
}

DataFile::~DataFile() {
  if (fd_ >= 0) ::close(fd_);  // errors here have nowhere to go; close() reports them
}

std::uint64_t DataFile::size() const {
  struct stat st;
  if (::fstat(fd_, &st) != 0) throw Error(ErrorCode::kIo, path_.string(), "fstat: " + errno_text(errno));
  return static_cast<std::uint64_t>(st.st_size);
}

void DataFile::truncate(std::uint64_t size) {
  int r;
  do r = ::ftruncate(fd_, static_cast<off_t>(size));
  while (r != 0 && errno == EINTR);
  if (r != 0) throw Error(ErrorCode::kIo, path_.string(), "ftruncate: " + errno_text(errno));
}

void DataFile::close() {
  if (fd_ < 0) return;
  // The descriptor is gone whatever close(2) says; never close it twice.
  int fd = std::exchange(fd_, -1);
  if (::close(fd) != 0 && errno != EINTR)
    throw Error(ErrorCode::kIo, path_.string(), "close: " + errno_text(errno));
}

void sync_directory(const std::filesystem::path& dir) {
  int fd = open_retrying(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (fd < 0) throw_errno(dir, "open directory", errno);
  int r = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (r != 0) throw Error(ErrorCode::kIo, dir.string(), "fsync directory: " + errno_text(err));
}

void write_file_atomically(const std::filesystem::path& dir, std::string_view name,
                           std::string_view content) {
  const std::filesystem::path target = dir / name;
  std::filesystem::path tmp = target;
  tmp += ".tmp";

  int fd = open_retrying(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw_errno(tmp, "open", errno);
  // Until the rename, the old dir/name is untouched; on any failure the
  // temporary is removed so that no half-written file is left behind.
  auto fail = [&](std::string_view what, int err) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    throw Error(ErrorCode::kIo, tmp.string(), std::string(what) + ": " + errno_text(err));
  };
  if (!write_all(fd, content)) fail("write", errno);
  if (::fsync(fd) != 0) fail("fsync", errno);
  if (::close(std::exchange(fd, -1)) != 0 && errno != EINTR) fail("close", errno);
  if (::rename(tmp.c_str(), target.c_str()) != 0) fail("rename", errno);
  sync_directory(dir.empty() ? std::filesystem::path(".") : dir);
}

std::string read_small_file(const std::filesystem::path& path) {
  int fd = open_retrying(path, O_RDONLY | O_CLOEXEC, 0);
  if (fd < 0) throw_errno(path, "open", errno);
  std::string out;
  struct stat st;
  if (::fstat(fd, &st) == 0 && st.st_size > 0) out.reserve(static_cast<std::size_t>(st.st_size));
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      throw Error(ErrorCode::kIo, path.string(), "read: " + errno_text(err));
    }
    if (n == 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return out;
}

}  // namespace ringckpt
