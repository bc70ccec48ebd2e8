// lib/io/data_file.hpp — opening, sizing and syncing the files of a checkpoint.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

#include "ringckpt/io_options.hpp"

namespace ringckpt {

// An open file descriptor, closed on destruction.
class DataFile {
 public:
  // Creates `path` anew for writing, with O_DIRECT if want_direct and the
  // file system accepts it; direct() tells which. What is there already (a
  // stale file, or a symbolic link: its target is never touched) is unlinked
  // first, then the file is created with O_CREAT | O_EXCL | O_NOFOLLOW, so
  // nothing is ever written through a link. Throws Error(kIo, path).
  static DataFile create(const std::filesystem::path& path, bool want_direct);
  // Opens `path` for reading, with O_DIRECT if possible, never blocking and
  // never following a link (O_NONBLOCK | O_NOFOLLOW): a missing file is
  // Error(kNotFound, path); a symbolic link, FIFO, directory or device is
  // Error(kCorrupt, path, "not a regular file (...)").
  static DataFile open_read(const std::filesystem::path& path, bool want_direct);

  DataFile() = default;
  DataFile(DataFile&& other) noexcept;
  DataFile& operator=(DataFile&& other) noexcept;
  ~DataFile();

  int fd() const noexcept { return fd_; }
  bool direct() const noexcept { return direct_; }
  const std::filesystem::path& path() const noexcept { return path_; }
  std::uint64_t size() const;          // fstat
  void truncate(std::uint64_t size);   // ftruncate; Error(kIo, path)
  // Reserves blocks for [0, size) and sets the size to it (fallocate), where
  // the file system can; a file system that cannot is left as it is. A full
  // disk is Error(kIo, path).
  void allocate(std::uint64_t size);
  // Writes all of `data` at the file position with write(2), retrying short
  // writes and EINTR (plain buffered I/O unless direct()). Error(kIo, path).
  void write_all(std::span<const std::byte> data);
  void sync();                         // fsync; Error(kIo, path)
  void sync_data();                    // fdatasync; Error(kIo, path)
  void close();                        // Error(kIo, path) if close fails

 private:
  int fd_ = -1;
  bool direct_ = false;
  std::filesystem::path path_;
};

// fsync of a directory, so that a rename or create in it is durable.
void sync_directory(const std::filesystem::path& dir);

// Writes `content` to dir/name.tmp (created anew by DataFile::create: a stale
// temporary or a link there is removed, never written through), fsyncs it,
// renames it to dir/name and fsyncs dir: afterwards dir/name is the new
// content (a link at dir/name is replaced, not followed), before it the old one.
void write_file_atomically(const std::filesystem::path& dir, std::string_view name,
                           std::string_view content);

// Reads a whole (small) regular file, opened as DataFile::open_read opens it
// (no link, FIFO, device or directory). A file larger than max_bytes (by its
// fstat size, before anything is allocated, or as it is read) is
// Error(kCorrupt, path, naming the limit); running out of memory is
// Error(kIo, path). Error(kNotFound / kIo, path) as open_read.
std::string read_small_file(const std::filesystem::path& path,
                            std::uint64_t max_bytes = kDefaultMaxMetadataBytes);

}  // namespace ringckpt
