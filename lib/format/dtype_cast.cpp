// dtype_cast.cpp — element conversion between F64, F32, F16 and BF16.
#include "format/dtype_cast.hpp"

#include <algorithm>
#include <bit>
#include <cstring>

namespace ringckpt::detail {
namespace {

static_assert(std::endian::native == std::endian::little, "safetensors is little-endian");

// F32 -> BF16, round to nearest, ties to even; NaN stays NaN (quietened).
std::uint16_t bf16_from_float(float f) noexcept {
  std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

float float_from_bf16(std::uint16_t h) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16);
}

// Reads element i of `t` at p as a double (exact for every castable dtype).
double load(DType t, const std::byte* p, std::size_t i) noexcept {
  switch (t) {
    case DType::F64: { double v; std::memcpy(&v, p + 8 * i, 8); return v; }
    case DType::F32: { float v; std::memcpy(&v, p + 4 * i, 4); return v; }
    case DType::F16: { _Float16 v; std::memcpy(&v, p + 2 * i, 2); return static_cast<double>(v); }
    case DType::BF16: { std::uint16_t v; std::memcpy(&v, p + 2 * i, 2); return float_from_bf16(v); }
    default: return 0;
  }
}

// Writes v as element i of `t` at p, rounded once (BF16 from an F64 source:
// through F32, as torch does).
void store(DType t, std::byte* p, std::size_t i, double v) noexcept {
  switch (t) {
    case DType::F64: std::memcpy(p + 8 * i, &v, 8); return;
    case DType::F32: { const float f = static_cast<float>(v); std::memcpy(p + 4 * i, &f, 4); return; }
    case DType::F16: { const _Float16 h = static_cast<_Float16>(v); std::memcpy(p + 2 * i, &h, 2); return; }
    case DType::BF16: {
      const std::uint16_t h = bf16_from_float(static_cast<float>(v));
      std::memcpy(p + 2 * i, &h, 2);
      return;
    }
    default: return;
  }
}

}  // namespace

bool is_castable_float(DType t) noexcept {
  return t == DType::F64 || t == DType::F32 || t == DType::F16 || t == DType::BF16;
}

void cast_elements(DType from, const std::byte* src, DType to, std::byte* dst, std::size_t n) {
  if (from == to) {
    std::memcpy(dst, src, n * dtype_size(from));
    return;
  }
  if (from == DType::F32 && to == DType::BF16) {  // the hot path of a BF16 save: no double
    for (std::size_t i = 0; i < n; ++i) {
      float f;
      std::memcpy(&f, src + 4 * i, 4);
      const std::uint16_t h = bf16_from_float(f);
      std::memcpy(dst + 2 * i, &h, 2);
    }
    return;
  }
  // A NaN keeps its sign and stays NaN through double; a double -> float,
  // double -> _Float16 conversion rounds to nearest even.
  for (std::size_t i = 0; i < n; ++i) store(to, dst, i, load(from, src, i));
}

void cast_byte_range(DType from, std::span<const std::byte> src, DType to, std::uint64_t offset,
                     std::span<std::byte> out) {
  const std::size_t in_size = dtype_size(from), out_size = dtype_size(to);
  constexpr std::size_t kBatch = 512;  // elements converted per step, on the stack
  std::byte buffer[kBatch * 8];
  std::uint64_t pos = offset;
  std::size_t written = 0;
  while (written < out.size()) {
    const std::uint64_t first = pos / out_size;
    const std::uint64_t end_byte = offset + out.size();
    const std::uint64_t last = std::min<std::uint64_t>((end_byte + out_size - 1) / out_size,
                                                       first + kBatch);
    cast_elements(from, src.data() + first * in_size, to, buffer, last - first);
    const std::uint64_t skip = pos - first * out_size;
    const std::size_t n = static_cast<std::size_t>(
        std::min<std::uint64_t>((last - first) * out_size - skip, out.size() - written));
    std::memcpy(out.data() + written, buffer + skip, n);
    written += n;
    pos += n;
  }
}

void cast_box(const TensorView& src, const TensorView& dst, const Shape& offsets,
              const Shape& lengths) {
  const std::size_t ndim = src.shape.size();
  const auto* in = static_cast<const std::byte*>(src.data);
  auto* out = static_cast<std::byte*>(dst.data);
  const std::size_t in_size = dtype_size(src.dtype), out_size = dtype_size(dst.dtype);
  if (ndim == 0) {
    cast_elements(src.dtype, in, dst.dtype, out, 1);
    return;
  }
  for (std::int64_t len : lengths) {
    if (len == 0) return;
  }
  // Row-major strides in elements; the box is walked one innermost run at a time.
  std::vector<std::int64_t> stride(ndim, 1);
  for (std::size_t d = ndim - 1; d > 0; --d) stride[d - 1] = stride[d] * src.shape[d];
  std::vector<std::int64_t> at(ndim, 0);  // position inside the box, innermost dim unused
  const auto run = static_cast<std::size_t>(lengths[ndim - 1]);
  while (true) {
    std::int64_t element = 0;
    for (std::size_t d = 0; d < ndim; ++d) element += (offsets[d] + at[d]) * stride[d];
    const auto e = static_cast<std::size_t>(element);
    cast_elements(src.dtype, in + e * in_size, dst.dtype, out + e * out_size, run);
    std::size_t d = ndim - 1;
    while (d > 0) {
      --d;
      if (++at[d] < lengths[d]) break;
      at[d] = 0;
      if (d == 0) return;
    }
    if (ndim == 1) return;
  }
}

}  // namespace ringckpt::detail
