// lib/io/io_engine.hpp — the long-lived resources every save and load borrows:
// the staging ring, the io_uring and its I/O thread, the staging threads.
//
// Jobs hold a plain reference: whoever owns the engine (a Checkpointer, a
// FileSystemWriter or Reader) outlives every job it starts.
#pragma once

#include <boost/asio/thread_pool.hpp>

#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>

#include "ringckpt/io_options.hpp"
#include "io/staging_ring.hpp"
#include "io/uring_queue.hpp"

namespace ringckpt::detail {

class IoEngine {
 public:
  // Allocates and pre-faults the ring, sets up io_uring (registering the
  // ring's buffers), starts the staging threads. Error(kInvalidArgument) for
  // options that cannot work (extent size not a multiple of kAlignment, a
  // ring smaller than one extent).
  explicit IoEngine(IoOptions options);
  ~IoEngine();

  const IoOptions& options() const noexcept { return options_; }
  StagingRing& ring() noexcept { return *ring_; }
  UringQueue& uring() noexcept { return *uring_; }
  boost::asio::thread_pool& staging_pool() noexcept { return *pool_; }

  // Says `message` through options().report (or stderr) the first time only.
  void note(std::string_view message);
  // Records whether a data file got O_DIRECT; the first refusal is noted.
  void record_direct_io(bool granted, std::string_view where);
  IoReport report() const;

 private:
  IoOptions options_;
  std::unique_ptr<StagingRing> ring_;
  std::unique_ptr<UringQueue> uring_;
  std::unique_ptr<boost::asio::thread_pool> pool_;
  mutable std::mutex mu_;
  std::set<std::string, std::less<>> said_;  // guarded by mu_
  std::vector<std::string> notes_;           // guarded by mu_
  bool any_file_ = false;                    // guarded by mu_
  bool all_direct_ = true;                   // guarded by mu_
};

}  // namespace ringckpt::detail
