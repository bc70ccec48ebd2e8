// tools/bench_footprint.cpp — the data files of one checkpoint of the model.
#include "bench_footprint.hpp"

#include <algorithm>

#include "bench_setup.hpp"
#include "bench_workdir.hpp"
#include "format/file_extents.hpp"
#include "io/io_engine.hpp"
#include "ringckpt/checkpoint.hpp"
#include "ringckpt/checkpointer.hpp"

namespace ringckpt::tools::bench {

namespace fs = std::filesystem;
using detail::round_up;

std::vector<fs::path> data_files(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const FileInfo& f : read_metadata(dir).files) out.push_back(dir / f.relative_path);
  return out;
}

Footprint measure_footprint(const SyntheticModel& model, const fs::path& dir,
                            const BenchOptions& o, IoNotes& notes) {
  CheckpointerOptions co;
  const std::uint64_t slots = std::min<std::uint64_t>(
      o.queue_depth + 1,
      std::max<std::uint64_t>(2, detail::extent_count(model.bytes, o.extent_size) + 1));
  co.io = bench_io(o, slots * o.extent_size, notes, "warm-up");
  co.default_mode = StagingMode::bounded;
  Footprint fp;
  {
    Checkpointer ck(co);
    ck.async_save(model.state_dict, dir).committed.get();
  }
  for (const FileInfo& f : read_metadata(dir).files) {
    fp.file_bytes += f.size;
    fp.ring_bytes += round_up(f.size, o.extent_size);
    fp.files += 1;
  }
  fp.ring_bytes = std::max<std::uint64_t>(fp.ring_bytes, o.extent_size);
  remove_quietly(dir);
  return fp;
}

}  // namespace ringckpt::tools::bench
