// data_file.cpp — opening, sizing and syncing the files of a checkpoint.
#include "io/data_file.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>
#include <string>
#include <utility>

#include "format/metadata_json.hpp"
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
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISLNK(mode)) return "a symbolic link";
  return "not a plain file";
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

// ------------------------------------------------------ CheckpointDirectory

namespace {

// REQUIRES: the directory is open. Refuses a name that is not a plain file
// name: it could reach outside the directory ("..", "a/b") or be it (".").
void check_name(const CheckpointDirectory& dir, std::string_view name) {
  if (!dir.is_open()) {
    throw Error(ErrorCode::kInvalidArgument, dir.path().string(), "the directory is not open");
  }
  if (!is_plain_file_name(name)) {
    throw Error(ErrorCode::kInvalidArgument, dir.path_of(name).string(),
                "not a plain file name inside the checkpoint directory");
  }
}

// openat(2), retried on EINTR.
int openat_retrying(int dirfd, const std::string& name, int flags, mode_t mode) {
  int fd;
  do fd = ::openat(dirfd, name.c_str(), flags, mode);
  while (fd < 0 && errno == EINTR);
  return fd;
}

// Opens dirfd/name with O_DIRECT when asked and the file system takes it; a
// file system that refuses O_DIRECT (tmpfs on older kernels, some FUSE)
// answers EINVAL, and the file is then opened without it. *direct says which
// happened. `path` names the file in errors.
int open_maybe_direct(int dirfd, const std::string& name, const std::filesystem::path& path,
                      int flags, bool want_direct, bool* direct) {
  if (want_direct) {
    int fd = openat_retrying(dirfd, name, flags | O_DIRECT, 0644);
    if (fd >= 0) {
      *direct = true;
      return fd;
    }
    if (errno != EINVAL) throw_errno(path, "open", errno);
    // Linux creates the file before it refuses O_DIRECT; an exclusive create
    // removes the file it just made before trying again.
    if ((flags & O_EXCL) != 0) ::unlinkat(dirfd, name.c_str(), 0);
  }
  *direct = false;
  int fd = openat_retrying(dirfd, name, flags, 0644);
  if (fd < 0) throw_errno(path, "open", errno);
  return fd;
}

}  // namespace

CheckpointDirectory CheckpointDirectory::open(const std::filesystem::path& path) {
  CheckpointDirectory dir;
  dir.path_ = path;
  const std::filesystem::path& at = path.empty() ? std::filesystem::path(".") : path;
  // No O_NOFOLLOW: the path is the user's choice, a link they made included.
  // O_RDONLY (not O_PATH): the handle is fsynced and listed.
  int fd;
  do fd = ::open(at.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) throw Error(ErrorCode::kNotFound, path.string(), "no such directory");
    throw Error(ErrorCode::kIo, path.string(),
                "cannot open the checkpoint directory: " + errno_text(err));
  }
  dir.fd_ = fd;
  return dir;
}

CheckpointDirectory CheckpointDirectory::create(const std::filesystem::path& path) {
  std::error_code ec;
  if (!path.empty()) std::filesystem::create_directories(path, ec);
  if (ec) {
    throw Error(ErrorCode::kIo, path.string(),
                "cannot create the checkpoint directory: " + ec.message());
  }
  return open(path);
}

CheckpointDirectory::CheckpointDirectory(CheckpointDirectory&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), path_(std::move(other.path_)) {}

CheckpointDirectory& CheckpointDirectory::operator=(CheckpointDirectory&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    path_ = std::move(other.path_);
  }
  return *this;
}

CheckpointDirectory::~CheckpointDirectory() {
  if (fd_ >= 0) ::close(fd_);
}

std::optional<CheckpointDirectory::Entry> CheckpointDirectory::stat(std::string_view name) const {
  check_name(*this, name);
  struct stat st {};
  if (::fstatat(fd_, std::string(name).c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return std::nullopt;
    throw Error(ErrorCode::kIo, path_of(name).string(), "lstat: " + errno_text(errno));
  }
  Entry e;
  e.regular = S_ISREG(st.st_mode);
  e.symlink = S_ISLNK(st.st_mode);
  if (e.regular) e.size = static_cast<std::uint64_t>(st.st_size);
  else e.kind = kind_of(st.st_mode);
  return e;
}

bool CheckpointDirectory::remove(std::string_view name) const noexcept {
  if (!is_open() || !is_plain_file_name(name)) return false;
  return ::unlinkat(fd_, std::string(name).c_str(), 0) == 0;
}

void CheckpointDirectory::rename(std::string_view from, std::string_view to) const {
  check_name(*this, from);
  check_name(*this, to);
  if (::renameat(fd_, std::string(from).c_str(), fd_, std::string(to).c_str()) != 0) {
    throw Error(ErrorCode::kIo, path_of(from).string(),
                "rename to " + std::string(to) + ": " + errno_text(errno));
  }
}

void CheckpointDirectory::sync() const {
  if (!is_open() || ::fsync(fd_) != 0) {
    throw Error(ErrorCode::kIo, path_.string(),
                "fsync directory: " + (is_open() ? errno_text(errno) : "not open"));
  }
}

std::vector<std::string> CheckpointDirectory::list() const {
  if (!is_open()) throw Error(ErrorCode::kIo, path_.string(), "list: the directory is not open");
  // A description of its own (not a dup, which would share the read position
  // with fd_ and with other listings): "." relative to the handle is the
  // directory it opened, wherever its path now leads.
  const int fd = openat_retrying(fd_, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (fd < 0) throw Error(ErrorCode::kIo, path_.string(), "list: " + errno_text(errno));
  DIR* d = ::fdopendir(fd);
  if (d == nullptr) {
    const int err = errno;
    ::close(fd);
    throw Error(ErrorCode::kIo, path_.string(), "list: " + errno_text(err));
  }
  std::vector<std::string> names;
  for (;;) {
    errno = 0;
    const dirent* e = ::readdir(d);
    if (e == nullptr) break;
    const std::string_view name = e->d_name;
    if (name != "." && name != "..") names.emplace_back(name);
  }
  const int err = errno;
  ::closedir(d);  // closes fd
  if (err != 0) throw Error(ErrorCode::kIo, path_.string(), "list: " + errno_text(err));
  return names;
}

DataFile CheckpointDirectory::create_file(std::string_view name, bool want_direct) const {
  check_name(*this, name);
  const std::string n(name);
  DataFile f;
  f.path_ = path_of(name);
  // Removes what is there so that it can be created anew: a stale regular
  // file or a symbolic link (unlinkat removes the link itself, never its
  // target). Anything else there (a directory, FIFO, device) is left alone.
  if (const std::optional<Entry> e = stat(name)) {
    if (!e->regular && !e->symlink) {
      throw Error(ErrorCode::kIo, f.path_.string(),
                  "cannot replace it: not a regular file (" + e->kind + ")");
    }
    if (::unlinkat(fd_, n.c_str(), 0) != 0 && errno != ENOENT) {
      throw_errno(f.path_, "unlink", errno);
    }
  }
  // O_EXCL | O_NOFOLLOW: a link planted after the unlink makes the open fail
  // (EEXIST) instead of writing through it to a file elsewhere.
  f.fd_ = open_maybe_direct(fd_, n, f.path_, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                            want_direct, &f.direct_);
  return f;
}

DataFile CheckpointDirectory::open_read(std::string_view name, bool want_direct) const {
  check_name(*this, name);
  DataFile f;
  f.path_ = path_of(name);
  // O_NONBLOCK: opening a FIFO planted in place of a data file must not hang.
  // O_NOFOLLOW: a symbolic link is refused (ELOOP), whatever it points to.
  f.fd_ = open_maybe_direct(fd_, std::string(name), f.path_,
                            O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW, want_direct,
                            &f.direct_);
  struct stat st {};
  if (::fstat(f.fd_, &st) != 0) {
    throw Error(ErrorCode::kIo, f.path_.string(), "fstat: " + errno_text(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    throw Error(ErrorCode::kCorrupt, f.path_.string(),
                "not a regular file (" + kind_of(st.st_mode) + ")");
  }
  // io_uring would answer -EAGAIN instead of waiting on a non-blocking file.
  ::fcntl(f.fd_, F_SETFL, ::fcntl(f.fd_, F_GETFL) & ~O_NONBLOCK);
  return f;
}

void CheckpointDirectory::write_file_atomically(std::string_view name,
                                                std::string_view content) const {
  check_name(*this, name);
  const std::string tmp = std::string(name) + ".tmp";
  // A stale temporary (or a link planted under its name) is removed, and the
  // temporary created anew with O_EXCL | O_NOFOLLOW (create_file).
  DataFile file = create_file(tmp, /*want_direct=*/false);
  // Until the rename, the old `name` is untouched; on any failure the
  // temporary is removed so that no half-written file is left behind.
  try {
    file.write_all({reinterpret_cast<const std::byte*>(content.data()), content.size()});
    file.sync();
    file.close();
  } catch (...) {
    remove(tmp);
    throw;
  }
  detail::kill_point("tmp-written");  // tests only (io/kill_points.hpp)
  // renameat replaces `name` itself, even where it is a symbolic link.
  try {
    rename(tmp, name);
  } catch (...) {
    remove(tmp);
    throw;
  }
  sync();
}

std::string CheckpointDirectory::read_small_file(std::string_view name,
                                                 std::uint64_t max_bytes) const {
  // A regular file, not a link, FIFO, device or directory (open_read).
  DataFile file = open_read(name, /*want_direct=*/false);
  const std::string path = file.path().string();
  const std::uint64_t size = file.size();
  auto too_large = [&](std::uint64_t bytes) {
    return Error(ErrorCode::kCorrupt, path,
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
        throw Error(ErrorCode::kIo, path, "read: " + errno_text(errno));
      }
      if (n == 0) break;
      // A file that grows while it is read is held to the same limit.
      if (static_cast<std::uint64_t>(n) > max_bytes - out.size()) {
        throw too_large(out.size() + static_cast<std::uint64_t>(n));
      }
      out.append(buf, static_cast<std::size_t>(n));
    }
  } catch (const std::bad_alloc&) {
    throw Error(ErrorCode::kIo, path, "out of memory reading " + std::to_string(size) + " bytes");
  }
  return out;
}

}  // namespace ringckpt
