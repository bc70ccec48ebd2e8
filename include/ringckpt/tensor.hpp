// ringckpt/tensor.hpp — what a state dict holds: tensor views, shards, blobs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <span>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "ringckpt/dtype.hpp"

namespace ringckpt {

using Shape = std::vector<std::int64_t>;

// Number of elements of a shape; 1 for a 0-d shape, 0 if any dimension is 0.
std::int64_t numel(const Shape& shape) noexcept;

// A view of memory the caller owns: a contiguous, row-major tensor. ringckpt
// never frees it; on save it reads `data`, on load it writes it.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::F32;
  Shape shape;

  std::int64_t numel() const noexcept { return ringckpt::numel(shape); }
  std::size_t nbytes() const noexcept {
    return static_cast<std::size_t>(numel()) * dtype_size(dtype);
  }
  std::span<std::byte> bytes() const noexcept {
    return {static_cast<std::byte*>(data), nbytes()};
  }
};

// One rank's part of a tensor that is split across ranks: each shard is a
// contiguous TensorView placed at `offsets` within `global_shape`.
struct Shard {
  TensorView local;
  Shape offsets;
};

struct ShardedTensor {
  DType dtype = DType::F32;
  Shape global_shape;
  std::vector<Shard> shards;
};

// A small opaque value (a step counter, RNG state, a serialized config).
using Bytes = std::vector<std::byte>;

template <typename T>
Bytes bytes_of(const T& value) {
  static_assert(std::is_trivially_copyable_v<T>, "bytes_of needs a trivially copyable type");
  Bytes out(sizeof(T));
  std::memcpy(out.data(), &value, sizeof(T));
  return out;
}

inline Bytes bytes_of(std::string_view text) {
  auto b = std::as_bytes(std::span<const char>(text.data(), text.size()));
  return Bytes(b.begin(), b.end());
}

using StateValue = std::variant<TensorView, ShardedTensor, Bytes>;

// An ordered map from fully qualified name to value. Order is insertion order;
// it is the default plan order, and so the order of bytes on disk.
class StateDict {
 public:
  struct Entry {
    std::string fqn;
    StateValue value;
  };

  // Throws Error(kInvalidArgument) if fqn is empty or already present.
  StateDict& add(std::string fqn, StateValue value);

  StateValue* find(std::string_view fqn) noexcept;
  const StateValue* find(std::string_view fqn) const noexcept;
  bool contains(std::string_view fqn) const noexcept { return find(fqn) != nullptr; }

  std::size_t size() const noexcept { return entries_.size(); }
  bool empty() const noexcept { return entries_.empty(); }
  auto begin() noexcept { return entries_.begin(); }
  auto end() noexcept { return entries_.end(); }
  auto begin() const noexcept { return entries_.begin(); }
  auto end() const noexcept { return entries_.end(); }

  // Total bytes of every tensor, shard and blob.
  std::uint64_t nbytes() const noexcept;

 private:
  std::vector<Entry> entries_;
  std::map<std::string, std::size_t, std::less<>> index_;  // fqn -> entries_ position
};

}  // namespace ringckpt
