// lib/io/data_file.hpp — the checkpoint directory, opened once, and opening,
// sizing and syncing the files in it: the only place files are opened,
// created, renamed, removed or synced.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ringckpt/io_options.hpp"

namespace ringckpt {

class CheckpointDirectory;

// An open file descriptor, closed on destruction. Files are opened and created
// only through a CheckpointDirectory, by name.
class DataFile {
 public:
  DataFile() = default;
  DataFile(DataFile&& other) noexcept;
  DataFile& operator=(DataFile&& other) noexcept;
  ~DataFile();

  int fd() const noexcept { return fd_; }
  bool direct() const noexcept { return direct_; }
  // dir/name, for messages only: the file is never reopened by it.
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
  friend class CheckpointDirectory;
  int fd_ = -1;
  bool direct_ = false;
  std::filesystem::path path_;
};

// The directory of one checkpoint, opened once (O_DIRECTORY): every file in it
// is then named relative to the open handle (openat, unlinkat, renameat), so a
// save, load or verify works on the directory it opened even if the path is
// renamed away and replaced (by a link to another directory, say) meanwhile.
// The path given may itself be a symbolic link the user made: that one is
// followed, once, when the handle is opened; no link inside is ever followed.
// Names are plain file names (is_plain_file_name: no '/', not "." or "..");
// any other name is Error(kInvalidArgument, dir/name). Errors name dir/name.
// The methods are const and may be called from several threads at once.
class CheckpointDirectory {
 public:
  // Opens the existing directory `path`. Missing: Error(kNotFound, path); not
  // a directory (or unreadable): Error(kIo, path).
  static CheckpointDirectory open(const std::filesystem::path& path);
  // Creates `path` (and its parents) where missing, then opens it as open().
  static CheckpointDirectory create(const std::filesystem::path& path);

  CheckpointDirectory() = default;
  CheckpointDirectory(CheckpointDirectory&& other) noexcept;
  CheckpointDirectory& operator=(CheckpointDirectory&& other) noexcept;
  ~CheckpointDirectory();

  bool is_open() const noexcept { return fd_ >= 0; }
  const std::filesystem::path& path() const noexcept { return path_; }
  // path()/name, for messages.
  std::filesystem::path path_of(std::string_view name) const { return path_ / name; }

  // Creates `name` anew for writing, with O_DIRECT if want_direct and the file
  // system accepts it; direct() tells which. What is there already (a stale
  // file, or a symbolic link: its target is never touched) is unlinked first,
  // then the file is created with O_CREAT | O_EXCL | O_NOFOLLOW, so nothing is
  // ever written through a link. Anything else in the way (a directory, FIFO,
  // device) is Error(kIo, dir/name) and left alone.
  DataFile create_file(std::string_view name, bool want_direct) const;
  // Opens `name` for reading, with O_DIRECT if possible, never blocking and
  // never following a link (O_NONBLOCK | O_NOFOLLOW): a missing file is
  // Error(kNotFound); a symbolic link, FIFO, directory or device is
  // Error(kCorrupt, dir/name, "not a regular file (...)").
  DataFile open_read(std::string_view name, bool want_direct) const;
  // Reads a whole (small) regular file, opened as open_read opens it. A file
  // larger than max_bytes (by its fstat size, before anything is allocated,
  // or as it is read) is Error(kCorrupt, dir/name, naming the limit); running
  // out of memory is Error(kIo). Error(kNotFound / kCorrupt / kIo) as open_read.
  std::string read_small_file(std::string_view name,
                              std::uint64_t max_bytes = kDefaultMaxMetadataBytes) const;
  // Writes `content` to {name}.tmp (created anew by create_file: a stale
  // temporary or a link there is removed, never written through), fsyncs it,
  // renames it to `name` and fsyncs the directory: afterwards `name` is the
  // new content (a link at `name` is replaced, not followed), before it the
  // old one. On failure the temporary is removed.
  void write_file_atomically(std::string_view name, std::string_view content) const;

  // What lstat says of `name` (no link followed): nullopt where it is missing.
  struct Entry {
    bool regular = false;
    bool symlink = false;
    std::string kind;         // of an entry that is not a regular file: "a FIFO", ...
    std::uint64_t size = 0;   // of a regular file
  };
  std::optional<Entry> stat(std::string_view name) const;  // Error(kIo) if lstat fails
  // Unlinks `name` (a file or link; never a link's target, never a
  // directory). False where nothing was removed.
  bool remove(std::string_view name) const noexcept;
  void rename(std::string_view from, std::string_view to) const;  // renameat; Error(kIo, dir/from)
  void sync() const;  // fsync of the directory; Error(kIo, dir)
  // The names in the directory (not "." or ".."), unsorted. Error(kIo, dir).
  std::vector<std::string> list() const;

 private:
  int fd_ = -1;
  std::filesystem::path path_;
};

}  // namespace ringckpt
