// uring_queue.cpp — one io_uring and the I/O thread that owns it.
//
// Threads meet only at Impl::mu (the pending queue and the stopping flag).
// Everything else — the ring, the in-flight count, the ops once taken — is
// touched by the I/O thread alone, after the constructor has started it.
#include "io/uring_queue.hpp"

#include <liburing.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "ringckpt/error.hpp"

namespace ringckpt {
namespace {

// One SQE never asks for more than this; the rest goes as a resubmission
// (io_uring lengths are 32-bit). A multiple of every O_DIRECT alignment.
constexpr std::size_t kMaxChunk = std::size_t{1} << 30;

// user_data of the eventfd read; Op pointers are aligned, so never 1.
constexpr std::uint64_t kWakeTag = 1;

enum class OpKind { kWrite, kRead, kFdatasync };

struct Op {
  OpKind kind;
  int fd;
  unsigned buffer_index;
  std::byte* data;          // for writes, never written through
  std::size_t length;
  std::uint64_t offset;
  std::size_t done = 0;     // bytes transferred so far
  UringQueue::Completion completion;
};

// A completion must not throw (uring_queue.hpp): one that does ends the
// process through std::terminate, which names the exception. Dropping it
// would leave the job that queued the operation waiting forever.
void run_completion(const UringQueue::Completion& done, std::int64_t result) noexcept {
  if (done) done(result);
}

}  // namespace

struct UringQueue::Impl {
  Impl(unsigned queue_depth, std::span<const iovec> buffers, bool register_buffers,
       std::string* note);
  ~Impl();
  // Finishes every queued and in-flight op (and those their completions
  // queue), then ends the I/O thread.
  void stop();

  void enqueue(Op* op);
  // Fixed-buffer operations must stay inside their registered buffer.
  void check_buffer(unsigned index, const std::byte* data, std::size_t length) const;
  void run();                       // the I/O thread
  io_uring_sqe* next_sqe();
  void prep(Op* op);
  void arm_wake();
  // Handles one CQE of `op`: true if the op is finished (result in *result),
  // false if its remainder was resubmitted.
  bool advance(Op* op, int res, std::int64_t* result);

  const unsigned depth;
  std::vector<iovec> buffers;
  io_uring ring{};
  int wake_fd = -1;
  bool registered = false;          // const after construction
  std::atomic<std::uint64_t> resubmits{0};

  std::mutex mu;
  std::deque<Op*> pending;          // guarded by mu; owned
  bool stopping = false;            // guarded by mu; only ever becomes true

  // I/O thread only.
  unsigned in_flight = 0;           // ops with an SQE or CQE outstanding (wake read excluded)
  bool wake_armed = false;          // the eventfd read is outstanding
  std::uint64_t wake_value = 0;     // the kernel writes the eventfd count here

  std::thread thread;               // last: started once all above is ready
};

UringQueue::Impl::Impl(unsigned queue_depth, std::span<const iovec> bufs, bool register_buffers,
                       std::string* note)
    : depth(queue_depth), buffers(bufs.begin(), bufs.end()) {
  if (queue_depth == 0)
    throw Error(ErrorCode::kInvalidArgument, "io_uring", "queue depth must be positive");
  wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd < 0) throw Error(ErrorCode::kIo, "io_uring", std::string("eventfd: ") + std::strerror(errno));

  // One SQE per op in flight plus the eventfd read; the CQ is twice that, so
  // it never overflows. SUBMIT_ALL keeps a bad SQE from holding up the rest;
  // kernels without it (< 5.18) refuse the flags, and then none are asked.
  io_uring_params params{};
  params.flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN;
  int r = io_uring_queue_init_params(queue_depth + 1, &ring, &params);
  if (r == -EINVAL) {
    params = io_uring_params{};
    r = io_uring_queue_init_params(queue_depth + 1, &ring, &params);
  }
  if (r < 0) {
    ::close(wake_fd);
    throw Error(ErrorCode::kIo, "io_uring", std::string("io_uring_queue_init: ") + std::strerror(-r));
  }

  if (register_buffers) {
    r = io_uring_register_buffers(&ring, buffers.data(), static_cast<unsigned>(buffers.size()));
    registered = r == 0;
    if (!registered)
      *note = std::string("io_uring buffer registration refused (") + std::strerror(-r) +
              "): using unregistered buffers";
  }

  try {
    thread = std::thread([this] { run(); });
  } catch (...) {
    if (registered) io_uring_unregister_buffers(&ring);
    io_uring_queue_exit(&ring);
    ::close(wake_fd);
    throw;
  }
}

void UringQueue::Impl::stop() {
  {
    std::lock_guard lock(mu);
    stopping = true;
  }
  // This write comes after stopping is set, so an eventfd read armed at any
  // time completes: the I/O thread always sees stopping and never sleeps on
  // a read that no one will satisfy.
  eventfd_write(wake_fd, 1);
  thread.join();
}

UringQueue::Impl::~Impl() {
  if (thread.joinable()) stop();
  if (registered) io_uring_unregister_buffers(&ring);
  io_uring_queue_exit(&ring);
  ::close(wake_fd);
}

void UringQueue::Impl::enqueue(Op* op) {
  {
    std::lock_guard lock(mu);
    pending.push_back(op);
  }
  eventfd_write(wake_fd, 1);
}

void UringQueue::Impl::check_buffer(unsigned index, const std::byte* data,
                                    std::size_t length) const {
  if (!registered) return;
  bool inside = false;
  if (index < buffers.size()) {
    const auto* begin = static_cast<const std::byte*>(buffers[index].iov_base);
    const std::size_t size = buffers[index].iov_len;
    inside = data >= begin && data <= begin + size &&
             length <= static_cast<std::size_t>(begin + size - data);
  }
  if (!inside)
    throw Error(ErrorCode::kInvalidArgument, "io_uring",
                "operation of " + std::to_string(length) + " bytes lies outside buffer " +
                    std::to_string(index));
}

io_uring_sqe* UringQueue::Impl::next_sqe() {
  // The SQ holds depth + 1 entries and at most depth + 1 ops are outstanding,
  // each with at most one unsubmitted SQE, so this loop is a safety net.
  io_uring_sqe* sqe;
  while ((sqe = io_uring_get_sqe(&ring)) == nullptr) io_uring_submit(&ring);
  return sqe;
}

void UringQueue::Impl::arm_wake() {
  io_uring_sqe* sqe = next_sqe();
  io_uring_prep_read(sqe, wake_fd, &wake_value, sizeof wake_value, 0);
  io_uring_sqe_set_data64(sqe, kWakeTag);
  wake_armed = true;
}

void UringQueue::Impl::prep(Op* op) {
  io_uring_sqe* sqe = next_sqe();
  std::byte* p = op->data + op->done;
  const auto n = static_cast<unsigned>(std::min(op->length - op->done, kMaxChunk));
  const std::uint64_t off = op->offset + op->done;
  const int index = static_cast<int>(op->buffer_index);
  switch (op->kind) {
    case OpKind::kWrite:
      if (registered) io_uring_prep_write_fixed(sqe, op->fd, p, n, off, index);
      else io_uring_prep_write(sqe, op->fd, p, n, off);
      break;
    case OpKind::kRead:
      if (registered) io_uring_prep_read_fixed(sqe, op->fd, p, n, off, index);
      else io_uring_prep_read(sqe, op->fd, p, n, off);
      break;
    case OpKind::kFdatasync:
      io_uring_prep_fsync(sqe, op->fd, IORING_FSYNC_DATASYNC);
      break;
  }
  io_uring_sqe_set_data(sqe, op);
}

bool UringQueue::Impl::advance(Op* op, int res, std::int64_t* result) {
  auto resubmit = [&] {
    resubmits.fetch_add(1, std::memory_order_relaxed);
    prep(op);
    return false;
  };
  if (res == -EAGAIN || res == -EINTR) return resubmit();
  if (op->kind == OpKind::kFdatasync) {
    *result = res;
    return true;
  }
  if (res < 0) {
    // An O_DIRECT read that came back short stopped at end of file; its
    // continuation starts at an unaligned offset, which some file systems
    // refuse with EINVAL before they notice the end of file.
    *result = (op->kind == OpKind::kRead && res == -EINVAL && op->done > 0)
                  ? static_cast<std::int64_t>(op->done)
                  : res;
    return true;
  }
  op->done += static_cast<std::size_t>(res);
  if (op->done >= op->length) {
    *result = static_cast<std::int64_t>(op->done);
    return true;
  }
  if (res == 0) {  // no progress: end of file for a read, a stuck write
    *result = op->kind == OpKind::kRead ? static_cast<std::int64_t>(op->done) : -EIO;
    return true;
  }
  return resubmit();
}

void UringQueue::Impl::run() {
  arm_wake();
  std::vector<Op*> taken;
  std::vector<std::pair<Op*, std::int64_t>> finished;
  for (;;) {
    // Take what fits of the pending queue; each op gets its SQE now.
    bool stop;
    {
      std::lock_guard lock(mu);
      while (in_flight + taken.size() < depth && !pending.empty()) {
        taken.push_back(pending.front());
        pending.pop_front();
      }
      stop = stopping && pending.empty();
    }
    for (Op* op : taken) prep(op);
    in_flight += static_cast<unsigned>(taken.size());
    taken.clear();
    // Exit only once nothing is queued, in flight, or reading the eventfd
    // (the destructor's eventfd write guarantees that read completes).
    if (stop && in_flight == 0 && !wake_armed) break;

    int r = io_uring_submit_and_wait(&ring, 1);
    if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
      std::fprintf(stderr, "ringckpt: io_uring_submit_and_wait: %s\n", std::strerror(-r));
      std::abort();  // the ring itself is broken: no operation can complete
    }

    unsigned head;
    unsigned seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring, head, cqe) {
      ++seen;
      if (cqe->user_data == kWakeTag) {
        wake_armed = false;
        continue;
      }
      Op* op = static_cast<Op*>(io_uring_cqe_get_data(cqe));
      std::int64_t result;
      if (advance(op, cqe->res, &result)) finished.emplace_back(op, result);
    }
    io_uring_cq_advance(&ring, seen);

    if (!wake_armed) {
      std::lock_guard lock(mu);
      if (!stopping) arm_wake();
    }

    // Completions run here, outside every lock; they may queue more ops.
    for (auto& [op, result] : finished) {
      --in_flight;
      Completion done = std::move(op->completion);
      delete op;
      run_completion(done, result);
    }
    finished.clear();
  }
}

UringQueue::UringQueue(unsigned queue_depth, std::span<const iovec> buffers,
                       bool register_buffers, Note note) {
  std::string fallback;
  impl_ = std::make_unique<Impl>(queue_depth, buffers, register_buffers, &fallback);
  if (!fallback.empty()) {
    if (note) note(fallback);
    else std::fprintf(stderr, "ringckpt: %s\n", fallback.c_str());
  }
}

UringQueue::~UringQueue() {
  // Stop while *this is whole: completions that run meanwhile may still queue.
  if (impl_) impl_->stop();
}

bool UringQueue::registered_buffers() const noexcept { return impl_->registered; }

std::uint64_t UringQueue::resubmissions() const noexcept {
  return impl_->resubmits.load(std::memory_order_relaxed);
}

namespace {

Op* make_op(OpKind kind, int fd, unsigned buffer_index, std::byte* data, std::size_t length,
            std::uint64_t offset, UringQueue::Completion done) {
  return new Op{kind, fd, buffer_index, data, length, offset, 0, std::move(done)};
}

}  // namespace

void UringQueue::write(int fd, unsigned buffer_index, const std::byte* data, std::size_t length,
                       std::uint64_t offset, Completion done) {
  impl_->check_buffer(buffer_index, data, length);
  impl_->enqueue(make_op(OpKind::kWrite, fd, buffer_index, const_cast<std::byte*>(data), length,
                         offset, std::move(done)));
}

void UringQueue::read(int fd, unsigned buffer_index, std::byte* data, std::size_t length,
                      std::uint64_t offset, Completion done) {
  impl_->check_buffer(buffer_index, data, length);
  impl_->enqueue(make_op(OpKind::kRead, fd, buffer_index, data, length, offset, std::move(done)));
}

void UringQueue::fdatasync(int fd, Completion done) {
  impl_->enqueue(make_op(OpKind::kFdatasync, fd, 0, nullptr, 0, 0, std::move(done)));
}

}  // namespace ringckpt
