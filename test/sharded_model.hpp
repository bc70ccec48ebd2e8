// test/sharded_model.hpp — one model split over any number of ranks, for the
// multi-rank suites (threads and MPI): replicated tensors, row-, column- and
// block-sharded ones (uneven splits included) and a replicated blob.
//
// Every byte of the global model is a function of (seed, tensor, position),
// so that a rank can build its own part, and check what it loaded, without
// the others.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ringckpt/ringckpt.hpp"

namespace ringckpt::test {

enum class Split { replicated, rows, cols, blocks };

struct GlobalTensor {
  std::string name;
  DType dtype;
  Shape shape;  // 2-D, or 1-D for rows
  Split split;
};

inline std::vector<GlobalTensor> sharded_model_tensors(std::int64_t grow = 1) {
  return {
      {"model.embed.weight", DType::BF16, {9, 6 * grow}, Split::replicated},
      {"model.layers.0.attention.wq.weight", DType::F32, {11 * grow, 7}, Split::rows},
      {"model.layers.0.attention.wk.weight", DType::F32, {5, 13 * grow}, Split::cols},
      {"model.layers.0.feed_forward.w1.weight", DType::F32, {10, 8 * grow}, Split::blocks},
      {"model.norm.weight", DType::F32, {1000 * grow}, Split::rows},
  };
}

// [begin, end) of part `i` of `n` of `extent`: uneven when n does not divide it.
inline std::pair<std::int64_t, std::int64_t> part(std::int64_t extent, int i, int n) {
  return {extent * i / n, extent * (i + 1) / n};
}

struct Box {
  Shape offsets, sizes;
};

// The box rank `rank` of `world` holds of `t`. blocks: rank 0 the top half of
// the rows, the other ranks the bottom half split by columns.
inline Box box_of(const GlobalTensor& t, int rank, int world) {
  const Shape& s = t.shape;
  if (world == 1 || t.split == Split::replicated) return {Shape(s.size(), 0), s};
  if (t.split == Split::rows) {
    auto [b, e] = part(s[0], rank, world);
    Box box{Shape(s.size(), 0), s};
    box.offsets[0] = b;
    box.sizes[0] = e - b;
    return box;
  }
  if (t.split == Split::cols) {
    auto [b, e] = part(s[1], rank, world);
    return {{0, b}, {s[0], e - b}};
  }
  const std::int64_t half = s[0] / 2;
  if (rank == 0) return {{0, 0}, {half, s[1]}};
  auto [b, e] = part(s[1], rank - 1, world - 1);
  return {{half, b}, {s[0] - half, e - b}};
}

// Byte `i` (row-major, of the whole tensor) of tensor `t` of the model.
inline std::byte model_byte(std::uint64_t seed, std::size_t t, std::uint64_t i) {
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + t * 0xBF58476D1CE4E5B9ull + i;
  x ^= x >> 31;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 29;
  return static_cast<std::byte>(x);
}

inline Bytes model_blob(std::uint64_t seed) {
  Bytes b(37);
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = model_byte(seed, 99, i);
  return b;
}

// One rank's part of the model: the state dict to save (filled) or to load
// into (zeroed). With world == 1 every tensor is a whole TensorView.
class RankShards {
 public:
  RankShards(int rank, int world, std::uint64_t seed, bool blank, std::int64_t grow = 1)
      : rank_(rank), world_(world), seed_(seed), tensors_(sharded_model_tensors(grow)) {
    for (std::size_t t = 0; t < tensors_.size(); ++t) {
      const GlobalTensor& g = tensors_[t];
      const Box box = box_of(g, rank, world);
      auto& bytes = storage_.emplace_back(static_cast<std::size_t>(numel(box.sizes)) *
                                          dtype_size(g.dtype));
      if (!blank) expected_into(t, box, bytes);
      TensorView view{bytes.data(), g.dtype, box.sizes};
      if (world == 1 || g.split == Split::replicated) {
        sd_.add(g.name, view);
      } else {
        sd_.add(g.name, ShardedTensor{g.dtype, g.shape, {Shard{view, box.offsets}}});
      }
    }
    sd_.add("step", blank ? Bytes{} : model_blob(seed));
  }
  RankShards(const RankShards&) = delete;
  RankShards& operator=(const RankShards&) = delete;

  StateDict& sd() { return sd_; }

  // "" if every byte of this rank's part equals the model's; else where not.
  std::string mismatch() const {
    for (std::size_t t = 0; t < tensors_.size(); ++t) {
      const Box box = box_of(tensors_[t], rank_, world_);
      std::vector<std::byte> want(storage_[t].size());
      expected_into(t, box, want);
      if (want != storage_[t]) {
        return tensors_[t].name + " differs on rank " + std::to_string(rank_) + " of " +
               std::to_string(world_);
      }
    }
    const auto* blob = std::get_if<Bytes>(sd_.find("step"));
    if (blob == nullptr || *blob != model_blob(seed_)) return "step differs";
    return "";
  }

 private:
  // The model's bytes of `box` of tensor t, row-major.
  void expected_into(std::size_t t, const Box& box, std::vector<std::byte>& out) const {
    const GlobalTensor& g = tensors_[t];
    const std::size_t item = dtype_size(g.dtype);
    const std::int64_t cols = g.shape.size() == 2 ? g.shape[1] : 1;
    const std::int64_t box_cols = g.shape.size() == 2 ? box.sizes[1] : 1;
    const std::int64_t col0 = g.shape.size() == 2 ? box.offsets[1] : 0;
    std::size_t at = 0;
    for (std::int64_t r = 0; r < box.sizes[0]; ++r) {
      for (std::int64_t c = 0; c < box_cols; ++c) {
        const std::uint64_t element =
            static_cast<std::uint64_t>((box.offsets[0] + r) * cols + col0 + c);
        for (std::size_t b = 0; b < item; ++b) {
          out[at++] = model_byte(seed_, t, element * item + b);
        }
      }
    }
  }

  int rank_, world_;
  std::uint64_t seed_;
  std::vector<GlobalTensor> tensors_;
  std::vector<std::vector<std::byte>> storage_;
  StateDict sd_;
};

}  // namespace ringckpt::test
