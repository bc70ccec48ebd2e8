// lib/io/uring_queue.hpp — one io_uring and the I/O thread that owns it.
//
// Any thread may queue an operation; only the I/O thread touches the ring. It
// keeps up to queue_depth operations in flight, resubmits the rest of a short
// write or read, and runs each completion on the I/O thread (completions must
// be short: count, release a slot, post real work elsewhere). New requests
// wake the thread through an eventfd that the ring itself reads.
//
// A completion must not throw. The queue has no one to hand an exception to,
// and dropping it would leave the waiters of the job that queued the operation
// hanging; so one that escapes a completion calls std::terminate. Jobs wrap
// their completions with SlotEngine::io_completion, which turns an exception
// into the job's failure.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace ringckpt {

class UringQueue {
 public:
  // result: bytes transferred in all (>= 0), or -errno. Must not throw.
  using Completion = std::function<void(std::int64_t result)>;
  using Note = std::function<void(std::string_view)>;

  // buffers: memory that fixed-buffer operations may use (registered once if
  // register_buffers and the kernel agrees; else plain operations, noted).
  // Throws Error(kIo) if no io_uring can be set up.
  UringQueue(unsigned queue_depth, std::span<const iovec> buffers, bool register_buffers,
             Note note);
  // Waits for every queued operation to complete, then stops the thread.
  ~UringQueue();
  UringQueue(const UringQueue&) = delete;
  UringQueue& operator=(const UringQueue&) = delete;

  bool registered_buffers() const noexcept;
  // How many times the rest of a short (or EAGAIN/EINTR) operation was
  // resubmitted; for tests and reports.
  std::uint64_t resubmissions() const noexcept;

  // data lies inside buffers[buffer_index] (checked when buffers are
  // registered: Error(kInvalidArgument) if not). A write completes with
  // `length` or an error (a write that makes no progress is -EIO). A read
  // completes with fewer bytes only at end of file.
  void write(int fd, unsigned buffer_index, const std::byte* data, std::size_t length,
             std::uint64_t offset, Completion done);
  void read(int fd, unsigned buffer_index, std::byte* data, std::size_t length,
            std::uint64_t offset, Completion done);
  // fdatasync(fd) through the ring.
  void fdatasync(int fd, Completion done);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ringckpt
