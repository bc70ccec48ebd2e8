// tools/bench_setup.hpp — what every run of `ringckpt bench` sets up the same
// way: the model it saves, and the I/O options of its Checkpointers.
#pragma once

#include <cstdint>
#include <string>

#include "bench_options.hpp"
#include "bench_report.hpp"
#include "io_notes.hpp"
#include "ringckpt/io_options.hpp"
#include "synthetic.hpp"

namespace ringckpt::tools::bench {

// The model --model, --size and --seed ask for, and its size alone (nothing
// made); a size it cannot be made at is UsageError.
SyntheticModel bench_model(const BenchOptions& o);
ModelSize bench_model_size(const BenchOptions& o);

// --extent-size and --queue-depth, a ring of `ring_bytes`, notes reported to
// `notes` as `who`.
IoOptions bench_io(const BenchOptions& o, std::uint64_t ring_bytes, IoNotes& notes,
                   std::string who);

// What the report says of the machine before anything is measured: where
// it writes (`dir`), the options, the model, its data files' bytes and the
// ring.
Machine machine_of(const std::filesystem::path& dir, const BenchOptions& o,
                   ModelSize model, std::uint64_t file_bytes,
                   std::uint64_t ring_bytes);

}  // namespace ringckpt::tools::bench
