#define BOOST_TEST_MODULE planner
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "ringckpt/coordinator.hpp"
#include "ringckpt/default_planner.hpp"
#include "ringckpt/error.hpp"

using namespace ringckpt;

namespace {

// A predicate for BOOST_CHECK_EXCEPTION: an Error with this code, naming
// `where`, whose message contains `text`.
auto error_is(ErrorCode code, std::string where, std::string text) {
  return [=](const Error& e) {
    const bool ok = e.code() == code && e.where() == where &&
                    e.message().find(text) != std::string::npos;
    if (!ok) BOOST_TEST_MESSAGE("unexpected error: " << e.what());
    return ok;
  };
}

ChunkStorageMetadata box(Shape offsets, Shape sizes) {
  return ChunkStorageMetadata{std::move(offsets), std::move(sizes)};
}

// Metadata holding one F32 tensor `fqn` of `shape` stored as `chunks`.
Metadata one_tensor(const std::string& fqn, Shape shape, std::vector<ChunkStorageMetadata> chunks) {
  Metadata md;
  md.state_dict_metadata[fqn] =
      TensorStorageMetadata{TensorProperties{DType::F32}, std::move(shape), std::move(chunks)};
  return md;
}

void validate(const Metadata& md) { validate_global_plan({}, md); }

// A row-major float buffer with element i holding `base + i`.
std::vector<float> iota_floats(std::size_t n, float base = 0) {
  std::vector<float> v(n);
  std::iota(v.begin(), v.end(), base);
  return v;
}

TensorView view_of(std::vector<float>& v, Shape shape) {
  return TensorView{v.data(), DType::F32, std::move(shape)};
}

// Row-major strides (in elements) of `shape`.
Shape strides_of(const Shape& shape) {
  Shape s(shape.size(), 1);
  for (std::size_t d = shape.size(); d-- > 1;) s[d - 1] = s[d] * shape[d];
  return s;
}

// Copies the box `lengths` at `src_off` of a row-major tensor of `src_shape`
// to `dst_off` of one of `dst_shape` (element size `esize`).
void copy_box(const std::byte* src, const Shape& src_shape, const Shape& src_off, std::byte* dst,
              const Shape& dst_shape, const Shape& dst_off, const Shape& lengths,
              std::size_t esize) {
  const std::size_t nd = lengths.size();
  if (numel(lengths) == 0) return;
  const Shape ss = strides_of(src_shape), ds = strides_of(dst_shape);
  Shape i(nd, 0);
  while (true) {
    std::int64_t s = 0, d = 0;
    for (std::size_t k = 0; k < nd; ++k) {
      s += (src_off[k] + i[k]) * ss[k];
      d += (dst_off[k] + i[k]) * ds[k];
    }
    std::memcpy(dst + d * esize, src + s * esize, esize);
    std::size_t k = nd;
    while (k > 0 && ++i[k - 1] == lengths[k - 1]) i[--k] = 0;
    if (k == 0) return;
  }
}

// Saves every rank's state dict through DefaultSavePlanner, keeping each
// item's bytes in memory, and returns the metadata.
struct MemoryCheckpoint {
  Metadata metadata;
  std::map<MetadataIndex, std::vector<std::byte>> blobs;
};

MemoryCheckpoint save_all(const std::vector<const StateDict*>& ranks) {
  std::vector<DefaultSavePlanner> planners(ranks.size());
  std::vector<SavePlan> local;
  for (std::size_t r = 0; r < ranks.size(); ++r) {
    planners[r].set_up_planner(*ranks[r], r == 0);
    local.push_back(planners[r].create_local_plan());
  }
  auto [plans, md] = planners[0].create_global_plan(std::move(local));
  MemoryCheckpoint ckpt{std::move(md), {}};
  for (std::size_t r = 0; r < ranks.size(); ++r) {
    SavePlan plan = planners[r].finish_plan(plans[r]);
    for (const auto& item : plan.items) {
      ItemData data = planners[r].resolve_data(item);
      BOOST_TEST(data.size() == item.nbytes());
      std::vector<std::byte> bytes(data.size());
      data.copy_to(0, bytes);
      ckpt.blobs[item.index] = std::move(bytes);
    }
  }
  return ckpt;
}

// Loads `sd` from `ckpt` through DefaultLoadPlanner, copying boxes by hand.
void load_all(StateDict& sd, const MemoryCheckpoint& ckpt) {
  DefaultLoadPlanner planner;
  planner.set_up_planner(sd, ckpt.metadata, true);
  LoadPlan plan = planner.finish_plan(planner.create_global_plan({planner.create_local_plan()})[0]);
  for (const auto& item : plan.items) {
    const auto& blob = ckpt.blobs.at(item.storage_index);
    if (item.type == LoadItemType::BYTE_IO) {
      planner.load_bytes(item, blob);
      continue;
    }
    const auto& tm = std::get<TensorStorageMetadata>(
        ckpt.metadata.state_dict_metadata.at(item.storage_index.fqn));
    const auto& chunk = tm.chunks.at(*item.storage_index.index);
    BOOST_REQUIRE(chunk.offsets == *item.storage_index.offset);
    TensorView dest = planner.resolve_tensor(item);
    copy_box(blob.data(), chunk.sizes, item.storage_offsets, static_cast<std::byte*>(dest.data),
             dest.shape, item.dest_offsets, item.lengths, dtype_size(dest.dtype));
    planner.commit_tensor(item, dest);
  }
}

}  // namespace

// ===========================================================================
BOOST_AUTO_TEST_SUITE(save_planner)

BOOST_AUTO_TEST_CASE(local_plan_items_follow_the_state_dict) {
  std::vector<float> w(6), s0(4), s1(4);
  float scalar = 1;
  StateDict sd;
  sd.add("w", TensorView{w.data(), DType::F32, {2, 3}});
  sd.add("s", ShardedTensor{DType::F32, {4, 2}, {Shard{view_of(s0, {2, 2}), {0, 0}},
                                                   Shard{view_of(s1, {2, 2}), {2, 0}}}});
  sd.add("step", bytes_of(std::int64_t{7}));
  sd.add("scalar", TensorView{&scalar, DType::F32, {}});

  DefaultSavePlanner planner;
  planner.set_up_planner(sd, true);
  const SavePlan plan = planner.create_local_plan();
  BOOST_REQUIRE_EQUAL(plan.items.size(), 5u);

  const WriteItem& t = plan.items[0];
  BOOST_TEST((t.type == WriteItemType::TENSOR));
  BOOST_TEST(t.index.fqn == "w");
  BOOST_TEST((t.index.offset == Shape{0, 0}));
  BOOST_TEST((t.tensor_data->chunk == box({0, 0}, {2, 3})));
  BOOST_TEST((t.tensor_data->size == Shape{2, 3}));
  BOOST_TEST((t.tensor_data->properties.dtype == DType::F32));
  BOOST_TEST(t.nbytes() == 24u);

  for (int i = 0; i < 2; ++i) {
    const WriteItem& s = plan.items[1 + i];
    BOOST_TEST((s.type == WriteItemType::SHARD));
    BOOST_TEST(s.index.fqn == "s");
    BOOST_TEST((s.index.offset == Shape{2 * i, 0}));
    BOOST_TEST((s.tensor_data->chunk == box({2 * i, 0}, {2, 2})));
    BOOST_TEST((s.tensor_data->size == Shape{4, 2}));
  }

  const WriteItem& b = plan.items[3];
  BOOST_TEST((b.type == WriteItemType::BYTE_IO));
  BOOST_TEST(b.index.fqn == "step");
  BOOST_TEST(!b.index.offset.has_value());
  BOOST_TEST(b.bytes_io_size == 8u);

  const WriteItem& z = plan.items[4];
  BOOST_TEST((z.index.offset == Shape{}));
  BOOST_TEST((z.tensor_data->chunk == box({}, {})));
  BOOST_TEST(z.nbytes() == 4u);
}

BOOST_AUTO_TEST_CASE(local_plan_rejects_bad_shards) {
  std::vector<float> a(4);
  std::vector<std::int32_t> b(4);
  StateDict wrong_dtype;
  wrong_dtype.add("s", ShardedTensor{DType::F32, {4, 2},
                                     {Shard{TensorView{b.data(), DType::I32, {2, 2}}, {0, 0}}}});
  StateDict outside;
  outside.add("s", ShardedTensor{DType::F32, {4, 2}, {Shard{view_of(a, {2, 2}), {3, 0}}}});

  DefaultSavePlanner planner;
  planner.set_up_planner(wrong_dtype, true);
  BOOST_CHECK_EXCEPTION(planner.create_local_plan(), Error,
                        error_is(ErrorCode::kInvalidArgument, "s", "I32"));
  planner.set_up_planner(outside, true);
  BOOST_CHECK_EXCEPTION(planner.create_local_plan(), Error,
                        error_is(ErrorCode::kInvalidArgument, "s", "outside the global shape"));
}

// resolve_data is what staging reads: it must be the caller's own memory.
class ExposedSavePlanner : public DefaultSavePlanner {
 public:
  using DefaultSavePlanner::lookup_bytes;
};

BOOST_AUTO_TEST_CASE(resolve_data_views_the_caller_memory) {
  std::vector<float> w = iota_floats(6), s0 = iota_floats(4, 10), s1 = iota_floats(4, 20);
  StateDict sd;
  sd.add("w", view_of(w, {2, 3}));
  sd.add("s", ShardedTensor{DType::F32, {4, 2}, {Shard{view_of(s0, {2, 2}), {0, 0}},
                                                   Shard{view_of(s1, {2, 2}), {2, 0}}}});
  sd.add("blob", bytes_of(std::string_view("hello")));

  ExposedSavePlanner planner;
  planner.set_up_planner(sd, true);
  const SavePlan plan = planner.create_local_plan();
  auto bytes = planner.lookup_bytes(plan.items[0].index);
  BOOST_TEST(static_cast<const void*>(bytes.data()) == static_cast<const void*>(w.data()));
  BOOST_TEST(bytes.size() == 24u);
  // The second shard, found by offsets even with a misleading hint.
  MetadataIndex idx = plan.items[2].index;
  idx.index = 0;
  BOOST_TEST(static_cast<const void*>(planner.lookup_bytes(idx).data()) ==
             static_cast<const void*>(s1.data()));
  idx.index = 1;
  BOOST_TEST(static_cast<const void*>(planner.lookup_bytes(idx).data()) ==
             static_cast<const void*>(s1.data()));

  ItemData blob = planner.resolve_data(plan.items[3]);
  std::string text(blob.size(), '\0');
  blob.copy_to(0, std::as_writable_bytes(std::span<char>(text.data(), text.size())));
  BOOST_TEST(text == "hello");

  BOOST_CHECK_EXCEPTION(planner.lookup_bytes(MetadataIndex{"nope", std::nullopt, std::nullopt}),
                        Error, error_is(ErrorCode::kNotFound, "nope", ""));
  BOOST_CHECK_EXCEPTION(planner.lookup_bytes(MetadataIndex{"s", Shape{1, 0}, std::nullopt}), Error,
                        error_is(ErrorCode::kNotFound, "s", "[1, 0]"));
}

// Three ranks: a row-sharded "w", a tensor "r" and a blob "step" replicated
// on every rank, and one unique tensor per rank.
BOOST_AUTO_TEST_CASE(global_plan_dedups_to_least_loaded_rank_and_builds_metadata) {
  std::vector<float> a(100), b(50), c(50), r(4), w0(8), w1(8), w2(8);
  std::vector<std::vector<float>*> w = {&w0, &w1, &w2};
  std::vector<StateDict> sds(3);
  for (int k = 0; k < 3; ++k) {
    if (k == 0) sds[k].add("a", view_of(a, {100}));  // 400 bytes
    if (k == 1) sds[k].add("b", view_of(b, {50}));   // 200 bytes
    if (k == 2) sds[k].add("c", view_of(c, {50}));   // 200 bytes
    sds[k].add("w", ShardedTensor{DType::F32, {6, 4}, {Shard{view_of(*w[k], {2, 4}), {2 * k, 0}}}});
    sds[k].add("r", view_of(r, {4}));  // 16 bytes on every rank
    sds[k].add("step", bytes_of(std::int64_t{3}));
  }
  std::vector<DefaultSavePlanner> planners(3);
  std::vector<SavePlan> local;
  for (int k = 0; k < 3; ++k) {
    planners[k].set_up_planner(sds[k], k == 0);
    local.push_back(planners[k].create_local_plan());
  }
  local[1].planner_data["note"] = "from rank 1";
  auto [plans, md] = planners[0].create_global_plan(std::move(local));
  BOOST_REQUIRE_EQUAL(plans.size(), 3u);

  auto names = [](const SavePlan& p) {
    std::vector<std::string> out;
    for (const auto& item : p.items) out.push_back(item.index.fqn);
    return out;
  };
  // Unique bytes: rank 0 432, rank 1 232, rank 2 232. "r" goes to the tie's
  // lower rank (1, now 248); "step" then to the least loaded (2).
  BOOST_TEST((names(plans[0]) == std::vector<std::string>{"a", "w"}));
  BOOST_TEST((names(plans[1]) == std::vector<std::string>{"b", "w", "r"}));
  BOOST_TEST((names(plans[2]) == std::vector<std::string>{"c", "w", "step"}));
  BOOST_TEST(plans[1].planner_data.at("note") == "from rank 1");
  BOOST_TEST(md.planner_data.at("note") == "from rank 1");

  BOOST_REQUIRE_EQUAL(md.state_dict_metadata.size(), 6u);
  BOOST_TEST(std::holds_alternative<BytesStorageMetadata>(md.state_dict_metadata.at("step")));
  const auto& wm = std::get<TensorStorageMetadata>(md.state_dict_metadata.at("w"));
  BOOST_TEST((wm.size == Shape{6, 4}));
  BOOST_TEST((wm.properties.dtype == DType::F32));
  BOOST_REQUIRE_EQUAL(wm.chunks.size(), 3u);
  for (int k = 0; k < 3; ++k) {
    BOOST_TEST((wm.chunks[k] == box({2 * k, 0}, {2, 4})));
    // Each item's hint is its chunk's position.
    BOOST_TEST(plans[k].items[1].index.index.value() == static_cast<std::size_t>(k));
  }
  const auto& rm = std::get<TensorStorageMetadata>(md.state_dict_metadata.at("r"));
  BOOST_REQUIRE_EQUAL(rm.chunks.size(), 1u);
  BOOST_TEST((rm.chunks[0] == box({0}, {4})));
}

BOOST_AUTO_TEST_CASE(global_plan_without_dedup_rejects_replicas_as_overlap) {
  std::vector<float> r(4);
  StateDict sd;
  sd.add("r", view_of(r, {4}));
  DefaultSavePlanner planner(DefaultSavePlanner::Options{.dedup_replicated = false});
  planner.set_up_planner(sd, true);
  std::vector<SavePlan> local = {planner.create_local_plan(), planner.create_local_plan()};
  BOOST_CHECK_EXCEPTION(planner.create_global_plan(local), Error,
                        error_is(ErrorCode::kInvalidArgument, "r", "chunks overlap"));
}

BOOST_AUTO_TEST_CASE(global_plan_rejects_ranks_that_disagree) {
  std::vector<float> f(4);
  std::vector<std::uint16_t> h(4);
  StateDict f32, bf16, bytes;
  f32.add("x", view_of(f, {4}));
  bf16.add("x", TensorView{h.data(), DType::BF16, {4}});
  bytes.add("x", bytes_of(std::int32_t{1}));
  auto plan_of = [](const StateDict& sd) {
    DefaultSavePlanner p;
    p.set_up_planner(sd, false);
    return p.create_local_plan();
  };
  DefaultSavePlanner planner;
  BOOST_CHECK_EXCEPTION(planner.create_global_plan({plan_of(f32), plan_of(bf16)}), Error,
                        error_is(ErrorCode::kInvalidArgument, "x", "[4] F32, rank 1 as [4] BF16"));
  BOOST_CHECK_EXCEPTION(planner.create_global_plan({plan_of(f32), plan_of(bytes)}), Error,
                        error_is(ErrorCode::kInvalidArgument, "x", "as bytes"));
}

// Shards in decreasing offset order across ranks (rank 4 repeating rank 2's),
// a shard replicated on several ranks, names in another order on one rank:
// each chunk is kept once, in plan order; a replica of another size is
// refused naming both ranks.
BOOST_AUTO_TEST_CASE(global_plan_groups_shards_in_any_order) {
  std::vector<float> buf(8);
  auto plans_of = [&](Shape third_v_sizes) {
    std::vector<SavePlan> local;
    for (std::int64_t k = 0; k < 5; ++k) {
      StateDict sd;
      const Shard w{view_of(buf, {2, 4}), {k < 4 ? 2 * (3 - k) : 2, 0}};
      const Shape v_sizes = k == 2 ? third_v_sizes : Shape{2, 4};
      const Shard v{TensorView{buf.data(), DType::F32, v_sizes}, {k % 2 == 0 ? 0 : 2, 0}};
      if (k == 1) sd.add("v", ShardedTensor{DType::F32, {4, 4}, {v}});
      sd.add("w", ShardedTensor{DType::F32, {8, 4}, {w}});
      if (k != 1) sd.add("v", ShardedTensor{DType::F32, {4, 4}, {v}});
      DefaultSavePlanner p;
      p.set_up_planner(sd, k == 0);
      local.push_back(p.create_local_plan());
    }
    return local;
  };
  DefaultSavePlanner planner;
  auto [plans, md] = planner.create_global_plan(plans_of({2, 4}));
  const auto& wm = std::get<TensorStorageMetadata>(md.state_dict_metadata.at("w"));
  const auto& vm = std::get<TensorStorageMetadata>(md.state_dict_metadata.at("v"));
  BOOST_REQUIRE_EQUAL(wm.chunks.size(), 4u);
  BOOST_REQUIRE_EQUAL(vm.chunks.size(), 2u);
  // Every chunk kept once, on a rank that holds it; each hint its chunk.
  std::map<std::string, std::vector<Shape>> kept;
  for (std::size_t r = 0; r < plans.size(); ++r) {
    for (const auto& item : plans[r].items) {
      const auto& tm = item.index.fqn == "w" ? wm : vm;
      BOOST_TEST((tm.chunks.at(item.index.index.value()).offsets == *item.index.offset));
      kept[item.index.fqn].push_back(*item.index.offset);
    }
  }
  std::sort(kept["w"].begin(), kept["w"].end());
  std::sort(kept["v"].begin(), kept["v"].end());
  BOOST_TEST((kept["w"] == std::vector<Shape>{{0, 0}, {2, 0}, {4, 0}, {6, 0}}));
  BOOST_TEST((kept["v"] == std::vector<Shape>{{0, 0}, {2, 0}}));
  // w's {2, 0}: ranks 2 and 4 hold it, the least loaded keeps it. Ranks 0
  // to 3 hold one w chunk of their own (v is placed after it, by first
  // appearance): rank 4's only item planned so far is nothing, so it keeps it.
  BOOST_TEST(plans[4].items.size() >= 1u);

  BOOST_CHECK_EXCEPTION(
      planner.create_global_plan(plans_of({1, 4})), Error,
      error_is(ErrorCode::kInvalidArgument, "v",
               "ranks 0 and 2 save different chunks at offsets [0, 0]: sizes [2, 4] and [1, 4]"));
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
BOOST_AUTO_TEST_SUITE(validation)

BOOST_AUTO_TEST_CASE(accepts_exact_tilings) {
  BOOST_CHECK_NO_THROW(validate(one_tensor(
      "grid", {4, 6}, {box({2, 3}, {2, 3}), box({0, 0}, {2, 3}), box({0, 3}, {2, 3}), box({2, 0}, {2, 3})})));
  BOOST_CHECK_NO_THROW(validate(one_tensor("rows", {5, 7}, {box({0, 0}, {2, 7}), box({2, 0}, {3, 7})})));
  BOOST_CHECK_NO_THROW(validate(one_tensor("whole", {5, 7}, {box({0, 0}, {5, 7})})));
  BOOST_CHECK_NO_THROW(validate(one_tensor("scalar", {}, {box({}, {})})));
  BOOST_CHECK_NO_THROW(validate(one_tensor("empty", {0, 4}, {})));
  BOOST_CHECK_NO_THROW(validate(one_tensor("empty1", {0, 4}, {box({0, 0}, {0, 4})})));
  // An empty chunk inside a tiling changes nothing.
  BOOST_CHECK_NO_THROW(validate(one_tensor(
      "with_empty", {4}, {box({0}, {2}), box({2}, {0}), box({2}, {2})})));
  // Irregular 2-D tiling (an L and its complement).
  BOOST_CHECK_NO_THROW(validate(one_tensor(
      "irregular", {3, 3}, {box({0, 0}, {1, 3}), box({1, 0}, {2, 1}), box({1, 1}, {2, 2})})));
  // A 3-D grid of 2 x 3 x 2 blocks.
  std::vector<ChunkStorageMetadata> blocks;
  for (std::int64_t i = 0; i < 2; ++i)
    for (std::int64_t j = 0; j < 3; ++j)
      for (std::int64_t k = 0; k < 2; ++k) blocks.push_back(box({i * 3, j * 2, k * 5}, {3, 2, 5}));
  BOOST_CHECK_NO_THROW(validate(one_tensor("cube", {6, 6, 10}, blocks)));
  blocks.back().sizes[2] = 4;
  BOOST_CHECK_EXCEPTION(validate(one_tensor("cube", {6, 6, 10}, blocks)), Error,
                        error_is(ErrorCode::kInvalidArgument, "cube", "chunks leave a gap"));
}

BOOST_AUTO_TEST_CASE(rejects_overlap_gap_and_out_of_bounds) {
  BOOST_CHECK_EXCEPTION(
      validate(one_tensor("w", {4, 4}, {box({0, 0}, {3, 4}), box({2, 0}, {2, 4})})), Error,
      error_is(ErrorCode::kInvalidArgument, "w", "chunks overlap (they hold 20 elements of 16)"));
  BOOST_CHECK_EXCEPTION(
      validate(one_tensor("w", {4, 4}, {box({0, 0}, {2, 4}), box({3, 0}, {1, 4})})), Error,
      error_is(ErrorCode::kInvalidArgument, "w", "chunks leave a gap"));
  // Same volume, misplaced: one cell twice, another never.
  BOOST_CHECK_EXCEPTION(
      validate(one_tensor("w", {2, 2},
                          {box({0, 0}, {1, 2}), box({1, 0}, {1, 1}), box({0, 0}, {1, 1})})),
      Error, error_is(ErrorCode::kInvalidArgument, "w", "chunks overlap and leave gaps"));
  // The message names a chunk at fault.
  BOOST_CHECK_EXCEPTION(
      validate(one_tensor("w", {4}, {box({0}, {2}), box({3}, {1})})), Error,
      error_is(ErrorCode::kInvalidArgument, "w", "see chunk offsets ["));
  BOOST_CHECK_EXCEPTION(validate(one_tensor("w", {4}, {})), Error,
                        error_is(ErrorCode::kInvalidArgument, "w", "chunks leave a gap"));
  BOOST_CHECK_EXCEPTION(
      validate(one_tensor("oob", {4, 4}, {box({0, 0}, {4, 4}), box({2, 2}, {2, 3})})), Error,
      error_is(ErrorCode::kInvalidArgument, "oob", "outside the global shape [4, 4]"));
  BOOST_CHECK_EXCEPTION(validate(one_tensor("neg", {4}, {box({-1}, {5})})), Error,
                        error_is(ErrorCode::kInvalidArgument, "neg", "outside"));
  BOOST_CHECK_EXCEPTION(validate(one_tensor("rank", {4}, {box({0, 0}, {4, 1})})), Error,
                        error_is(ErrorCode::kInvalidArgument, "rank", "dimensions"));
  BOOST_CHECK_EXCEPTION(validate(one_tensor("scalar", {}, {box({}, {}), box({}, {})})), Error,
                        error_is(ErrorCode::kInvalidArgument, "scalar", "chunks overlap"));
  BOOST_CHECK_EXCEPTION(validate(one_tensor("scalar", {}, {})), Error,
                        error_is(ErrorCode::kInvalidArgument, "scalar", "chunks leave a gap"));
}

BOOST_AUTO_TEST_CASE(validates_100k_chunks) {
  constexpr std::int64_t kChunks = 100'000, kLen = 3;
  std::vector<ChunkStorageMetadata> chunks;
  for (std::int64_t i = 0; i < kChunks; ++i) chunks.push_back(box({i * kLen}, {kLen}));
  std::shuffle(chunks.begin(), chunks.end(), std::mt19937(42));
  BOOST_CHECK_NO_THROW(validate(one_tensor("long", {kChunks * kLen}, chunks)));
  chunks.pop_back();
  BOOST_CHECK_EXCEPTION(validate(one_tensor("long", {kChunks * kLen}, chunks)), Error,
                        error_is(ErrorCode::kInvalidArgument, "long", "chunks leave a gap"));
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
BOOST_AUTO_TEST_SUITE(load_planner)

BOOST_AUTO_TEST_CASE(reshards_two_row_shards_into_three) {
  const TensorStorageMetadata stored{
      TensorProperties{DType::F32}, {6, 4}, {box({0, 0}, {3, 4}), box({3, 0}, {3, 4})}};
  // Destination shard 1 holds rows [2, 4): row 2 from chunk 0, row 3 from chunk 1.
  auto items = read_items_for_box("w", stored, MetadataIndex{"w", Shape{2, 0}, std::nullopt},
                                  box({2, 0}, {2, 4}));
  BOOST_REQUIRE_EQUAL(items.size(), 2u);
  BOOST_TEST((items[0].dest_index.offset == Shape{2, 0}));
  BOOST_TEST((items[0].dest_offsets == Shape{0, 0}));
  BOOST_TEST((items[0].storage_index.offset == Shape{0, 0}));
  BOOST_TEST(items[0].storage_index.index.value() == 0u);
  BOOST_TEST((items[0].storage_offsets == Shape{2, 0}));
  BOOST_TEST((items[0].lengths == Shape{1, 4}));
  BOOST_TEST((items[1].dest_offsets == Shape{1, 0}));
  BOOST_TEST((items[1].storage_index.offset == Shape{3, 0}));
  BOOST_TEST(items[1].storage_index.index.value() == 1u);
  BOOST_TEST((items[1].storage_offsets == Shape{0, 0}));
  BOOST_TEST((items[1].lengths == Shape{1, 4}));
  // Shards 0 and 2 each lie within one chunk.
  BOOST_TEST(read_items_for_box("w", stored, {"w", Shape{0, 0}, {}}, box({0, 0}, {2, 4})).size() == 1u);
  auto last = read_items_for_box("w", stored, {"w", Shape{4, 0}, {}}, box({4, 0}, {2, 4}));
  BOOST_REQUIRE_EQUAL(last.size(), 1u);
  BOOST_TEST((last[0].storage_offsets == Shape{1, 0}));
  // An empty box reads nothing.
  BOOST_TEST(read_items_for_box("w", stored, {"w", Shape{2, 0}, {}}, box({2, 0}, {0, 4})).empty());
}

BOOST_AUTO_TEST_CASE(reads_a_2x2_grid_into_a_whole_tensor) {
  const TensorStorageMetadata stored{
      TensorProperties{DType::F32},
      {4, 6},
      {box({0, 0}, {2, 3}), box({0, 3}, {2, 3}), box({2, 0}, {2, 3}), box({2, 3}, {2, 3})}};
  auto items = read_items_for_box("g", stored, {"g", Shape{0, 0}, {}}, box({0, 0}, {4, 6}));
  BOOST_REQUIRE_EQUAL(items.size(), 4u);
  for (std::size_t i = 0; i < 4; ++i) {
    BOOST_TEST((items[i].dest_offsets == stored.chunks[i].offsets));
    BOOST_TEST((items[i].storage_offsets == Shape{0, 0}));
    BOOST_TEST((items[i].lengths == Shape{2, 3}));
    BOOST_TEST(items[i].storage_index.index.value() == i);
  }
  const TensorStorageMetadata scalar{TensorProperties{DType::F32}, {}, {box({}, {})}};
  auto one = read_items_for_box("s", scalar, {"s", Shape{}, {}}, box({}, {}));
  BOOST_REQUIRE_EQUAL(one.size(), 1u);
  BOOST_TEST(one[0].lengths.empty());
}

// The save and load planners together, bytes moved by hand: 2 row shards
// saved by two ranks, loaded as 3 row shards on one rank, as a whole tensor,
// and as a 2x2 grid; a scalar and a blob ride along.
BOOST_AUTO_TEST_CASE(round_trip_reshards_by_intersection) {
  std::vector<float> s0 = iota_floats(12, 0), s1 = iota_floats(12, 12);
  float scalar0 = 3.5f;
  StateDict rank0, rank1;
  rank0.add("w", ShardedTensor{DType::F32, {6, 4}, {Shard{view_of(s0, {3, 4}), {0, 0}}}});
  rank0.add("scalar", TensorView{&scalar0, DType::F32, {}});
  rank0.add("blob", bytes_of(std::string_view("abc")));
  rank1.add("w", ShardedTensor{DType::F32, {6, 4}, {Shard{view_of(s1, {3, 4}), {3, 0}}}});
  rank1.add("scalar", TensorView{&scalar0, DType::F32, {}});
  rank1.add("blob", bytes_of(std::string_view("abc")));
  const MemoryCheckpoint ckpt = save_all({&rank0, &rank1});
  const std::vector<float> expect = iota_floats(24);

  std::vector<float> t0(8, -1), t1(8, -1), t2(8, -1);
  float scalar = 0;
  StateDict three;
  three.add("w", ShardedTensor{DType::F32, {6, 4}, {Shard{view_of(t0, {2, 4}), {0, 0}},
                                                      Shard{view_of(t1, {2, 4}), {2, 0}},
                                                      Shard{view_of(t2, {2, 4}), {4, 0}}}});
  three.add("scalar", TensorView{&scalar, DType::F32, {}});
  three.add("blob", Bytes{});
  load_all(three, ckpt);
  std::vector<float> got = t0;
  got.insert(got.end(), t1.begin(), t1.end());
  got.insert(got.end(), t2.begin(), t2.end());
  BOOST_TEST(got == expect, boost::test_tools::per_element());
  BOOST_TEST(scalar == 3.5f);
  BOOST_TEST((std::get<Bytes>(*three.find("blob")) == bytes_of(std::string_view("abc"))));

  std::vector<float> whole(24, -1);
  StateDict one;
  one.add("w", view_of(whole, {6, 4}));
  load_all(one, ckpt);
  BOOST_TEST(whole == expect, boost::test_tools::per_element());

  std::vector<std::vector<float>> g(4, std::vector<float>(6, -1));
  StateDict grid;
  grid.add("w", ShardedTensor{DType::F32, {6, 4}, {Shard{view_of(g[0], {3, 2}), {0, 0}},
                                                     Shard{view_of(g[1], {3, 2}), {0, 2}},
                                                     Shard{view_of(g[2], {3, 2}), {3, 0}},
                                                     Shard{view_of(g[3], {3, 2}), {3, 2}}}});
  load_all(grid, ckpt);
  for (int q = 0; q < 4; ++q) {
    for (int i = 0; i < 3; ++i) {
      for (int j = 0; j < 2; ++j) {
        const int row = (q / 2) * 3 + i, col = (q % 2) * 2 + j;
        BOOST_TEST(g[q][i * 2 + j] == expect[row * 4 + col]);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(strict_load_names_what_differs) {
  Metadata md;
  md.state_dict_metadata["w"] =
      TensorStorageMetadata{TensorProperties{DType::F32}, {2, 3}, {box({0, 0}, {2, 3})}};
  md.state_dict_metadata["step"] = BytesStorageMetadata{};
  std::vector<float> f(6);
  std::vector<std::uint16_t> h(6);

  auto plan_for = [&](StateDict& sd, bool partial) {
    DefaultLoadPlanner planner(DefaultLoadPlanner::Options{.allow_partial_load = partial});
    planner.set_up_planner(sd, md, true);
    return planner.create_local_plan();
  };

  StateDict missing;
  missing.add("w", view_of(f, {2, 3}));
  missing.add("extra", bytes_of(1));
  BOOST_CHECK_EXCEPTION(plan_for(missing, false), Error,
                        error_is(ErrorCode::kNotFound, "extra", "missing from the checkpoint"));
  const LoadPlan partial = plan_for(missing, true);
  BOOST_REQUIRE_EQUAL(partial.items.size(), 1u);
  BOOST_TEST(partial.items[0].dest_index.fqn == "w");

  StateDict shape;
  shape.add("w", view_of(f, {3, 2}));
  BOOST_CHECK_EXCEPTION(
      plan_for(shape, false), Error,
      error_is(ErrorCode::kMismatch, "w",
               "checkpoint holds shape [2, 3] F32, the state dict asks for [3, 2] F32"));

  StateDict dtype;
  dtype.add("w", TensorView{h.data(), DType::BF16, {2, 3}});
  DefaultLoadPlanner strict(DefaultLoadPlanner::Options{.strict_dtype = true});
  strict.set_up_planner(dtype, md, true);
  BOOST_CHECK_EXCEPTION(
      strict.create_local_plan(), Error,
      error_is(ErrorCode::kMismatch, "w",
               "checkpoint holds shape [2, 3] F32, the state dict asks for [2, 3] BF16 "
               "(strict_dtype: no cast)"));
  BOOST_CHECK_NO_THROW(plan_for(dtype, true));  // without strict_dtype: cast on load

  StateDict sharded_shape;
  sharded_shape.add("w", ShardedTensor{DType::F32, {2, 4}, {Shard{view_of(f, {2, 3}), {0, 0}}}});
  BOOST_CHECK_EXCEPTION(plan_for(sharded_shape, false), Error,
                        error_is(ErrorCode::kMismatch, "w", "asks for [2, 4] F32"));

  StateDict bytes_for_tensor;
  bytes_for_tensor.add("w", bytes_of(1));
  BOOST_CHECK_EXCEPTION(
      plan_for(bytes_for_tensor, false), Error,
      error_is(ErrorCode::kMismatch, "w", "checkpoint holds a tensor, the state dict asks for bytes"));
  StateDict tensor_for_bytes;
  tensor_for_bytes.add("step", view_of(f, {6}));
  BOOST_CHECK_EXCEPTION(
      plan_for(tensor_for_bytes, false), Error,
      error_is(ErrorCode::kMismatch, "step", "checkpoint holds bytes, the state dict asks for a tensor"));

  StateDict good;
  good.add("step", Bytes{});
  good.add("w", view_of(f, {2, 3}));
  const LoadPlan plan = plan_for(good, false);
  BOOST_REQUIRE_EQUAL(plan.items.size(), 2u);
  BOOST_TEST((plan.items[0].type == LoadItemType::BYTE_IO));
  BOOST_TEST(plan.items[0].storage_index.fqn == "step");
  BOOST_TEST(!plan.items[0].storage_index.offset.has_value());
  BOOST_TEST((plan.items[1].type == LoadItemType::TENSOR));
  BOOST_TEST((plan.items[1].dest_index.offset == Shape{0, 0}));
  BOOST_TEST((plan.items[1].lengths == Shape{2, 3}));
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
BOOST_AUTO_TEST_SUITE(coordinators)

BOOST_AUTO_TEST_CASE(single_process_is_the_identity) {
  SingleProcess one;
  BOOST_TEST(one.rank() == 0);
  BOOST_TEST(one.world_size() == 1);
  BOOST_TEST(one.is_coordinator());
  BOOST_TEST((one.gather("x") == std::vector<std::string>{"x"}));
  BOOST_TEST(one.scatter({"y"}) == "y");
  BOOST_TEST(one.broadcast("z") == "z");
}

BOOST_AUTO_TEST_CASE(thread_group_collectives_repeat) {
  constexpr int kRanks = 4, kRounds = 100;
  ThreadGroup group(kRanks);
  BOOST_TEST(group.world_size() == kRanks);
  // Each rank records failures as text; checked on the main thread, since
  // Boost.Test assertions are not thread-safe.
  std::vector<std::vector<std::string>> failures(kRanks);
  std::vector<std::thread> threads;
  for (int r = 0; r < kRanks; ++r) {
    threads.emplace_back([&, r] {
      Coordinator& c = group.member(r);
      auto fail = [&](std::string what) { failures[r].push_back(std::move(what)); };
      if (c.rank() != r || c.world_size() != kRanks) fail("identity");
      for (int i = 0; i < kRounds; ++i) {
        const std::string tag = std::to_string(i);
        auto all = c.gather("g" + std::to_string(r) + "-" + tag);
        if (r == 0) {
          if (all.size() != kRanks) fail("gather size " + tag);
          for (int k = 0; k < kRanks && k < static_cast<int>(all.size()); ++k) {
            if (all[k] != "g" + std::to_string(k) + "-" + tag) fail("gather " + all[k]);
          }
        } else if (!all.empty()) {
          fail("gather to non-root " + tag);
        }
        std::vector<std::string> out;
        if (r == 0) {
          for (int k = 0; k < kRanks; ++k) out.push_back("s" + std::to_string(k) + "-" + tag);
        }
        if (c.scatter(std::move(out)) != "s" + std::to_string(r) + "-" + tag) fail("scatter " + tag);
        if (c.broadcast(r == 0 ? "b-" + tag : "ignored") != "b-" + tag) fail("broadcast " + tag);
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < kRanks; ++r) BOOST_TEST(failures[r].empty(), "rank " << r << ": " << failures[r].size() << " failures");
}

BOOST_AUTO_TEST_CASE(thread_group_misuse_fails_every_rank_and_recovers) {
  constexpr int kRanks = 3;
  ThreadGroup group(kRanks);
  std::vector<int> errors(kRanks, 0);
  std::vector<std::string> after(kRanks);
  std::vector<std::thread> threads;
  for (int r = 0; r < kRanks; ++r) {
    threads.emplace_back([&, r] {
      Coordinator& c = group.member(r);
      try {  // rank 0 scatters too few payloads
        c.scatter(r == 0 ? std::vector<std::string>{"only one"} : std::vector<std::string>{});
      } catch (const Error&) {
        ++errors[r];
      }
      try {  // ranks disagree on the collective
        if (r == 0) c.gather("x"); else c.broadcast("y");
      } catch (const Error&) {
        ++errors[r];
      }
      after[r] = c.broadcast(r == 0 ? "ok" : "");
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < kRanks; ++r) {
    BOOST_TEST(errors[r] == 2);
    BOOST_TEST(after[r] == "ok");
  }
  BOOST_CHECK_EXCEPTION(group.member(kRanks), Error,
                        error_is(ErrorCode::kInvalidArgument, "ThreadGroup", "outside"));
  BOOST_CHECK_THROW(ThreadGroup(0), Error);
}

BOOST_AUTO_TEST_SUITE_END()
