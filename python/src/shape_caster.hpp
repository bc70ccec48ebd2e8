// shape_caster.hpp — ringckpt::Shape to and from Python as a list of ints
// (any sequence of ints on the way in), as pybind11 casts std::vector.
// REQUIRES: included by every translation unit that casts a Shape (a unit
// without it would compile and throw at run time: Shape is no registered
// class).
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>

#include "ringckpt/tensor.hpp"

namespace pybind11::detail {

template <>
struct type_caster<ringckpt::Shape> : list_caster<ringckpt::Shape, std::int64_t> {};

}  // namespace pybind11::detail
