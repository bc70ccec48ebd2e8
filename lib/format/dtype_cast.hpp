// lib/format/dtype_cast.hpp — conversion between the floating dtypes (F64,
// F32, F16, BF16), as torch's Tensor.to / copy_ does it: round to nearest,
// ties to even; NaN stays NaN (quietened), a finite value past the target's
// range becomes infinity. F64 -> BF16 rounds through F32, as torch does.
// Every conversion between dtypes in ringckpt goes through here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "ringckpt/dtype.hpp"
#include "ringckpt/tensor.hpp"

namespace ringckpt::detail {

// True for F64, F32, F16 and BF16: the dtypes a load may cast between.
bool is_castable_float(DType t) noexcept;

// Converts n elements of dtype `from` at src into dtype `to` at dst.
// REQUIRES: is_castable_float(from) && is_castable_float(to); the ranges do
// not overlap.
void cast_elements(DType from, const std::byte* src, DType to, std::byte* dst, std::size_t n);

// Writes bytes [offset, offset + out.size()) of the `to` image of the `from`
// elements in src: out may begin or end inside an element (staging cuts
// pieces at any byte). REQUIRES: both castable; src holds whole elements and
// offset + out.size() <= src.size() / dtype_size(from) * dtype_size(to).
void cast_byte_range(DType from, std::span<const std::byte> src, DType to, std::uint64_t offset,
                     std::span<std::byte> out);

// Converts the box [offsets, offsets + lengths) of `src` into the same box of
// `dst`. REQUIRES: src.shape == dst.shape, both dtypes castable, the box lies
// inside the shape (box_inside).
void cast_box(const TensorView& src, const TensorView& dst, const Shape& offsets,
              const Shape& lengths);

}  // namespace ringckpt::detail
