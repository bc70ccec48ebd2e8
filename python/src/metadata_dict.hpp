// metadata_dict.hpp — Metadata and VerifyReport as plain Python dicts.
#pragma once

#include <pybind11/pybind11.h>

#include "ringckpt/metadata.hpp"
#include "ringckpt/verify.hpp"

namespace ringckpt::python {

namespace py = pybind11;

// {"version", "total_bytes", "entries": {fqn: {"kind": "tensor", "dtype",
// "shape", "chunks": [{"offsets", "sizes"}]} | {"kind": "bytes", "length"}},
// "files": [{"path", "size", "extent_size", "extents"}], "planner_data"}.
// REQUIRES: the GIL is held.
py::dict metadata_dict(const Metadata& metadata);

// {"ok", "files", "extents", "bytes", "faults": [{"file", "extent", "offset",
// "length", "message"}], "notes"}. REQUIRES: the GIL is held.
py::dict verify_report_dict(const VerifyReport& report);

}  // namespace ringckpt::python
