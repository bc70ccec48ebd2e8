// tensor_geometry.cpp — shapes, boxes and chunk tilings.
#include "format/tensor_geometry.hpp"

#include <bit>
#include <ranges>
#include <utility>

namespace ringckpt::detail {
namespace {

// Tilings that split more dimensions than this, or that make more corners
// than kMaxCorners, are not checked (too_complex): each chunk contributes 2^d
// corners, and hostile metadata must not make the check itself exhaust memory.
constexpr std::size_t kMaxSplitDims = 16;
constexpr std::size_t kMaxCorners = std::size_t{1} << 24;

// The signed-corner test.
//
// The indicator of a box [lo, hi) is the sum over its 2^d corners c of
// sign(c) * H(x >= c), where sign(c) = (-1)^(number of coordinates taken from
// hi) and H(x >= c) is the orthant indicator. Orthant indicators at distinct
// points are linearly independent, so boxes whose indicators sum to that of
// the global box (exactly-once tiling) are recognised by every point's summed
// weight being zero.
class CornerSum {
 public:
  static constexpr std::size_t kGlobal = static_cast<std::size_t>(-1);

  explicit CornerSum(std::vector<std::size_t> dims) : dims_(std::move(dims)) {}

  // Adds weight * indicator of the box [lo, hi), restricted to dims_; `owner`
  // names the chunk (kGlobal for the global box).
  void add_box(const Shape& lo, const Shape& hi, int weight, std::size_t owner) {
    const std::size_t k = dims_.size();
    for (std::uint32_t mask = 0; mask < (std::uint32_t{1} << k); ++mask) {
      for (std::size_t j = 0; j < k; ++j) {
        coords_.push_back(((mask >> j) & 1) ? hi[dims_[j]] : lo[dims_[j]]);
      }
      weights_.push_back(std::popcount(mask) % 2 == 0 ? weight : -weight);
      owners_.push_back(owner);
    }
  }

  struct Verdict {
    bool exact = true;                 // every aggregated weight is zero
    std::optional<std::size_t> chunk;  // a chunk at a point of nonzero weight
  };

  // Aggregates equal points (by sorting) and reports the first nonzero one.
  Verdict verdict() const {
    const std::size_t k = dims_.size();
    std::vector<std::size_t> order(weights_.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    auto point = [&](std::size_t i) { return coords_.begin() + static_cast<std::ptrdiff_t>(i * k); };
    auto less = [&](std::size_t a, std::size_t b) {
      return std::lexicographical_compare(point(a), point(a) + static_cast<std::ptrdiff_t>(k),
                                          point(b), point(b) + static_cast<std::ptrdiff_t>(k));
    };
    std::sort(order.begin(), order.end(), less);

    Verdict v;
    for (std::size_t begin = 0; begin < order.size();) {
      std::size_t end = begin + 1;
      while (end < order.size() && !less(order[begin], order[end])) ++end;
      std::int64_t sum = 0;
      std::optional<std::size_t> chunk;
      for (std::size_t i = begin; i < end; ++i) {
        sum += weights_[order[i]];
        if (owners_[order[i]] != kGlobal && !chunk) chunk = owners_[order[i]];
      }
      if (sum != 0) {
        v.exact = false;
        if (chunk) {
          v.chunk = chunk;
          return v;
        }
      }
      begin = end;
    }
    return v;
  }

 private:
  std::vector<std::size_t> dims_;     // the dimensions that take part
  std::vector<std::int64_t> coords_;  // dims_.size() coordinates per corner
  std::vector<int> weights_;
  std::vector<std::size_t> owners_;
};

// Whether the chunks `live` (non-empty, inside `global`), which split at most
// dimension `d` (none: no dimension), tile `global` exactly: the common
// shardings (whole, by rows, by columns) without the cost of the corner sum.
bool tiles_along_one_dimension(const Shape& global, const std::vector<ChunkStorageMetadata>& chunks,
                               const std::vector<std::size_t>& live, std::optional<std::size_t> d) {
  if (!d) return live.size() == 1;  // each live chunk is the whole tensor
  auto contiguous = [&](auto&& spans) {  // spans: [begin, end) along d, in order
    std::int64_t end = 0;
    for (const auto& [b, e] : spans) {
      if (b != end) return false;
      end = e;
    }
    return end == global[*d];
  };
  auto span_of = [&](std::size_t i) {
    return std::pair{chunks[i].offsets[*d], chunks[i].offsets[*d] + chunks[i].sizes[*d]};
  };
  // Chunks are usually listed in order: try that before sorting.
  if (contiguous(live | std::views::transform(span_of))) return true;
  std::vector<std::pair<std::int64_t, std::int64_t>> spans;
  spans.reserve(live.size());
  for (std::size_t i : live) spans.push_back(span_of(i));
  std::sort(spans.begin(), spans.end());
  return contiguous(spans);
}

Shape box_end(const ChunkStorageMetadata& chunk) {
  Shape hi(chunk.offsets.size());
  for (std::size_t d = 0; d < hi.size(); ++d) hi[d] = chunk.offsets[d] + chunk.sizes[d];
  return hi;
}

}  // namespace

std::optional<std::uint64_t> shape_bytes(std::span<const std::int64_t> shape,
                                         std::uint64_t element_size) {
  std::uint64_t bytes = element_size;
  for (std::int64_t d : shape) {
    if (d < 0) return std::nullopt;
    const auto dim = static_cast<std::uint64_t>(d);
    if (dim != 0 && bytes > kMaxTensorBytes / dim) return std::nullopt;
    bytes *= dim;
  }
  if (bytes > kMaxTensorBytes) return std::nullopt;
  return bytes;
}

bool box_inside(std::span<const std::int64_t> offsets, std::span<const std::int64_t> sizes,
                std::span<const std::int64_t> shape) {
  if (offsets.size() != shape.size() || sizes.size() != shape.size()) return false;
  for (std::size_t d = 0; d < shape.size(); ++d) {
    // shape[d] - sizes[d] cannot overflow: 0 <= sizes[d] <= shape[d].
    if (offsets[d] < 0 || sizes[d] < 0 || sizes[d] > shape[d] || offsets[d] > shape[d] - sizes[d]) {
      return false;
    }
  }
  return true;
}

const ChunkStorageMetadata* find_chunk(const TensorStorageMetadata& tensor, const Shape& offset,
                                       std::optional<std::size_t> hint) {
  const auto at = find_chunk_at(
      tensor.chunks.size(), [&](std::size_t i) -> const Shape& { return tensor.chunks[i].offsets; },
      offset, hint);
  return at ? &tensor.chunks[*at] : nullptr;
}

std::optional<TilingFault> find_tiling_fault(const Shape& global,
                                             const std::vector<ChunkStorageMetadata>& chunks) {
  using Kind = TilingFault::Kind;
  const std::size_t ndim = global.size();
  std::int64_t total = 1;
  for (std::int64_t d : global) {
    if (d < 0 || __builtin_mul_overflow(total, d, &total)) return TilingFault{Kind::bad_shape};
  }
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    const ChunkStorageMetadata& chunk = chunks[i];
    if (chunk.offsets.size() != ndim || chunk.sizes.size() != ndim) {
      return TilingFault{Kind::rank, i};
    }
    if (!box_inside(chunk.offsets, chunk.sizes, global)) return TilingFault{Kind::outside, i};
  }
  // In bounds, so every chunk of an empty tensor is empty: nothing to cover.
  if (total == 0) return std::nullopt;
  // One chunk in bounds tiles the tensor exactly when it is the whole tensor
  // (the common case: a tensor saved whole). Anything else takes the full test.
  if (chunks.size() == 1 && chunks[0].sizes == global &&
      std::all_of(chunks[0].offsets.begin(), chunks[0].offsets.end(),
                  [](std::int64_t o) { return o == 0; })) {
    return std::nullopt;
  }

  // Empty chunks cancel in the corner sum; leave them out. A non-empty chunk
  // in bounds holds at most `total` elements, so its numel does not overflow.
  std::vector<std::size_t> live;
  live.reserve(chunks.size());
  unsigned __int128 held = 0;
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    const std::int64_t n = numel(chunks[i].sizes);
    if (n > 0) {
      live.push_back(i);
      held += static_cast<std::uint64_t>(n);
    }
  }
  // A dimension that every chunk spans fully factors out of every indicator:
  // the test holds iff it holds without it.
  auto split = [&](std::size_t d) {
    return std::any_of(live.begin(), live.end(), [&](std::size_t i) {
      return chunks[i].offsets[d] != 0 || chunks[i].sizes[d] != global[d];
    });
  };
  std::size_t n_split = 0;
  std::optional<std::size_t> split_dim;
  for (std::size_t d = 0; d < ndim; ++d) {
    if (split(d)) ++n_split, split_dim = d;
  }
  if (n_split <= 1 && tiles_along_one_dimension(global, chunks, live, split_dim)) {
    return std::nullopt;
  }
  std::vector<std::size_t> dims;
  for (std::size_t d = 0; d < ndim; ++d) {
    if (split(d)) dims.push_back(d);
  }
  if (dims.size() > kMaxSplitDims || (live.size() + 1) << dims.size() > kMaxCorners) {
    TilingFault fault{Kind::too_complex};
    fault.split_dims = dims.size();
    return fault;
  }

  CornerSum corners(dims);
  for (std::size_t i : live) corners.add_box(chunks[i].offsets, box_end(chunks[i]), 1, i);
  corners.add_box(Shape(ndim, 0), global, -1, CornerSum::kGlobal);
  const auto verdict = corners.verdict();
  if (verdict.exact) return std::nullopt;

  const auto want = static_cast<std::uint64_t>(total);
  TilingFault fault{held > want   ? Kind::overlap
                    : held < want ? Kind::gap
                                  : Kind::overlap_and_gap,
                    verdict.chunk};
  fault.held = held;
  fault.total = want;
  return fault;
}

}  // namespace ringckpt::detail
