// ringckpt/tensor.hpp — what a state dict holds: tensor views, shards, blobs.
#pragma once

#include <algorithm>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <map>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "ringckpt/dtype.hpp"

namespace ringckpt {

// The dimensions of a tensor, or the offsets or sizes of a box in one: a
// vector of int64 that holds up to kInline values in place (no heap block;
// a read plan makes millions of them) and behaves as std::vector<int64_t>
// does for what a shape needs: brace and (count, value) construction,
// size, [], iteration (contiguous: pointers), push_back, insert, erase,
// resize, ==, <=> (lexicographic), and conversion from and to
// std::vector<int64_t>. Invariant: capacity_ == kInline while the values
// are in inline_; capacity_ > kInline while they are in heap_ (owned).
class Shape {
 public:
  using value_type = std::int64_t;
  using size_type = std::size_t;
  using difference_type = std::ptrdiff_t;
  using reference = value_type&;
  using const_reference = const value_type&;
  using pointer = value_type*;
  using const_pointer = const value_type*;
  using iterator = value_type*;
  using const_iterator = const value_type*;
  using reverse_iterator = std::reverse_iterator<iterator>;
  using const_reverse_iterator = std::reverse_iterator<const_iterator>;
  static constexpr size_type kInline = 4;

  Shape() noexcept {}
  explicit Shape(size_type n) { assign(n, 0); }
  Shape(size_type n, value_type value) { assign(n, value); }
  template <std::input_iterator It>
  Shape(It first, It last) { assign(first, last); }
  Shape(std::initializer_list<value_type> values) { assign(values.begin(), values.end()); }
  Shape(const std::vector<value_type>& values) { assign(values.begin(), values.end()); }
  Shape(const Shape& other) { assign(other.begin(), other.end()); }
  Shape(Shape&& other) noexcept { steal(other); }
  ~Shape() { release(); }

  Shape& operator=(const Shape& other) {
    if (this != &other) assign(other.begin(), other.end());
    return *this;
  }
  Shape& operator=(Shape&& other) noexcept {
    if (this != &other) {
      release();
      steal(other);
    }
    return *this;
  }
  Shape& operator=(std::initializer_list<value_type> values) {
    assign(values.begin(), values.end());
    return *this;
  }

  operator std::vector<value_type>() const { return std::vector<value_type>(begin(), end()); }

  void assign(size_type n, value_type value) {
    clear();
    reserve(n);
    std::fill_n(data(), n, value);
    size_ = static_cast<std::uint32_t>(n);
  }
  template <std::input_iterator It>
  void assign(It first, It last) {
    clear();
    if constexpr (std::forward_iterator<It>) {
      const auto n = static_cast<size_type>(std::distance(first, last));
      reserve(n);
      std::copy(first, last, data());
      size_ = static_cast<std::uint32_t>(n);
    } else {
      for (; first != last; ++first) push_back(*first);
    }
  }
  void assign(std::initializer_list<value_type> values) { assign(values.begin(), values.end()); }

  size_type size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  size_type capacity() const noexcept { return capacity_; }
  static constexpr size_type max_size() noexcept { return UINT32_MAX; }

  value_type* data() noexcept { return on_heap() ? heap_ : inline_; }
  const value_type* data() const noexcept { return on_heap() ? heap_ : inline_; }
  iterator begin() noexcept { return data(); }
  iterator end() noexcept { return data() + size_; }
  const_iterator begin() const noexcept { return data(); }
  const_iterator end() const noexcept { return data() + size_; }
  const_iterator cbegin() const noexcept { return begin(); }
  const_iterator cend() const noexcept { return end(); }
  reverse_iterator rbegin() noexcept { return reverse_iterator(end()); }
  reverse_iterator rend() noexcept { return reverse_iterator(begin()); }
  const_reverse_iterator rbegin() const noexcept { return const_reverse_iterator(end()); }
  const_reverse_iterator rend() const noexcept { return const_reverse_iterator(begin()); }

  reference operator[](size_type i) noexcept { return data()[i]; }
  const_reference operator[](size_type i) const noexcept { return data()[i]; }
  reference at(size_type i) {
    if (i >= size_) throw std::out_of_range("Shape::at");
    return data()[i];
  }
  const_reference at(size_type i) const {
    if (i >= size_) throw std::out_of_range("Shape::at");
    return data()[i];
  }
  reference front() noexcept { return data()[0]; }
  const_reference front() const noexcept { return data()[0]; }
  reference back() noexcept { return data()[size_ - 1]; }
  const_reference back() const noexcept { return data()[size_ - 1]; }

  void reserve(size_type n) {
    if (n <= capacity_) return;
    if (n > max_size()) throw std::length_error("Shape::reserve");
    const size_type grown = std::max<size_type>(n, std::min<size_type>(2 * capacity_, max_size()));
    auto* fresh = new value_type[grown];
    std::copy_n(data(), size_, fresh);
    if (on_heap()) delete[] heap_;
    heap_ = fresh;
    capacity_ = static_cast<std::uint32_t>(grown);
  }
  void shrink_to_fit() noexcept {}
  void clear() noexcept { size_ = 0; }
  void resize(size_type n) { resize(n, 0); }
  void resize(size_type n, value_type value) {
    if (n > size_) {
      reserve(n);
      std::fill(data() + size_, data() + n, value);
    }
    size_ = static_cast<std::uint32_t>(n);
  }
  void push_back(value_type value) {
    if (size_ == capacity_) reserve(size_ + 1);
    data()[size_++] = value;
  }
  reference emplace_back(value_type value) {
    push_back(value);
    return back();
  }
  void pop_back() noexcept { --size_; }

  iterator insert(const_iterator pos, value_type value) { return insert(pos, 1, value); }
  iterator insert(const_iterator pos, size_type n, value_type value) {
    const auto at = static_cast<size_type>(pos - begin());
    open_gap(at, n);
    std::fill_n(data() + at, n, value);
    return data() + at;
  }
  template <std::forward_iterator It>
  iterator insert(const_iterator pos, It first, It last) {
    const Shape values(first, last);  // may alias *this
    const auto at = static_cast<size_type>(pos - begin());
    open_gap(at, values.size());
    std::copy(values.begin(), values.end(), data() + at);
    return data() + at;
  }
  iterator insert(const_iterator pos, std::initializer_list<value_type> values) {
    return insert(pos, values.begin(), values.end());
  }
  iterator erase(const_iterator pos) { return erase(pos, pos + 1); }
  iterator erase(const_iterator first, const_iterator last) {
    const auto at = static_cast<size_type>(first - begin());
    const auto n = static_cast<size_type>(last - first);
    std::copy(begin() + at + n, end(), begin() + at);
    size_ -= static_cast<std::uint32_t>(n);
    return begin() + at;
  }
  void swap(Shape& other) noexcept {
    Shape t(std::move(other));
    other = std::move(*this);
    *this = std::move(t);
  }
  friend void swap(Shape& a, Shape& b) noexcept { a.swap(b); }

  friend bool operator==(const Shape& a, const Shape& b) noexcept {
    return std::equal(a.begin(), a.end(), b.begin(), b.end());
  }
  friend std::strong_ordering operator<=>(const Shape& a, const Shape& b) noexcept {
    return std::lexicographical_compare_three_way(a.begin(), a.end(), b.begin(), b.end());
  }

 private:
  bool on_heap() const noexcept { return capacity_ > kInline; }
  void release() noexcept {
    if (on_heap()) delete[] heap_;
    size_ = 0;
    capacity_ = kInline;
  }
  // REQUIRES: *this holds no heap block. Leaves `other` empty and inline.
  void steal(Shape& other) noexcept {
    size_ = other.size_;
    capacity_ = other.capacity_;
    if (other.on_heap()) {
      heap_ = other.heap_;
    } else {
      std::copy_n(other.inline_, other.size_, inline_);
    }
    other.size_ = 0;
    other.capacity_ = kInline;
  }
  // Moves the values from `at` on by n places, growing the size by n.
  void open_gap(size_type at, size_type n) {
    reserve(size_ + n);
    std::copy_backward(data() + at, data() + size_, data() + size_ + n);
    size_ += static_cast<std::uint32_t>(n);
  }

  std::uint32_t size_ = 0;
  std::uint32_t capacity_ = kInline;
  union {
    value_type inline_[kInline];
    value_type* heap_;
  };
};

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
