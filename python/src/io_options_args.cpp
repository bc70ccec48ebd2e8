#include "io_options_args.hpp"

#include <cstdint>
#include <limits>
#include <string>

#include "ringckpt/error.hpp"

namespace ringckpt::python {

namespace {

Error invalid(const std::string& where, std::string message) {
  return Error(ErrorCode::kInvalidArgument, where, std::move(message));
}

// A non-negative int no larger than `max`. bool is refused: True is not a size.
std::uint64_t count_of(const std::string& key, py::handle value, std::uint64_t max) {
  if (!PyLong_Check(value.ptr()) || PyBool_Check(value.ptr())) {
    throw invalid(key, "must be an int");
  }
  unsigned long long n = PyLong_AsUnsignedLongLong(value.ptr());
  if (PyErr_Occurred()) {
    PyErr_Clear();
    throw invalid(key, "must be a non-negative int");
  }
  if (n > max) throw invalid(key, "too large: " + std::to_string(n));
  return n;
}

bool flag_of(const std::string& key, py::handle value) {
  if (!PyBool_Check(value.ptr())) throw invalid(key, "must be a bool");
  return value.ptr() == Py_True;
}

}  // namespace

IoOptions io_options_from(const py::kwargs& keywords) {
  constexpr std::uint64_t kSizeMax = std::numeric_limits<std::size_t>::max();
  constexpr std::uint64_t kUnsignedMax = std::numeric_limits<unsigned>::max();
  IoOptions io;
  for (auto [key_handle, value] : keywords) {
    std::string key = py::str(key_handle);
    if (key == "ring_bytes") {
      io.ring_bytes = count_of(key, value, kSizeMax);
    } else if (key == "extent_size") {
      io.extent_size = count_of(key, value, kSizeMax);
    } else if (key == "queue_depth") {
      io.queue_depth = static_cast<unsigned>(count_of(key, value, kUnsignedMax));
    } else if (key == "staging_threads") {
      io.staging_threads = static_cast<unsigned>(count_of(key, value, kUnsignedMax));
    } else if (key == "max_file_bytes") {
      io.max_file_bytes = count_of(key, value, std::numeric_limits<std::uint64_t>::max());
    } else if (key == "direct_io") {
      io.direct_io = flag_of(key, value);
    } else if (key == "register_buffers") {
      io.register_buffers = flag_of(key, value);
    } else {
      throw invalid(key, "unknown keyword (one of ring_bytes, extent_size, queue_depth, "
                         "staging_threads, direct_io, register_buffers, max_file_bytes)");
    }
  }
  return io;
}

StagingMode staging_mode_from(std::string_view name) {
  if (name == "lazy") return StagingMode::lazy;
  if (name == "bounded") return StagingMode::bounded;
  if (name == "snapshot") return StagingMode::snapshot;
  throw invalid("mode", "unknown staging mode '" + std::string(name) +
                            "' (one of lazy, bounded, snapshot)");
}

std::optional<StagingMode> optional_staging_mode_from(const std::optional<std::string>& name) {
  if (!name) return std::nullopt;
  return staging_mode_from(*name);
}

}  // namespace ringckpt::python
