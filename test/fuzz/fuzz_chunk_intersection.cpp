// fuzz_chunk_intersection.cpp — the load planner's chunk intersection:
// read_items_for_box and DefaultLoadPlanner::create_local_plan
// (include/ringckpt/default_planner.hpp) on a small tensor built from the
// fuzz bytes (FuzzedDataProvider): a global shape, stored chunks (a tiling
// made by random cuts, or arbitrary boxes, hostile values included) and a
// requested box.
//
// Properties: both return or throw ringckpt::Error. Each read item copies
// exactly the intersection of one stored chunk (at most one item a chunk, in
// increasing chunk position) with the box, lies inside both, and every non-empty intersection has its item.
// When the chunks tile the tensor and the box lies inside it, neither may
// fail, the items do not overlap and their elements add up to the box's. The
// planner, asked for the box as a shard (or the whole tensor), plans exactly
// the items read_items_for_box gives; asked for it as 2 or 3 shards at the
// same place (the chunk index scans on its first query, is sorted for the
// next), those items 2 or 3 times over.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "format/tensor_geometry.hpp"
#include "fuzz_util.hpp"
#include "ringckpt/default_planner.hpp"

using namespace ringckpt;

namespace {

using i128 = __int128;
constexpr std::size_t kMaxDims = 4;
constexpr std::int64_t kMaxDim = 8;

// A value for a hostile box: usually small, sometimes an extreme.
std::int64_t any_value(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange<int>(0, 15)) {
    case 0: return std::numeric_limits<std::int64_t>::max();
    case 1: return std::numeric_limits<std::int64_t>::min();
    case 2: return std::numeric_limits<std::int64_t>::max() - in.ConsumeIntegralInRange<int>(0, 9);
    default: return in.ConsumeIntegralInRange<std::int64_t>(-3, kMaxDim + 2);
  }
}

Shape any_shape(FuzzedDataProvider& in, std::size_t ndim) {
  if (in.ConsumeIntegralInRange<int>(0, 31) == 0) ndim = in.ConsumeIntegralInRange<std::size_t>(0, kMaxDims);
  Shape s(ndim);
  for (auto& v : s) v = any_value(in);
  return s;
}

// Chunks that tile `shape` exactly once: the whole box, cut a few times along
// random dimensions at random points (a cut at an edge leaves an empty chunk).
std::vector<ChunkStorageMetadata> tiling(FuzzedDataProvider& in, const Shape& shape) {
  std::vector<ChunkStorageMetadata> chunks{{Shape(shape.size(), 0), shape}};
  const int cuts = shape.empty() ? 0 : in.ConsumeIntegralInRange<int>(0, 10);
  for (int k = 0; k < cuts; ++k) {
    auto& c = chunks[in.ConsumeIntegralInRange<std::size_t>(0, chunks.size() - 1)];
    const std::size_t d = in.ConsumeIntegralInRange<std::size_t>(0, shape.size() - 1);
    const std::int64_t at = in.ConsumeIntegralInRange<std::int64_t>(0, c.sizes[d]);
    ChunkStorageMetadata rest = c;
    rest.offsets[d] += at;
    rest.sizes[d] -= at;
    c.sizes[d] = at;
    chunks.push_back(std::move(rest));
  }
  // Any order: swap a few.
  for (std::size_t i = 0; i + 1 < chunks.size() && in.ConsumeBool(); ++i) {
    std::swap(chunks[i], chunks[in.ConsumeIntegralInRange<std::size_t>(i, chunks.size() - 1)]);
  }
  return chunks;
}

i128 numel_of(const Shape& sizes) {
  i128 n = 1;
  for (std::int64_t v : sizes) n *= v;
  return n;
}

bool same_items(const std::vector<ReadItem>& a, const std::vector<ReadItem>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const ReadItem& x = a[i];
    const ReadItem& y = b[i];
    if (x.type != y.type || !fuzz::same(x.dest_index, y.dest_index) ||
        x.dest_offsets != y.dest_offsets || !fuzz::same(x.storage_index, y.storage_index) ||
        x.storage_offsets != y.storage_offsets || x.lengths != y.lengths) {
      return false;
    }
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  const std::string fqn = "model.layers.0.w";
  const std::size_t ndim = in.ConsumeIntegralInRange<std::size_t>(0, kMaxDims);
  Shape shape(ndim);
  for (auto& v : shape) v = in.ConsumeIntegralInRange<std::int64_t>(0, kMaxDim);

  TensorStorageMetadata stored;
  stored.properties.dtype = DType::F32;
  stored.size = shape;
  const bool tiles = in.ConsumeBool();
  if (tiles) {
    stored.chunks = tiling(in, shape);
  } else {
    const int count = in.ConsumeIntegralInRange<int>(0, 8);
    for (int i = 0; i < count; ++i) stored.chunks.push_back({any_shape(in, ndim), any_shape(in, ndim)});
  }

  ChunkStorageMetadata box;
  const bool box_in_range = in.ConsumeBool();
  if (box_in_range) {
    box.offsets.resize(ndim);
    box.sizes.resize(ndim);
    for (std::size_t d = 0; d < ndim; ++d) {
      box.offsets[d] = in.ConsumeIntegralInRange<std::int64_t>(0, shape[d]);
      box.sizes[d] = in.ConsumeIntegralInRange<std::int64_t>(0, shape[d] - box.offsets[d]);
    }
  } else {
    box.offsets = any_shape(in, ndim);
    box.sizes = any_shape(in, ndim);
  }
  const bool exact_tiling = !detail::find_tiling_fault(shape, stored.chunks).has_value();
  FUZZ_CHECK(!tiles || exact_tiling);  // the cuts above make a tiling
  const bool must_plan = exact_tiling && box_in_range;
  const MetadataIndex dest_index{fqn, box.offsets, std::nullopt};

  const auto items =
      fuzz::returns_or_error([&] { return read_items_for_box(fqn, stored, dest_index, box); });
  FUZZ_CHECK(items || !must_plan);
  if (items) {
    const std::size_t r = box.offsets.size();  // the rank every item has
    std::vector<bool> seen(stored.chunks.size(), false);
    for (const ReadItem& it : *items) {
      FUZZ_CHECK(it.type == LoadItemType::TENSOR);
      FUZZ_CHECK(fuzz::same(it.dest_index, dest_index));
      FUZZ_CHECK(it.storage_index.fqn == fqn && it.storage_index.index.has_value());
      const std::size_t c = *it.storage_index.index;
      FUZZ_CHECK(c < stored.chunks.size() && !seen[c]);
      FUZZ_CHECK(&it == &items->front() || *(&it - 1)->storage_index.index < c);
      seen[c] = true;
      const ChunkStorageMetadata& chunk = stored.chunks[c];
      FUZZ_CHECK(it.storage_index.offset == chunk.offsets);
      FUZZ_CHECK(it.dest_offsets.size() == r && it.storage_offsets.size() == r &&
                 it.lengths.size() == r && box.sizes.size() == r &&
                 chunk.offsets.size() == r);
      for (std::size_t d = 0; d < r; ++d) {
        const i128 lo = std::max<i128>(chunk.offsets[d], box.offsets[d]);
        const i128 hi = std::min<i128>(i128{chunk.offsets[d]} + chunk.sizes[d],
                                       i128{box.offsets[d]} + box.sizes[d]);
        // Exactly the intersection: inside the chunk and inside the box.
        FUZZ_CHECK(it.lengths[d] > 0 && i128{it.lengths[d]} == hi - lo);
        FUZZ_CHECK(i128{chunk.offsets[d]} + it.storage_offsets[d] == lo);
        FUZZ_CHECK(i128{box.offsets[d]} + it.dest_offsets[d] == lo);
        FUZZ_CHECK(it.storage_offsets[d] >= 0 &&
                   i128{it.storage_offsets[d]} + it.lengths[d] <= chunk.sizes[d]);
        FUZZ_CHECK(it.dest_offsets[d] >= 0 &&
                   i128{it.dest_offsets[d]} + it.lengths[d] <= box.sizes[d]);
      }
    }
    // Every chunk that meets the box has its item.
    for (std::size_t c = 0; c < stored.chunks.size(); ++c) {
      const ChunkStorageMetadata& chunk = stored.chunks[c];
      bool meets = true;
      for (std::size_t d = 0; d < r; ++d) {
        meets = meets && std::max<i128>(chunk.offsets[d], box.offsets[d]) <
                             std::min<i128>(i128{chunk.offsets[d]} + chunk.sizes[d],
                                            i128{box.offsets[d]} + box.sizes[d]);
      }
      FUZZ_CHECK(meets == seen[c]);
    }
    if (exact_tiling) {
      // Disjoint items (in global coordinates), covering the box's part of
      // the tensor exactly.
      i128 held = 0;
      for (std::size_t i = 0; i < items->size(); ++i) {
        const ReadItem& a = (*items)[i];
        held += numel_of(a.lengths);
        for (std::size_t j = 0; j < i; ++j) {
          const ReadItem& b = (*items)[j];
          bool overlap = true;
          for (std::size_t d = 0; d < r; ++d) {
            overlap = overlap && a.dest_offsets[d] < b.dest_offsets[d] + b.lengths[d] &&
                      b.dest_offsets[d] < a.dest_offsets[d] + a.lengths[d];
          }
          FUZZ_CHECK(!overlap || r == 0);
          FUZZ_CHECK(r != 0 || items->size() == 1);  // a 0-d tiling is one chunk
        }
      }
      if (box_in_range) FUZZ_CHECK(held == numel_of(box.sizes));
    }
  }

  // The default load planner, asked for the box as 1 to 3 shards or, when it
  // is the whole tensor, as a TensorView: the same items, once per request.
  if (box.offsets.size() == ndim && box.sizes.size() == ndim) {
    Metadata metadata;
    metadata.state_dict_metadata.emplace(fqn, stored);
    StateDict sd;
    const bool whole = box.offsets == Shape(ndim, 0) && box.sizes == shape;
    std::size_t requests = 1;  // how many times the planner is asked for the box
    if (whole && in.ConsumeBool()) {
      sd.add(fqn, TensorView{nullptr, DType::F32, shape});
    } else {
      ShardedTensor st;
      st.dtype = DType::F32;
      st.global_shape = shape;
      const int copies = in.ConsumeIntegralInRange<int>(1, 3);
      requests = static_cast<std::size_t>(copies);
      for (int k = 0; k < copies; ++k) {
        st.shards.push_back({TensorView{nullptr, DType::F32, box.sizes}, box.offsets});
      }
      sd.add(fqn, std::move(st));
    }
    DefaultLoadPlanner planner;
    planner.set_up_planner(sd, metadata, true);
    const auto plan = fuzz::returns_or_error([&] { return planner.create_local_plan(); });
    FUZZ_CHECK(plan || !must_plan);
    if (plan) {
      FUZZ_CHECK(items.has_value());
      std::vector<ReadItem> want;
      for (std::size_t k = 0; k < requests; ++k) {
        want.insert(want.end(), items->begin(), items->end());
      }
      FUZZ_CHECK(same_items(plan->items, want));
    }
  }
  return 0;
}
