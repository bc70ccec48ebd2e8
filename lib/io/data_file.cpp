// data_file.cpp — opening, sizing and syncing the files of a checkpoint.
#include "io/data_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>
#include <string>
#include <utility>

#include "io/kill_points.hpp"
#include "ringckpt/error.hpp"

namespace ringckpt {
namespace {

std::string errno_text(int err) { return std::strerror(err); }

[[noreturn]] void throw_errno(const std::filesystem::path& path, std::string_view what, int err) {
  if (err == ENOENT) throw Error(ErrorCode::kNotFound, path.string(), "no such file");
  // O_NOFOLLOW answers ELOOP when the last component is a symbolic link.
  if (err == ELOOP) {
    throw Error(ErrorCode::kCorrupt, path.string(),
                "not a regular file (a symlink); ringckpt never follows links inside a "
                "checkpoint directory");
  }
  throw Error(ErrorCode::kIo, path.string(), std::string(what) + ": " + errno_text(err));
}

// What a non-regular file is, for the error that refuses it.
std::string kind_of(mode_t mode) {
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISLNK(mode)) return "a symlink";
  return "not a plain file";
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
    // Linux creates the file before it refuses O_DIRECT; an exclusive create
    // removes the file it just made before trying again.
    if ((flags & O_EXCL) != 0) ::unlink(path.c_str());
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

// Removes what is at `path` so that it can be created anew: a stale regular
// file or a symbolic link (unlink(2) removes the link itself, never its
// target). Anything else there (a directory, FIFO, device) is refused and
// left alone.
void remove_stale(const std::filesystem::path& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return;
    throw_errno(path, "lstat", errno);
  }
  if (!S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode)) {
    throw Error(ErrorCode::kIo, path.string(),
                "cannot replace it: not a regular file (" + kind_of(st.st_mode) + ")");
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) throw_errno(path, "unlink", errno);
}

}  // namespace

DataFile DataFile::create(const std::filesystem::path& path, bool want_direct) {
  remove_stale(path);
  DataFile f;
  // O_EXCL | O_NOFOLLOW: a link planted after remove_stale makes the open fail
  // (EEXIST) instead of writing through it to a file elsewhere.
  f.fd_ = open_maybe_direct(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                            want_direct, &f.direct_);
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
  // O_NOFOLLOW: a symbolic link is refused (ELOOP), whatever it points to.
  f.fd_ = open_maybe_direct(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW, want_direct,
                            &f.direct_);
  f.path_ = path;
  struct stat st {};
  if (::fstat(f.fd_, &st) != 0) {
    throw Error(ErrorCode::kIo, path.string(), "fstat: " + errno_text(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    throw Error(ErrorCode::kCorrupt, path.string(),
                "not a regular file (" + kind_of(st.st_mode) + ")");
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

  // A stale temporary (or a link planted under its name) is removed, and the
  // temporary created anew with O_EXCL | O_NOFOLLOW (DataFile::create).
  DataFile file = DataFile::create(tmp, /*want_direct=*/false);
  // Until the rename, the old dir/name is untouched; on any failure the
  // temporary is removed so that no half-written file is left behind.
  try {
    file.write_all({reinterpret_cast<const std::byte*>(content.data()), content.size()});
    file.sync();
    file.close();
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  detail::kill_point("tmp-written");  // tests only (io/kill_points.hpp)
  // rename(2) replaces dir/name itself, even where it is a symbolic link.
  if (::rename(tmp.c_str(), target.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw Error(ErrorCode::kIo, tmp.string(), "rename: " + errno_text(err));
  }
  sync_directory(dir.empty() ? std::filesystem::path(".") : dir);
}

std::string read_small_file(const std::filesystem::path& path, std::uint64_t max_bytes) {
  // A regular file, not a link, FIFO, device or directory (DataFile::open_read).
  DataFile file = DataFile::open_read(path, /*want_direct=*/false);
  const std::uint64_t size = file.size();
  auto too_large = [&](std::uint64_t bytes) {
    return Error(ErrorCode::kCorrupt, path.string(),
                 "file of " + std::to_string(bytes) + " bytes exceeds the limit of " +
                     std::to_string(max_bytes) + " bytes (IoOptions::max_metadata_bytes)");
  };
  if (size > max_bytes) throw too_large(size);  // refused before a byte is allocated
  std::string out;
  try {
    out.reserve(static_cast<std::size_t>(size));
    char buf[65536];
    for (;;) {
      ssize_t n = ::read(file.fd(), buf, sizeof buf);
      if (n < 0) {
        if (errno == EINTR) continue;
        throw Error(ErrorCode::kIo, path.string(), "read: " + errno_text(errno));
      }
      if (n == 0) break;
      // A file that grows while it is read is held to the same limit.
      if (static_cast<std::uint64_t>(n) > max_bytes - out.size()) {
        throw too_large(out.size() + static_cast<std::uint64_t>(n));
      }
      out.append(buf, static_cast<std::size_t>(n));
    }
  } catch (const std::bad_alloc&) {
    throw Error(ErrorCode::kIo, path.string(),
                "out of memory reading " + std::to_string(size) + " bytes");
  }
  return out;
}

}  // namespace ringckpt
