#include "load/extent_reader.hpp"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <system_error>

#include "io/data_file.hpp"
#include "format/extent_checksum.hpp"
#include "format/file_extents.hpp"
#include "io/io_engine.hpp"
#include "io/slot_engine.hpp"
#include "ringckpt/error.hpp"

namespace ringckpt::detail {
namespace {

std::string range_text(std::uint64_t lo, std::uint64_t hi) {
  return "bytes " + std::to_string(lo) + ".." + std::to_string(hi);
}

class ReadJob : public std::enable_shared_from_this<ReadJob> {
 public:
  ReadJob(IoEngine& engine, const CheckpointDirectory& dir, std::vector<FileReadTask>& tasks,
          std::vector<ExtentFault>* faults, const Progress& progress)
      : engine_(engine),
        dir_(dir),
        tasks_(tasks),
        faults_(faults),
        progress_(progress),
        slots_(engine.ring(), engine.staging_pool().get_executor(),
               {.start = [this](std::size_t e, unsigned slot) { read(e, slot); },
                .stopping = {},
                .done = [this](std::exception_ptr error) { on_done(error); }}) {}

  void run();

 private:
  void open_files();
  void read(std::size_t e, unsigned slot);
  void verify(std::size_t e, unsigned slot, std::int64_t result);
  void scatter(const Extent& x, const std::byte* data);
  void fault(ErrorCode code, std::string file, std::int64_t extent, std::uint64_t lo,
             std::uint64_t hi, std::string message);
  void on_done(std::exception_ptr error);
  std::string path_of(std::size_t task) const {
    return dir_.path_of(tasks_[task].info.relative_path).string();
  }

  IoEngine& engine_;
  const CheckpointDirectory& dir_;  // every file is opened by name relative to it
  std::vector<FileReadTask>& tasks_;
  std::vector<ExtentFault>* faults_;
  const Progress& progress_;

  std::vector<DataFile> files_;                                  // [task]; fd -1 if unusable
  std::vector<std::vector<std::vector<std::uint32_t>>> by_extent_;  // [task][extent] -> runs
  std::vector<Extent> extents_;  // file: the task's position in tasks_

  SlotEngine slots_;  // hands slots to extents_, holds the first error

  std::mutex mu_;
  std::condition_variable finished_cv_;
  bool finished_ = false;          // guarded by mu_
  std::exception_ptr error_;       // guarded by mu_; set with finished_
  std::uint64_t bytes_done_ = 0;   // guarded by mu_
  std::uint64_t bytes_total_ = 0;  // written by open_files() before the engine starts
};

void ReadJob::fault(ErrorCode code, std::string file, std::int64_t extent, std::uint64_t lo,
                    std::uint64_t hi, std::string message) {
  if (faults_) {
    std::lock_guard lock(mu_);
    faults_->push_back({std::move(file), extent, lo, hi - lo, std::move(message)});
    return;
  }
  slots_.fail(std::make_exception_ptr(Error(code, std::move(file), std::move(message))));
}

void ReadJob::open_files() {
  const std::uint64_t slot_bytes = engine_.ring().slot_bytes();
  files_.resize(tasks_.size());
  by_extent_.resize(tasks_.size());
  for (std::size_t t = 0; t < tasks_.size(); ++t) {
    FileReadTask& task = tasks_[t];
    const FileInfo& info = task.info;
    const std::string path = path_of(t);
    if (info.extent_size == 0 || info.extent_size > slot_bytes) {
      throw Error(ErrorCode::kInvalidArgument, path,
                  "extent size " + std::to_string(info.extent_size) +
                      " does not fit a ring slot of " + std::to_string(slot_bytes) +
                      " bytes: raise IoOptions::extent_size");
    }
    try {
      files_[t] = dir_.open_read(info.relative_path, engine_.options().direct_io);
      engine_.record_direct_io(files_[t].direct(), dir_.path().string());
    } catch (const Error& e) {
      fault(e.code(), path, -1, 0, info.size,
            e.code() == ErrorCode::kNotFound ? "missing data file" : e.message());
      continue;
    }
    const std::uint64_t size = files_[t].size();
    if (size != info.size) {
      fault(ErrorCode::kCorrupt, path, -1, 0, info.size,
            size < info.size ? "truncated: the file holds " + std::to_string(size) +
                                   " bytes, metadata.json records " + std::to_string(info.size)
                             : "the file holds " + std::to_string(size) +
                                   " bytes, more than the " + std::to_string(info.size) +
                                   " metadata.json records");
      files_[t] = DataFile();
      continue;
    }
    const std::uint64_t e = info.extent_size;
    const std::uint64_t count = extent_count(size, e);
    auto& runs_of = by_extent_[t];
    runs_of.resize(count);
    std::vector<bool> needed(count, task.all_extents);
    for (std::uint64_t k = 0; k * e < std::min(task.header_bytes, size); ++k) needed[k] = true;
    for (std::size_t r = 0; r < task.runs.size(); ++r) {
      const ReadRun& run = task.runs[r];
      if (run.length == 0) continue;
      if (run.file_offset + run.length > size) {
        throw Error(ErrorCode::kCorrupt, path,
                    "a stored item reaches past the end of the file (" +
                        range_text(run.file_offset, run.file_offset + run.length) + ")");
      }
      for (std::uint64_t k = run.file_offset / e; k * e < run.file_offset + run.length; ++k) {
        runs_of[k].push_back(static_cast<std::uint32_t>(r));
        needed[k] = true;
      }
    }
    for (std::uint64_t k = 0; k < count; ++k) {
      if (!needed[k]) continue;
      extents_.push_back(extent_of(t, k, size, e));
      bytes_total_ += extents_.back().hi - extents_.back().lo;
    }
  }
}

void ReadJob::run() {
  open_files();
  slots_.start(extents_.size(), shared_from_this());
  std::unique_lock lock(mu_);
  finished_cv_.wait(lock, [&] { return finished_; });
  if (error_) std::rethrow_exception(error_);
}

// On a staging thread, as the engine's start hook.
void ReadJob::read(std::size_t e, unsigned slot) {
  const Extent& x = extents_[e];
  const DataFile& file = files_[x.file];
  std::size_t length = x.hi - x.lo;
  if (file.direct()) length = round_up(length, kAlignment);
  engine_.uring().read(file.fd(), slot, engine_.ring().slot_data(slot), length, x.lo,
                       slots_.io_completion(e, slot, [this, e, slot](std::int64_t result) {
                         slots_.post(e, slot, [this, e, slot, result] { verify(e, slot, result); });
                       }));
}

// On a staging thread, once every extent has ended: no read uses files_ any
// more. They are closed here, before run() returns, not when the last
// reference to the job goes (a staging thread's, later): a load or verify
// leaves no descriptor open behind it.
void ReadJob::on_done(std::exception_ptr error) {
  files_.clear();
  std::lock_guard lock(mu_);
  error_ = std::move(error);
  finished_ = true;
  finished_cv_.notify_all();
}

void ReadJob::verify(std::size_t e, unsigned slot, std::int64_t result) {
  const Extent& x = extents_[e];
  const FileReadTask& task = tasks_[x.file];
  const std::uint64_t length = x.hi - x.lo;
  const std::byte* data = engine_.ring().slot_data(slot);
  std::string where = "extent " + std::to_string(x.index) + " (" + range_text(x.lo, x.hi) +
                      (x.lo < task.header_bytes ? ", safetensors header" : "") + ")";
  if (result < 0) {
    fault(ErrorCode::kIo, path_of(x.file), static_cast<std::int64_t>(x.index), x.lo, x.hi,
          where + ": read failed: " + std::system_category().message(static_cast<int>(-result)));
  } else if (static_cast<std::uint64_t>(result) < length) {
    fault(ErrorCode::kCorrupt, path_of(x.file), static_cast<std::int64_t>(x.index), x.lo, x.hi,
          where + ": only " + std::to_string(result) + " of " + std::to_string(length) +
              " bytes could be read");
  } else {
    const std::uint64_t stored = task.info.extent_checksums[x.index];
    const std::uint64_t actual = checksum_of({data, length});
    if (actual != stored) {
      fault(ErrorCode::kCorrupt, path_of(x.file), static_cast<std::int64_t>(x.index), x.lo, x.hi,
            where + ": checksum mismatch (metadata.json records " + checksum_hex(stored) +
                ", the data hashes to " + checksum_hex(actual) + ")");
    } else {
      scatter(x, data);
    }
  }
  {
    std::lock_guard lock(mu_);
    bytes_done_ += length;
    if (progress_) progress_(bytes_done_, bytes_total_);
  }
  slots_.end_extent(e, slot);
}

// Copies the verified extent x to every run that overlaps it.
void ReadJob::scatter(const Extent& x, const std::byte* data) {
  const FileReadTask& task = tasks_[x.file];
  for (std::uint32_t r : by_extent_[x.file][x.index]) {
    const ReadRun& run = task.runs[r];
    const std::uint64_t lo = std::max(run.file_offset, x.lo);
    const std::uint64_t hi = std::min(run.file_offset + run.length, x.hi);
    if (lo < hi) std::memcpy(run.dest + (lo - run.file_offset), data + (lo - x.lo), hi - lo);
  }
}

}  // namespace

IoOptions read_options(IoOptions io, const std::vector<FileInfo>& files) {
  for (const FileInfo& f : files) {
    io.extent_size = std::max<std::size_t>(io.extent_size, f.extent_size);
  }
  io.ring_bytes = std::max(io.ring_bytes, io.extent_size * 2);
  return io;
}

void read_extents(IoEngine& engine, const CheckpointDirectory& dir,
                  std::vector<FileReadTask>& tasks, std::vector<ExtentFault>* faults,
                  const Progress& progress) {
  std::make_shared<ReadJob>(engine, dir, tasks, faults, progress)->run();
}

void append_box_runs(std::vector<ReadRun>& runs, std::uint64_t src_base, const Shape& src_sizes,
                     const Shape& src_offsets, std::byte* dst, const Shape& dst_sizes,
                     const Shape& dst_offsets, const Shape& lengths, std::size_t element_size) {
  const std::size_t nd = lengths.size();
  if (nd == 0) {
    runs.push_back({src_base, element_size, dst});
    return;
  }
  for (std::int64_t l : lengths) {
    if (l <= 0) return;
  }
  // Strides, and below the odometer, on the stack for the usual ranks.
  constexpr std::size_t kInline = 8;
  std::uint64_t inline_strides[2 * kInline];
  std::vector<std::uint64_t> heap_strides;
  std::uint64_t* strides = inline_strides;
  if (nd > kInline) {
    heap_strides.resize(2 * nd);
    strides = heap_strides.data();
  }
  std::uint64_t* src_stride = strides;
  std::uint64_t* dst_stride = strides + nd;
  std::uint64_t s = element_size, d = element_size;
  for (std::size_t i = nd; i-- > 0;) {
    src_stride[i] = s;
    dst_stride[i] = d;
    s *= static_cast<std::uint64_t>(src_sizes[i]);
    d *= static_cast<std::uint64_t>(dst_sizes[i]);
  }
  // Dimensions k.. form one contiguous run: every one after k is whole in
  // both source and destination.
  std::size_t k = nd - 1;
  while (k > 0 && lengths[k] == src_sizes[k] && lengths[k] == dst_sizes[k]) --k;
  const std::uint64_t run_length = static_cast<std::uint64_t>(lengths[k]) * src_stride[k];
  std::uint64_t src0 = src_base, dst0 = 0;
  for (std::size_t i = 0; i < nd; ++i) {
    src0 += static_cast<std::uint64_t>(src_offsets[i]) * src_stride[i];
    dst0 += static_cast<std::uint64_t>(dst_offsets[i]) * dst_stride[i];
  }
  if (k == 0) {  // one run
    runs.push_back({src0, run_length, dst + dst0});
    return;
  }
  std::int64_t inline_idx[kInline] = {};
  std::vector<std::int64_t> heap_idx;
  std::int64_t* idx = inline_idx;  // odometer over dimensions 0..k-1
  if (k > kInline) {
    heap_idx.assign(k, 0);
    idx = heap_idx.data();
  }
  while (true) {
    std::uint64_t so = src0, dof = dst0;
    for (std::size_t i = 0; i < k; ++i) {
      so += static_cast<std::uint64_t>(idx[i]) * src_stride[i];
      dof += static_cast<std::uint64_t>(idx[i]) * dst_stride[i];
    }
    runs.push_back({so, run_length, dst + dof});
    std::size_t i = k;
    while (i > 0) {
      --i;
      if (++idx[i] < lengths[i]) break;
      idx[i] = 0;
      if (i == 0) return;
    }
    if (k == 0) return;
  }
}

}  // namespace ringckpt::detail
