// tools/bench_footprint.hpp — the data files of one checkpoint of the model,
// learned from one untimed save.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <vector>

#include "bench_options.hpp"
#include "io_notes.hpp"
#include "synthetic.hpp"

namespace ringckpt::tools::bench {

// Sum of the data-file sizes, and the ring that holds them whole.
struct Footprint {
  std::uint64_t file_bytes = 0;
  std::uint64_t ring_bytes = 0;  // every file rounded up to extents; >= one extent
  std::size_t files = 0;
};

// Saves `model` once to `dir` (bounded mode, which also warms the path up),
// reads the sizes from its metadata.json, and removes it.
Footprint measure_footprint(const SyntheticModel& model, const std::filesystem::path& dir,
                            const BenchOptions& o, IoNotes& notes);

// The data files of the checkpoint in `dir`, as its metadata.json lists them.
std::vector<std::filesystem::path> data_files(const std::filesystem::path& dir);

}  // namespace ringckpt::tools::bench
