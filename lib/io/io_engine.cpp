#include "io/io_engine.hpp"

#include <algorithm>
#include <cstdio>
#include <vector>

#include "ringckpt/error.hpp"

namespace ringckpt::detail {

static void check_options(const IoOptions& o) {
  auto bad = [](std::string msg) { throw Error(ErrorCode::kInvalidArgument, "IoOptions", msg); };
  if (o.extent_size == 0 || o.extent_size % kAlignment != 0) {
    bad("extent_size " + std::to_string(o.extent_size) + " is not a positive multiple of 4096");
  }
  if (o.extent_size > kMaxExtentSize) {
    bad("extent_size " + std::to_string(o.extent_size) + " exceeds the 1 GiB limit");
  }
  if (o.ring_bytes < o.extent_size) {
    bad("ring_bytes " + std::to_string(o.ring_bytes) + " is smaller than one extent (" +
        std::to_string(o.extent_size) + ")");
  }
  if (o.queue_depth == 0) bad("queue_depth must be at least 1");
  if (o.staging_threads == 0) bad("staging_threads must be at least 1");
}

IoEngine::IoEngine(IoOptions options) : options_(std::move(options)) {
  check_options(options_);
  const std::size_t slots = options_.ring_bytes / options_.extent_size;
  ring_ = std::make_unique<StagingRing>(options_.extent_size, slots);
  const std::vector<iovec> buffers = ring_->iovecs();
  uring_ = std::make_unique<UringQueue>(
      std::min<unsigned>(options_.queue_depth, static_cast<unsigned>(slots)), buffers,
      options_.register_buffers, [this](std::string_view m) { note(m); });
  pool_ = std::make_unique<boost::asio::thread_pool>(options_.staging_threads);
}

IoEngine::~IoEngine() {
  pool_->join();
  uring_.reset();  // drains in-flight operations before the ring memory goes
  ring_.reset();
}

void IoEngine::note(std::string_view message) {
  {
    std::lock_guard lock(mu_);
    if (said_.contains(message)) return;
    said_.emplace(message);
    notes_.emplace_back(message);
  }
  if (options_.report) {
    options_.report(message);
  } else {
    std::fprintf(stderr, "ringckpt: %.*s\n", static_cast<int>(message.size()), message.data());
  }
}

void IoEngine::record_direct_io(bool granted, std::string_view where) {
  {
    std::lock_guard lock(mu_);
    any_file_ = true;
    if (granted) return;
    all_direct_ = false;
  }
  if (options_.direct_io) {
    std::string dir = std::string(where);
    note("O_DIRECT refused by the file system of " + dir + ": using buffered I/O (slower)");
  }
}

IoReport IoEngine::report() const {
  std::lock_guard lock(mu_);
  IoReport r;
  r.direct_io = any_file_ && all_direct_;
  r.registered_buffers = uring_->registered_buffers();
  r.notes = notes_;
  return r;
}

}  // namespace ringckpt::detail
