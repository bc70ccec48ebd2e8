// tools/bench_setup.cpp — the model and the I/O options of a bench run.
#include "bench_setup.hpp"

#include <stdexcept>
#include <utility>

#include "machine_facts.hpp"

namespace ringckpt::tools::bench {

namespace {

// What `make` returns; a size the model cannot be made at is UsageError.
template <typename F>
auto sized(F&& make) {
  try {
    return make();
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string("--size: ") + e.what());
  }
}

}  // namespace

SyntheticModel bench_model(const BenchOptions& o) {
  return sized([&] { return make_model(o.model, o.size, o.seed); });
}

ModelSize bench_model_size(const BenchOptions& o) {
  return sized([&] { return model_size(o.model, o.size); });
}

IoOptions bench_io(const BenchOptions& o, std::uint64_t ring_bytes, IoNotes& notes,
                   std::string who) {
  IoOptions io;
  io.extent_size = o.extent_size;
  io.ring_bytes = ring_bytes;
  io.queue_depth = o.queue_depth;
  io.report = notes.sink(std::move(who));
  return io;
}

Machine machine_of(const std::filesystem::path& dir, const BenchOptions& o,
                   ModelSize model, std::uint64_t file_bytes,
                   std::uint64_t ring_bytes) {
  Machine m;
  m.dir = std::filesystem::absolute(dir);
  m.fs_type = filesystem_name(dir);
  m.extent = o.extent_size;
  m.depth = o.queue_depth;
  m.model_bytes = model.bytes;
  m.tensors = model.tensors;
  m.file_bytes = file_bytes;
  m.ring_bytes = ring_bytes;
  m.cpus = cpu_count();
  return m;
}

}  // namespace ringckpt::tools::bench
