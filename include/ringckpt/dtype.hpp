// ringckpt/dtype.hpp — element types, named as safetensors names them.
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>

namespace ringckpt {

enum class DType {
  F64, F32, F16, BF16,
  I64, I32, I16, I8,
  U8, BOOL,
  F8_E4M3, F8_E5M2,
  U16, U32, U64,
};

inline constexpr DType kAllDTypes[] = {
    DType::F64,  DType::F32,  DType::F16,     DType::BF16,    DType::I64,
    DType::I32,  DType::I16,  DType::I8,      DType::U8,      DType::BOOL,
    DType::F8_E4M3, DType::F8_E5M2, DType::U16, DType::U32,   DType::U64,
};

// Bytes per element.
constexpr std::size_t dtype_size(DType t) noexcept {
  switch (t) {
    case DType::F64: case DType::I64: case DType::U64: return 8;
    case DType::F32: case DType::I32: case DType::U32: return 4;
    case DType::F16: case DType::BF16: case DType::I16: case DType::U16: return 2;
    case DType::I8: case DType::U8: case DType::BOOL:
    case DType::F8_E4M3: case DType::F8_E5M2: return 1;
  }
  return 0;
}

// The safetensors name: "F32", "BF16", "F8_E4M3", ...
std::string_view dtype_name(DType t) noexcept;

// The inverse of dtype_name; nullopt for a name safetensors does not define.
std::optional<DType> dtype_from_name(std::string_view name) noexcept;

}  // namespace ringckpt
