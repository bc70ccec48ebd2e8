// tools/bench_baselines.cpp — the device, naive-write and memcpy baselines.
#include "bench_baselines.hpp"

#include <sys/uio.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <span>
#include <string>
#include <variant>

#include "format/file_extents.hpp"
#include "io/data_file.hpp"
#include "io/io_engine.hpp"
#include "ringckpt/error.hpp"
#include "ringckpt/io_options.hpp"
#include "stopwatch.hpp"

namespace ringckpt::tools::bench {
namespace {

namespace fs = std::filesystem;
using detail::round_up;

// Counts operations of one batch; the first failure wins.
class Batch {
 public:
  explicit Batch(std::size_t count) : left_(count) {}
  UringQueue::Completion done(std::size_t expect_at_least) {
    return [this, expect_at_least](std::int64_t r) {
      std::lock_guard lock(mu_);
      if (r < 0 && error_ == 0) error_ = static_cast<int>(-r);
      if (r >= 0 && static_cast<std::uint64_t>(r) < expect_at_least && error_ == 0) short_ = true;
      if (--left_ == 0) cv_.notify_all();
    };
  }
  // Throws on an error.
  void wait(const fs::path& path, const char* what) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return left_ == 0; });
    if (error_ != 0) {
      throw Error(ErrorCode::kIo, path.string(), std::string(what) + ": " + std::strerror(error_));
    }
    if (short_) throw Error(ErrorCode::kIo, path.string(), std::string(what) + ": short transfer");
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::size_t left_;      // guarded by mu_
  int error_ = 0;         // guarded by mu_
  bool short_ = false;    // guarded by mu_
};

template <typename F>
void for_each_piece(const StateDict& sd, F&& f) {
  for (const auto& e : sd) {
    if (const auto* t = std::get_if<TensorView>(&e.value)) {
      f(static_cast<const std::byte*>(t->data), t->nbytes());
    } else if (const auto* s = std::get_if<ShardedTensor>(&e.value)) {
      for (const auto& sh : s->shards) f(static_cast<const std::byte*>(sh.local.data), sh.local.nbytes());
    } else if (const auto* b = std::get_if<Bytes>(&e.value)) {
      f(b->data(), b->size());
    }
  }
}

// The directory a baseline's file lies in, opened to create or read the file
// by name, as the library opens a checkpoint's files (CheckpointDirectory).
CheckpointDirectory open_parent(const fs::path& path) {
  return CheckpointDirectory::open(path.parent_path());
}

}  // namespace

RawDevice::RawDevice(std::uint64_t extent, unsigned depth, std::uint64_t max_bytes, IoNotes& notes)
    : extent_(extent),
      slots_(std::max<std::uint64_t>(1, std::min<std::uint64_t>(depth, (max_bytes + extent - 1) / extent))),
      buffer_(slots_ * extent_, "device") {
  auto* words = reinterpret_cast<std::uint64_t*>(buffer_.data());
  std::uint64_t x = 0x9e3779b97f4a7c15ull;
  for (std::size_t i = 0; i < buffer_.size() / 8; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    words[i] = x;
  }
  iovec iov{buffer_.data(), buffer_.size()};
  queue_ = std::make_unique<UringQueue>(depth, std::span<const iovec>(&iov, 1), true,
                                        notes.sink("device"));
}

double RawDevice::write(const fs::path& path, std::uint64_t bytes) {
  DataFile file = open_parent(path).create_file(path.filename().string(), /*want_direct=*/true);
  direct_ = file.direct();
  const std::uint64_t padded = round_up(bytes, kAlignment);
  const std::size_t ops = static_cast<std::size_t>((padded + extent_ - 1) / extent_);
  const auto t0 = Clock::now();
  // Blocks reserved first, as ringckpt does: direct writes inside the file
  // size stay asynchronous, so the baseline is the device's best.
  if (direct_) file.allocate(padded);
  Batch batch(ops);
  for (std::size_t i = 0; i < ops; ++i) {
    const std::uint64_t off = i * extent_;
    const std::size_t len = static_cast<std::size_t>(std::min(extent_, padded - off));
    queue_->write(file.fd(), 0, buffer_.data() + (i % slots_) * extent_, len, off, batch.done(len));
  }
  batch.wait(path, "write");
  if (padded != bytes) file.truncate(bytes);
  file.sync_data();
  return seconds_since(t0);
}

double RawDevice::read(const std::vector<fs::path>& paths) {
  std::vector<DataFile> files;
  std::vector<std::uint64_t> sizes;
  for (const auto& p : paths) {
    files.push_back(open_parent(p).open_read(p.filename().string(), /*want_direct=*/true));
    direct_ = files.back().direct();
    sizes.push_back(files.back().size());
  }
  const auto t0 = Clock::now();
  std::size_t ops = 0;
  for (auto s : sizes) ops += static_cast<std::size_t>((s + extent_ - 1) / extent_);
  Batch batch(ops);
  std::size_t k = 0;
  for (std::size_t f = 0; f < paths.size(); ++f) {
    for (std::uint64_t off = 0; off < sizes[f]; off += extent_, ++k) {
      const std::uint64_t want = std::min(extent_, sizes[f] - off);
      queue_->read(files[f].fd(), 0, buffer_.data() + (k % slots_) * extent_,
                   static_cast<std::size_t>(round_up(want, kAlignment)), off,
                   batch.done(static_cast<std::size_t>(want)));
    }
  }
  batch.wait(paths.empty() ? fs::path() : paths.front(), "read");
  return seconds_since(t0);
}

double naive_write(const fs::path& path, const StateDict& sd, std::uint64_t header_bytes) {
  const auto t0 = Clock::now();
  DataFile file = open_parent(path).create_file(path.filename().string(), /*want_direct=*/false);
  if (header_bytes > 0) {
    const std::vector<std::byte> header(header_bytes, std::byte{' '});
    file.write_all(header);
  }
  for_each_piece(sd, [&](const std::byte* p, std::size_t n) { file.write_all({p, n}); });
  file.sync();
  return seconds_since(t0);
}

double memcpy_copy(const StateDict& src, const StateDict& dst) {
  const auto t0 = Clock::now();
  auto d = dst.begin();
  for (auto s = src.begin(); s != src.end(); ++s, ++d) {
    if (const auto* t = std::get_if<TensorView>(&s->value)) {
      std::memcpy(std::get<TensorView>(d->value).data, t->data, t->nbytes());
    } else if (const auto* st = std::get_if<ShardedTensor>(&s->value)) {
      const auto& dt = std::get<ShardedTensor>(d->value);
      for (std::size_t i = 0; i < st->shards.size(); ++i) {
        std::memcpy(dt.shards[i].local.data, st->shards[i].local.data, st->shards[i].local.nbytes());
      }
    }
  }
  return seconds_since(t0);
}

}  // namespace ringckpt::tools::bench
