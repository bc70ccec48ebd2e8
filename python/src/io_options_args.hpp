// io_options_args.hpp — IoOptions and StagingMode from Python keywords.
#pragma once

#include <pybind11/pybind11.h>

#include <optional>
#include <string_view>

#include "ringckpt/checkpointer.hpp"
#include "ringckpt/io_options.hpp"

namespace ringckpt::python {

namespace py = pybind11;

// IoOptions from the keywords ring_bytes, extent_size, queue_depth,
// staging_threads (non-negative ints), direct_io, register_buffers (bools) and
// max_file_bytes (a non-negative int); absent ones keep IoOptions' defaults.
// Throws Error(kInvalidArgument) naming the keyword for an unknown one or a
// value of the wrong type or range (the library checks the rest: alignment,
// limits).
IoOptions io_options_from(const py::kwargs& keywords);

// "lazy" | "bounded" | "snapshot". Throws Error(kInvalidArgument) naming
// "mode" for anything else.
StagingMode staging_mode_from(std::string_view name);
// The same, for an optional name (None: the default mode).
std::optional<StagingMode> optional_staging_mode_from(const std::optional<std::string>& name);

}  // namespace ringckpt::python
