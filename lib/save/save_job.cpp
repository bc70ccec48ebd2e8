#include "save/save_job.hpp"

#include <boost/asio/post.hpp>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <system_error>
#include <utility>

#include "io/data_file.hpp"
#include "format/extent_checksum.hpp"
#include "format/file_extents.hpp"
#include "io/io_engine.hpp"
#include "io/kill_points.hpp"
#include "io/slot_engine.hpp"
#include "ringckpt/error.hpp"

namespace ringckpt::detail {
namespace {

class SaveJobImpl final : public SaveJob, public std::enable_shared_from_this<SaveJobImpl> {
 public:
  SaveJobImpl(IoEngine& engine, std::shared_ptr<const CheckpointDirectory> dir,
              const SavePlan& plan, SavePlanner& planner, SaveLayout layout, Callbacks callbacks)
      : engine_(engine),
        dir_path_(dir->path()),
        dir_(std::move(dir)),
        plan_(plan),
        planner_(planner),
        layout_(std::move(layout)),
        callbacks_(std::move(callbacks)),
        resolved_(plan.items.size()),
        is_resolved_(std::make_unique<std::atomic<bool>[]>(plan.items.size())),
        slots_(engine.ring(), engine.staging_pool().get_executor(),
               {.start = [this](std::size_t e, unsigned slot) { fill(e, slot); },
                .stopping = [this] { drop_held_back(); },
                .done = [this](std::exception_ptr error) { on_extents_done(error); }}) {}

  void begin();
  void cancel() override;

 private:
  void fill(std::size_t e, unsigned slot);
  void fill_extent(const Extent& x, std::byte* dst);
  void submit_in_order(std::size_t e, unsigned slot, std::size_t write_length);
  void on_written(std::size_t e, unsigned slot, std::size_t length, std::int64_t result);
  void drop_held_back();
  void on_extents_done(std::exception_ptr error);
  void finalize();
  void on_synced(std::int64_t result, std::size_t file);
  void deliver();
  void cleanup_and_fail();
  const ItemData& resolved(std::size_t item);
  void fire_staged(std::exception_ptr error);
  std::shared_ptr<SaveJobImpl> self() { return shared_from_this(); }

  IoEngine& engine_;
  const std::filesystem::path dir_path_;  // for messages
  // Where every file is created; released as the job ends (deliver,
  // cleanup_and_fail: once, after begin), so that a finished job holds no
  // descriptor of the directory however long it is kept.
  std::shared_ptr<const CheckpointDirectory> dir_;
  const SavePlan& plan_;
  SavePlanner& planner_;
  const SaveLayout layout_;
  Callbacks callbacks_;

  std::vector<DataFile> files_;
  std::vector<Extent> extents_;
  std::vector<std::vector<std::uint64_t>> checksums_;  // [file][extent]; each slot written once
  // resolved_[item] is written once, under resolve_mu_, before
  // is_resolved_[item] is set (release); read after it is seen set (acquire).
  // Not std::call_once: libstdc++'s leaves waiters hung when the first
  // caller throws (GCC bug 66146), and resolve_data may throw.
  std::vector<ItemData> resolved_;
  std::unique_ptr<std::atomic<bool>[]> is_resolved_;
  std::mutex resolve_mu_;

  struct Filled {
    unsigned slot;
    std::size_t length;  // bytes to write (the tail padded for O_DIRECT)
  };

  // Hands slots to extents, holds the job's error (also through fdatasync).
  SlotEngine slots_;

  std::mutex mu_;                        // taken before slots_'s own lock, never after
  std::map<std::size_t, Filled> ready_;  // guarded by mu_; filled, waiting for earlier ones
  std::size_t next_submit_ = 0;          // guarded by mu_; the next extent to hand to the ring
  std::size_t filled_ = 0;               // guarded by mu_
  std::size_t synced_ = 0;               // guarded by mu_
  bool staged_fired_ = false;            // guarded by mu_
};

void SaveJobImpl::begin() {
  try {
    files_.reserve(layout_.files.size());
    checksums_.resize(layout_.files.size());
    const std::uint64_t e = engine_.options().extent_size;
    for (std::size_t f = 0; f < layout_.files.size(); ++f) {
      const FileLayout& file = layout_.files[f];
      files_.push_back(dir_->create_file(file.relative_path, engine_.options().direct_io));
      engine_.record_direct_io(files_.back().direct(), dir_->path().string());
      if (files_.back().direct()) {
        // Direct writes inside the file's size run asynchronously; writes that
        // extend it serialize on the inode (ext4, xfs) and go to kernel workers.
        files_.back().allocate(round_up(file.size, kAlignment));
      }
      const std::uint64_t count = extent_count(file.size, e);
      checksums_[f].resize(count);
      for (std::uint64_t k = 0; k < count; ++k) extents_.push_back(extent_of(f, k, file.size, e));
    }
    kill_point("data-created");  // tests only (kill_points.hpp)
  } catch (...) {
    slots_.fail(std::current_exception());
  }
  slots_.start(extents_.size(), self());
}

void SaveJobImpl::cancel() { slots_.fail(save_cancelled(dir_path_)); }

// The engine is stopping: slots filled but held back for plan order go back.
void SaveJobImpl::drop_held_back() {
  std::map<std::size_t, Filled> dropped;
  {
    std::lock_guard lock(mu_);
    dropped.swap(ready_);
  }
  for (const auto& [e, f] : dropped) slots_.end_extent(e, f.slot);
}

const ItemData& SaveJobImpl::resolved(std::size_t item) {
  if (is_resolved_[item].load(std::memory_order_acquire)) return resolved_[item];
  std::lock_guard lock(resolve_mu_);
  if (!is_resolved_[item].load(std::memory_order_relaxed)) {
    const WriteItem& w = plan_.items[item];
    ItemData data = planner_.resolve_data(w);  // a throw leaves the item unresolved
    if (data.size() != w.nbytes()) {
      throw Error(ErrorCode::kInvalidArgument, w.index.fqn,
                  "the planner resolved " + std::to_string(data.size()) +
                      " bytes for an item planned as " + std::to_string(w.nbytes()));
    }
    resolved_[item] = std::move(data);
    is_resolved_[item].store(true, std::memory_order_release);
  }
  return resolved_[item];
}

// Copies the bytes of x (header, then items) into dst in cache-sized pieces,
// hashing each piece right after it lands, while it is still in cache.
void SaveJobImpl::fill_extent(const Extent& x, std::byte* dst) {
  const FileLayout& file = layout_.files[x.file];
  ExtentChecksum sum;
  std::uint64_t pos = x.lo;
  if (pos < file.header.size()) {
    const std::uint64_t n = std::min<std::uint64_t>(x.hi, file.header.size()) - pos;
    std::memcpy(dst, file.header.data() + pos, n);
    sum.update({dst, n});
    pos += n;
  }
  // The first placement that ends after pos (placements are back to back).
  auto it = std::upper_bound(file.items.begin(), file.items.end(), pos,
                             [](std::uint64_t p, const ItemPlacement& item) {
                               return p < item.offset + item.length;
                             });
  for (; pos < x.hi && it != file.items.end(); ++it) {
    if (it->length == 0) continue;
    const ItemData& data = resolved(it->item);
    const std::uint64_t end = std::min(x.hi, it->offset + it->length);
    while (pos < end) {
      const std::uint64_t n = std::min<std::uint64_t>(end - pos, kStagingPiece);
      std::span<std::byte> piece{dst + (pos - x.lo), n};
      data.copy_to(pos - it->offset, piece);
      sum.update(piece);
      pos += n;
    }
  }
  if (pos != x.hi) {
    throw Error(ErrorCode::kInvalidArgument, file.relative_path,
                "layout leaves bytes " + std::to_string(pos) + ".." + std::to_string(x.hi) +
                    " unassigned");
  }
  checksums_[x.file][x.index] = sum.digest();
}

// On a staging thread, as the engine's start hook: an exception ends the
// extent with that error.
void SaveJobImpl::fill(std::size_t e, unsigned slot) {
  const Extent& x = extents_[e];
  std::byte* dst = engine_.ring().slot_data(slot);
  const std::size_t length = x.hi - x.lo;
  std::size_t write_length = length;
  fill_extent(x, dst);
  // tests only (kill_points.hpp): the first extent copied kills, before this
  // or any other extent's write is submitted (each fill passes here first).
  kill_point("staging");
  if (files_[x.file].direct()) {
    // O_DIRECT writes whole 4 KiB blocks: pad the tail, truncate later.
    write_length = round_up(length, kAlignment);
    std::memset(dst + length, 0, write_length - length);
  }
  bool filled_all;
  {
    std::lock_guard lock(mu_);
    filled_all = ++filled_ == extents_.size();
  }
  if (filled_all) fire_staged(nullptr);
  submit_in_order(e, slot, write_length);
}

// Writes go to the ring in plan order: a slot filled ahead of an earlier one
// waits in ready_ until every earlier extent has been submitted.
void SaveJobImpl::submit_in_order(std::size_t e, unsigned slot, std::size_t write_length) {
  std::vector<std::pair<std::size_t, Filled>> batch;
  bool dropped = false;
  {
    std::lock_guard lock(mu_);
    // Checked under mu_: drop_held_back() empties ready_ after stopping is set.
    if (slots_.stopping()) {
      dropped = true;
    } else {
      ready_.emplace(e, Filled{slot, write_length});
      while (!ready_.empty() && ready_.begin()->first == next_submit_) {
        batch.emplace_back(*ready_.begin());
        ready_.erase(ready_.begin());
        ++next_submit_;
      }
    }
  }
  if (dropped) {
    slots_.end_extent(e, slot);
    return;
  }
  for (const auto& [k, f] : batch) {
    const Extent& x = extents_[k];
    slots_.run(k, f.slot, [&] {
      engine_.uring().write(files_[x.file].fd(), f.slot, engine_.ring().slot_data(f.slot),
                            f.length, x.lo,
                            slots_.io_completion(k, f.slot, [this, k, f](std::int64_t result) {
                              on_written(k, f.slot, f.length, result);
                            }));
    });
  }
}

// On the I/O thread, wrapped by the engine: a throw ends the extent with it.
void SaveJobImpl::on_written(std::size_t e, unsigned slot, std::size_t length,
                             std::int64_t result) {
  if (result != static_cast<std::int64_t>(length)) {
    const Extent& x = extents_[e];
    std::string why = result < 0 ? std::system_category().message(static_cast<int>(-result))
                                 : "short write of " + std::to_string(result) + " bytes";
    throw Error(ErrorCode::kIo, files_[x.file].path().string(),
                "writing extent " + std::to_string(x.index) + " at offset " +
                    std::to_string(x.lo) + " failed: " + why);
  }
  kill_point("data-written");  // tests only: the first extent written kills
  slots_.end_extent(e, slot);
}

void SaveJobImpl::fire_staged(std::exception_ptr error) {
  {
    std::lock_guard lock(mu_);
    if (staged_fired_) return;
    staged_fired_ = true;
  }
  if (callbacks_.staged) callbacks_.staged(error);
}

// On a staging thread, once every extent has ended.
void SaveJobImpl::on_extents_done(std::exception_ptr error) {
  if (error) {
    cleanup_and_fail();
  } else {
    finalize();
  }
}

// Every extent is written: cut the padded tails, then fdatasync every file.
void SaveJobImpl::finalize() {
  fire_staged(nullptr);  // a job with no extents stages nothing
  try {
    for (std::size_t f = 0; f < files_.size(); ++f) {
      if (files_[f].direct() && layout_.files[f].size % kAlignment != 0) {
        files_[f].truncate(layout_.files[f].size);
      }
    }
    if (files_.empty()) {
      deliver();
      return;
    }
    for (std::size_t f = 0; f < files_.size(); ++f) {
      engine_.uring().fdatasync(
          files_[f].fd(),
          slots_.io_completion([this, f](std::int64_t result) { on_synced(result, f); },
                               [this] {
                                 bool last;
                                 {
                                   std::lock_guard lock(mu_);
                                   last = ++synced_ == files_.size();
                                 }
                                 if (last) {
                                   boost::asio::post(engine_.staging_pool(),
                                                     [self = self()] { self->deliver(); });
                                 }
                               }));
    }
  } catch (...) {
    // Not every file got its fdatasync, so synced_ never reaches the count
    // and deliver() never runs: the failure path is taken here, once.
    slots_.fail(std::current_exception());
    cleanup_and_fail();
  }
}

// On the I/O thread, wrapped by the engine: a throw fails the job.
void SaveJobImpl::on_synced(std::int64_t result, std::size_t file) {
  if (result < 0) {
    throw Error(ErrorCode::kIo, files_[file].path().string(),
                "fdatasync failed: " + std::system_category().message(static_cast<int>(-result)));
  }
}

void SaveJobImpl::deliver() {
  WriteResults results;
  try {
    if (std::exception_ptr error = slots_.error()) std::rethrow_exception(error);
    kill_point("data-synced");  // tests only (kill_points.hpp)
    for (auto& f : files_) f.close();
    for (std::size_t f = 0; f < layout_.files.size(); ++f) {
      const FileLayout& file = layout_.files[f];
      for (const ItemPlacement& p : file.items) {
        const WriteItem& item = plan_.items[p.item];
        results.items.push_back({item.index, p.length, {file.relative_path, p.offset, p.length}});
      }
      results.files.push_back(
          {file.relative_path, file.size, engine_.options().extent_size, checksums_[f]});
    }
  } catch (...) {
    slots_.fail(std::current_exception());
    cleanup_and_fail();
    return;
  }
  dir_.reset();
  // The callback holds the save task, which holds this job: drop it once called.
  std::exchange(callbacks_.written, nullptr)(nullptr, std::move(results));
}

void SaveJobImpl::cleanup_and_fail() {
  const std::exception_ptr error = slots_.error();
  for (std::size_t f = 0; f < files_.size(); ++f) {
    try {
      files_[f].close();
    } catch (...) {
    }
    dir_->remove(layout_.files[f].relative_path);
  }
  dir_.reset();
  fire_staged(error);
  std::exchange(callbacks_.written, nullptr)(error, {});
}

}  // namespace

std::exception_ptr save_cancelled(const std::filesystem::path& dir) {
  return std::make_exception_ptr(
      Error(ErrorCode::kCancelled, dir.string(), "save cancelled before it committed"));
}

std::shared_ptr<SaveJob> SaveJob::start(IoEngine& engine,
                                        std::shared_ptr<const CheckpointDirectory> dir,
                                        const SavePlan& plan, SavePlanner& planner,
                                        SaveLayout layout, Callbacks callbacks) {
  auto job = std::make_shared<SaveJobImpl>(engine, std::move(dir), plan, planner,
                                           std::move(layout), std::move(callbacks));
  job->begin();
  return job;
}

}  // namespace ringckpt::detail
