// test_reshard_index.cpp — the chunk index of the load planner
// (lib/plan/chunk_index): read_items_for_box and DefaultLoadPlanner plan
// exactly the items that trying every (chunk, box) pair gives, in increasing
// chunk order, for row, column and block tilings, uneven ones, and chunk sets
// that are no tiling at all (overlapping, empty, negative sizes).
#define BOOST_TEST_MODULE reshard_index
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "plan/chunk_index.hpp"
#include "ringckpt/default_planner.hpp"
#include "ringckpt/error.hpp"

using namespace ringckpt;

namespace {

const std::string kFqn = "model.layers.3.attention.wq.weight";

// The reference: every chunk tried against the box, in stored order.
std::vector<ReadItem> all_pairs(const TensorStorageMetadata& stored,
                                const MetadataIndex& dest_index, const ChunkStorageMetadata& box) {
  std::vector<ReadItem> items;
  const std::size_t ndim = box.offsets.size();
  for (std::size_t c = 0; c < stored.chunks.size(); ++c) {
    const auto& chunk = stored.chunks[c];
    ReadItem item;
    item.dest_index = dest_index;
    item.storage_index = MetadataIndex{kFqn, chunk.offsets, c};
    bool meets = true;
    for (std::size_t d = 0; d < ndim; ++d) {
      const std::int64_t lo = std::max(chunk.offsets[d], box.offsets[d]);
      const std::int64_t hi =
          std::min(chunk.offsets[d] + chunk.sizes[d], box.offsets[d] + box.sizes[d]);
      meets = meets && lo < hi;
      item.dest_offsets.push_back(lo - box.offsets[d]);
      item.storage_offsets.push_back(lo - chunk.offsets[d]);
      item.lengths.push_back(hi - lo);
    }
    if (meets) items.push_back(std::move(item));
  }
  return items;
}

// Whole ReadItems compared field by field (MetadataIndex's == ignores index).
void check_same(const std::vector<ReadItem>& got, const std::vector<ReadItem>& want,
                const std::string& what) {
  BOOST_TEST_CONTEXT(what) {
    BOOST_TEST_REQUIRE(got.size() == want.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      BOOST_TEST_CONTEXT("item " << i) {
        BOOST_TEST((got[i].type == want[i].type));
        BOOST_TEST(got[i].dest_index.fqn == want[i].dest_index.fqn);
        BOOST_TEST((got[i].dest_index.offset == want[i].dest_index.offset));
        BOOST_TEST((got[i].dest_index.index == want[i].dest_index.index));
        BOOST_TEST(got[i].storage_index.fqn == want[i].storage_index.fqn);
        BOOST_TEST((got[i].storage_index.offset == want[i].storage_index.offset));
        BOOST_TEST((got[i].storage_index.index == want[i].storage_index.index));
        BOOST_TEST(got[i].dest_offsets == want[i].dest_offsets, boost::test_tools::per_element());
        BOOST_TEST(got[i].storage_offsets == want[i].storage_offsets,
                   boost::test_tools::per_element());
        BOOST_TEST(got[i].lengths == want[i].lengths, boost::test_tools::per_element());
      }
    }
  }
}

std::int64_t uniform(std::mt19937_64& rng, std::int64_t lo, std::int64_t hi) {
  return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng);
}

// Cuts of [0, n) into `parts` pieces: even, or (uneven) at random points,
// empty pieces allowed.
std::vector<std::int64_t> cuts(std::mt19937_64& rng, std::int64_t n, std::int64_t parts,
                               bool uneven) {
  std::vector<std::int64_t> at{0};
  for (std::int64_t p = 1; p < parts; ++p) {
    at.push_back(uneven ? uniform(rng, 0, n) : n * p / parts);
  }
  at.push_back(n);
  std::ranges::sort(at);
  return at;
}

// A grid tiling of `shape`: dims[d] pieces along dimension d.
std::vector<ChunkStorageMetadata> grid(std::mt19937_64& rng, const Shape& shape,
                                       const std::vector<std::int64_t>& dims, bool uneven) {
  std::vector<std::vector<std::int64_t>> at;
  for (std::size_t d = 0; d < shape.size(); ++d) at.push_back(cuts(rng, shape[d], dims[d], uneven));
  std::vector<ChunkStorageMetadata> chunks{{{}, {}}};
  for (std::size_t d = 0; d < shape.size(); ++d) {
    std::vector<ChunkStorageMetadata> next;
    for (const auto& c : chunks) {
      for (std::size_t k = 0; k + 1 < at[d].size(); ++k) {
        auto n = c;
        n.offsets.push_back(at[d][k]);
        n.sizes.push_back(at[d][k + 1] - at[d][k]);
        next.push_back(std::move(n));
      }
    }
    chunks = std::move(next);
  }
  return chunks;
}

// A tiling by random guillotine cuts: chunks of very different sizes.
std::vector<ChunkStorageMetadata> guillotine(std::mt19937_64& rng, const Shape& shape, int count) {
  std::vector<ChunkStorageMetadata> chunks{{Shape(shape.size(), 0), shape}};
  for (int k = 0; k < count; ++k) {
    auto& c = chunks[static_cast<std::size_t>(uniform(rng, 0, std::int64_t(chunks.size()) - 1))];
    const auto d = static_cast<std::size_t>(uniform(rng, 0, std::int64_t(shape.size()) - 1));
    const std::int64_t at = uniform(rng, 0, c.sizes[d]);
    auto rest = c;
    rest.offsets[d] += at;
    rest.sizes[d] -= at;
    c.sizes[d] = at;
    chunks.push_back(std::move(rest));
  }
  return chunks;
}

// Chunks that are no tiling: boxes anywhere, overlapping, some empty or of
// negative size, some outside the shape.
std::vector<ChunkStorageMetadata> arbitrary(std::mt19937_64& rng, const Shape& shape, int count) {
  std::vector<ChunkStorageMetadata> chunks;
  for (int k = 0; k < count; ++k) {
    ChunkStorageMetadata c;
    for (std::int64_t n : shape) {
      c.offsets.push_back(uniform(rng, -2, n + 2));
      c.sizes.push_back(uniform(rng, -1, n));
    }
    chunks.push_back(std::move(c));
  }
  return chunks;
}

ChunkStorageMetadata random_box(std::mt19937_64& rng, const Shape& shape) {
  ChunkStorageMetadata box;
  for (std::int64_t n : shape) {
    box.offsets.push_back(uniform(rng, 0, n));
    box.sizes.push_back(uniform(rng, 0, n - box.offsets.back()));
  }
  return box;
}

// Checks read_items_for_box, and one ChunkIndex asked for every box (a scan
// the first time, the sorted index after), against all_pairs for 20 random
// boxes of the chunk set, shuffled half the time so that stored order is not
// sorted order.
void check_chunk_set(std::mt19937_64& rng, const Shape& shape,
                     std::vector<ChunkStorageMetadata> chunks, const std::string& what) {
  if (uniform(rng, 0, 1) == 1) std::ranges::shuffle(chunks, rng);
  TensorStorageMetadata stored;
  stored.size = shape;
  stored.chunks = std::move(chunks);
  detail::ChunkIndex index(kFqn, stored, shape.size());  // scans once, then sorted
  for (int b = 0; b < 20; ++b) {
    const auto box = random_box(rng, shape);
    const MetadataIndex dest{kFqn, box.offsets, std::nullopt};
    const auto want = all_pairs(stored, dest, box);
    check_same(read_items_for_box(kFqn, stored, dest, box), want,
               what + " box " + std::to_string(b));
    std::vector<std::size_t> found, want_positions;
    index.find_intersecting(box.offsets, box.sizes, found);
    for (const ReadItem& item : want) want_positions.push_back(*item.storage_index.index);
    BOOST_TEST(found == want_positions, what << " box " << b << ", index query " << b);
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(index_finds_what_all_pairs_finds_over_random_tilings) {
  std::mt19937_64 rng(20261201);
  for (int round = 0; round < 60; ++round) {
    const Shape shape2{uniform(rng, 1, 40), uniform(rng, 1, 40)};
    const auto r = uniform(rng, 1, 12);
    const auto c = uniform(rng, 1, 12);
    const std::string at = " round " + std::to_string(round);
    for (bool uneven : {false, true}) {
      const std::string kind = uneven ? " uneven" : " even";
      check_chunk_set(rng, shape2, grid(rng, shape2, {r, 1}, uneven), "row" + kind + at);
      check_chunk_set(rng, shape2, grid(rng, shape2, {1, c}, uneven), "column" + kind + at);
      check_chunk_set(rng, shape2, grid(rng, shape2, {r, c}, uneven), "block" + kind + at);
    }
    check_chunk_set(rng, shape2, guillotine(rng, shape2, 15), "guillotine" + at);
    check_chunk_set(rng, shape2, arbitrary(rng, shape2, 12), "arbitrary" + at);
    const Shape shape3{uniform(rng, 1, 9), uniform(rng, 1, 9), uniform(rng, 1, 9)};
    check_chunk_set(rng, shape3, grid(rng, shape3, {2, 3, 2}, true), "3-d block" + at);
    check_chunk_set(rng, shape3, guillotine(rng, shape3, 10), "3-d guillotine" + at);
    check_chunk_set(rng, shape3, arbitrary(rng, shape3, 10), "3-d arbitrary" + at);
    const Shape shape1{uniform(rng, 1, 60)};
    check_chunk_set(rng, shape1, grid(rng, shape1, {7}, true), "1-d" + at);
  }
}

BOOST_AUTO_TEST_CASE(planner_plans_every_shard_from_one_index_as_all_pairs_does) {
  // Saved as 6 x 5 uneven blocks, loaded as 4 uneven row shards and, in a
  // second tensor, as 3 column shards: the plan is the shards' items in
  // shard order, each shard's in chunk order.
  std::mt19937_64 rng(7);
  const Shape shape{37, 23};
  Metadata metadata;
  TensorStorageMetadata stored;
  stored.properties.dtype = DType::F32;
  stored.size = shape;
  stored.chunks = grid(rng, shape, {6, 5}, true);
  std::ranges::shuffle(stored.chunks, rng);
  metadata.state_dict_metadata.emplace(kFqn, stored);
  metadata.state_dict_metadata.emplace("b", stored);
  StateDict sd;
  for (const auto& [name, dims] : {std::pair{kFqn, std::vector<std::int64_t>{4, 1}},
                                   std::pair{std::string("b"), std::vector<std::int64_t>{1, 3}}}) {
    ShardedTensor st;
    st.global_shape = shape;
    for (const auto& box : grid(rng, shape, dims, true)) {
      st.shards.push_back({TensorView{nullptr, DType::F32, box.sizes}, box.offsets});
    }
    sd.add(name, std::move(st));
  }
  DefaultLoadPlanner planner;
  planner.set_up_planner(sd, metadata, true);
  const LoadPlan plan = planner.create_local_plan();
  std::vector<ReadItem> want;
  for (const auto& entry : sd) {
    for (const auto& shard : std::get<ShardedTensor>(entry.value).shards) {
      const ChunkStorageMetadata box{shard.offsets, shard.local.shape};
      const MetadataIndex dest{entry.fqn, box.offsets, std::nullopt};
      for (auto item : all_pairs(stored, dest, box)) {
        item.storage_index.fqn = entry.fqn;
        want.push_back(std::move(item));
      }
    }
  }
  check_same(plan.items, want, "plan");
}

BOOST_AUTO_TEST_CASE(zero_dimensional_chunks_all_meet_a_zero_dimensional_box) {
  TensorStorageMetadata stored;
  stored.chunks = {{{}, {}}, {{}, {}}};
  const ChunkStorageMetadata box{{}, {}};
  const MetadataIndex dest{kFqn, Shape{}, std::nullopt};
  check_same(read_items_for_box(kFqn, stored, dest, box), all_pairs(stored, dest, box), "0-d");
}

BOOST_AUTO_TEST_CASE(bad_chunks_and_boxes_are_errors_naming_tensor_and_chunk) {
  auto message_of = [](auto&& fn) -> std::string {
    try {
      fn();
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  TensorStorageMetadata stored;
  stored.size = {4, 4};
  stored.chunks = {{{0, 0}, {2, 4}}, {{2, 0}, {2, 4}}};
  const ChunkStorageMetadata box{{0, 0}, {4, 4}};
  const MetadataIndex dest{kFqn, box.offsets, std::nullopt};

  auto wrong_rank = stored;
  wrong_rank.chunks[1] = {{2}, {2}};
  const std::string rank = message_of([&] { read_items_for_box(kFqn, wrong_rank, dest, box); });
  BOOST_TEST(rank.find(kFqn) != std::string::npos);
  BOOST_TEST(rank.find("does not have the 2 dimensions") != std::string::npos, rank);

  auto overflowing = stored;
  overflowing.chunks[0] = {{0, INT64_MAX}, {2, 1}};
  const std::string over = message_of([&] { read_items_for_box(kFqn, overflowing, dest, box); });
  BOOST_TEST(over.find(kFqn) != std::string::npos);
  BOOST_TEST(over.find("stored chunk") != std::string::npos, over);
  BOOST_TEST(over.find("overflows") != std::string::npos, over);

  const ChunkStorageMetadata far{{INT64_MAX, 0}, {1, 1}};
  const std::string dest_over = message_of([&] { read_items_for_box(kFqn, stored, dest, far); });
  BOOST_TEST(dest_over.find("destination box") != std::string::npos, dest_over);
  BOOST_TEST(dest_over.find("overflows") != std::string::npos, dest_over);

  const ChunkStorageMetadata ragged{{0, 0}, {4}};
  const std::string mixed = message_of([&] { read_items_for_box(kFqn, stored, dest, ragged); });
  BOOST_TEST(mixed.find("destination box") != std::string::npos, mixed);
  BOOST_TEST(mixed.find("dimensions") != std::string::npos, mixed);
}

BOOST_AUTO_TEST_CASE(index_answers_many_queries_in_chunk_order) {
  // Built once, queried for every row band, then for boxes that cross bands:
  // always increasing positions, each chunk at most once.
  TensorStorageMetadata stored;
  stored.size = {64, 8};
  for (std::int64_t s = 63; s >= 0; --s) stored.chunks.push_back({{s, 0}, {1, 8}});  // reversed
  detail::ChunkIndex index(kFqn, stored, 2);
  std::vector<std::size_t> found;
  for (std::int64_t row = 0; row < 64; ++row) {
    found.clear();
    index.find_intersecting({row, 3}, {1, 2}, found);
    BOOST_TEST_REQUIRE(found.size() == 1u);
    BOOST_TEST(found[0] == static_cast<std::size_t>(63 - row));
  }
  found.clear();
  index.find_intersecting({10, 0}, {5, 8}, found);
  BOOST_TEST(found == (std::vector<std::size_t>{49, 50, 51, 52, 53}),
             boost::test_tools::per_element());
  found.clear();
  index.find_intersecting({10, 8}, {5, 1}, found);  // past the last column
  BOOST_TEST(found.empty());
}

BOOST_AUTO_TEST_CASE(planner_keeps_entry_order_across_bytes_whole_tensors_and_shards) {
  // Bytes, a whole tensor, a sharded tensor with no local shard, a sharded
  // one and bytes again: the plan holds their items in that order, each
  // box's in chunk order, in a vector reserved to exactly their count.
  std::mt19937_64 rng(11);
  const Shape shape{9, 6};
  TensorStorageMetadata stored;
  stored.properties.dtype = DType::F32;
  stored.size = shape;
  stored.chunks = grid(rng, shape, {3, 2}, true);
  Metadata metadata;
  for (const char* name : {"w", "empty", "s"}) metadata.state_dict_metadata.emplace(name, stored);
  metadata.state_dict_metadata.emplace("step", BytesStorageMetadata{});
  metadata.state_dict_metadata.emplace("rng", BytesStorageMetadata{});
  StateDict sd;
  sd.add("step", bytes_of(std::int64_t{3}));
  sd.add("w", TensorView{nullptr, DType::F32, shape});
  ShardedTensor empty;
  empty.global_shape = shape;
  sd.add("empty", empty);
  ShardedTensor st;
  st.global_shape = shape;
  const auto shards = grid(rng, shape, {2, 1}, true);
  for (const auto& box : shards) {
    st.shards.push_back({TensorView{nullptr, DType::F32, box.sizes}, box.offsets});
  }
  sd.add("s", st);
  sd.add("rng", bytes_of(std::int64_t{4}));

  DefaultLoadPlanner planner;
  planner.set_up_planner(sd, metadata, true);
  const LoadPlan plan = planner.create_local_plan();

  auto with_fqn = [](std::vector<ReadItem> items, const std::string& fqn) {
    for (auto& item : items) item.storage_index.fqn = fqn;
    return items;
  };
  std::vector<ReadItem> want;
  ReadItem bytes;
  bytes.type = LoadItemType::BYTE_IO;
  bytes.dest_index = bytes.storage_index = MetadataIndex{"step", std::nullopt, std::nullopt};
  want.push_back(bytes);
  const ChunkStorageMetadata whole{Shape(2, 0), shape};
  for (auto& item : with_fqn(all_pairs(stored, MetadataIndex{"w", whole.offsets, std::nullopt},
                                       whole), "w")) {
    want.push_back(std::move(item));
  }
  for (const auto& box : shards) {
    for (auto& item : with_fqn(all_pairs(stored, MetadataIndex{"s", box.offsets, std::nullopt},
                                         box), "s")) {
      want.push_back(std::move(item));
    }
  }
  bytes.dest_index = bytes.storage_index = MetadataIndex{"rng", std::nullopt, std::nullopt};
  want.push_back(bytes);
  check_same(plan.items, want, "mixed plan");
  BOOST_TEST(plan.items.capacity() == plan.items.size());
}

BOOST_AUTO_TEST_CASE(shapes_past_the_inline_capacity_plan_as_all_pairs_does) {
  // Five and six dimensions: every Shape of the plan is on the heap.
  static_assert(Shape::kInline < 5);
  std::mt19937_64 rng(13);
  const Shape shape5{5, 4, 3, 4, 6};
  check_chunk_set(rng, shape5, grid(rng, shape5, {2, 2, 1, 2, 3}, true), "5-d grid");
  const Shape shape6{3, 2, 4, 2, 3, 5};
  check_chunk_set(rng, shape6, guillotine(rng, shape6, 30), "6-d guillotine");
}

BOOST_AUTO_TEST_CASE(shape_behaves_as_a_vector_in_place_and_on_the_heap) {
  Shape s{1, 2, 3};
  BOOST_TEST(s.size() == 3u);
  BOOST_TEST(s.capacity() == Shape::kInline);
  const Shape copy_inline = s;
  for (std::int64_t v = 4; v <= 9; ++v) s.push_back(v);  // moves to the heap
  BOOST_TEST(s.capacity() > Shape::kInline);
  const std::vector<std::int64_t> as_vector = s;
  BOOST_TEST(as_vector == (std::vector<std::int64_t>{1, 2, 3, 4, 5, 6, 7, 8, 9}),
             boost::test_tools::per_element());
  BOOST_TEST((copy_inline == Shape{1, 2, 3}));  // the copy kept its values
  Shape heap_copy = s;
  heap_copy[0] = 100;
  BOOST_TEST(s[0] == 1);  // copies are independent
  Shape moved = std::move(heap_copy);
  BOOST_TEST(moved.size() == 9u);
  BOOST_TEST(moved[0] == 100);
  BOOST_TEST(heap_copy.empty());
  s.insert(s.begin() + 1, {-1, -2});
  BOOST_TEST(s == (Shape{1, -1, -2, 2, 3, 4, 5, 6, 7, 8, 9}), boost::test_tools::per_element());
  s.erase(s.begin(), s.begin() + 3);
  BOOST_TEST(s == (Shape{2, 3, 4, 5, 6, 7, 8, 9}), boost::test_tools::per_element());
  s.resize(2);
  BOOST_TEST((s == Shape{2, 3}));
  s.resize(4, 7);
  BOOST_TEST((s == Shape{2, 3, 7, 7}));
  BOOST_TEST((Shape(3, 5) == Shape{5, 5, 5}));
  BOOST_TEST((Shape(2) == Shape{0, 0}));
  BOOST_TEST((Shape{1, 2} < Shape{1, 3}));
  BOOST_TEST((Shape{1} < Shape{1, 0}));
  BOOST_TEST(!(Shape{2} < Shape{1, 9}));
  BOOST_TEST((Shape(std::vector<std::int64_t>{4, 5}) == Shape{4, 5}));
}

BOOST_AUTO_TEST_CASE(an_fqn_is_one_shared_string_that_compares_as_its_text) {
  const Fqn a("model.layers.0.attention.wq.weight");
  const Fqn copy = a;
  const Fqn b(std::string("model.layers.0.attention.wq.weight"));
  BOOST_TEST(Fqn::same(a, copy));   // a copy shares the string
  BOOST_TEST(!Fqn::same(a, b));     // equal text made twice does not
  BOOST_TEST((a == b));
  BOOST_TEST((a == "model.layers.0.attention.wq.weight"));
  BOOST_TEST((a == std::string("model.layers.0.attention.wq.weight")));
  BOOST_TEST((std::string_view("model.layers.0.attention.wq.weight") == a));
  BOOST_TEST((a < Fqn("model.layers.0.attention.wr")));
  BOOST_TEST((Fqn("b") > "a"));
  BOOST_TEST(std::hash<Fqn>{}(a) == std::hash<std::string_view>{}(a.str()));
  const Fqn empty;
  BOOST_TEST(empty.empty());
  BOOST_TEST((empty == Fqn("")));
  BOOST_TEST(std::string_view(empty).size() == 0u);
  const std::string& as_string = a;
  BOOST_TEST(as_string.size() == a.size());
}

BOOST_AUTO_TEST_CASE(a_plans_items_share_their_tensors_name) {
  // 2 tensors saved as 8 row shards, loaded as 2: every item of a tensor,
  // in both its indexes, holds the one string of that tensor's name.
  Metadata m;
  StateDict sd;
  for (const char* name : {"layers.0.w", "layers.1.w"}) {
    TensorStorageMetadata tm;
    tm.size = {16, 4};
    for (std::int64_t r = 0; r < 8; ++r) tm.chunks.push_back({{2 * r, 0}, {2, 4}});
    m.state_dict_metadata.emplace(name, tm);
    ShardedTensor st;
    st.global_shape = {16, 4};
    for (std::int64_t r = 0; r < 2; ++r) {
      st.shards.push_back({TensorView{nullptr, DType::F32, {8, 4}}, {8 * r, 0}});
    }
    sd.add(name, std::move(st));
  }
  DefaultLoadPlanner planner;
  planner.set_up_planner(sd, m, true);
  const LoadPlan plan = planner.create_local_plan();
  BOOST_TEST_REQUIRE(plan.items.size() == 16u);
  for (const ReadItem& item : plan.items) {
    const ReadItem& first = item.dest_index.fqn == "layers.0.w" ? plan.items[0] : plan.items[8];
    BOOST_TEST(Fqn::same(item.dest_index.fqn, first.dest_index.fqn));
    BOOST_TEST(Fqn::same(item.storage_index.fqn, first.dest_index.fqn));
  }
  BOOST_TEST(!Fqn::same(plan.items[0].dest_index.fqn, plan.items[8].dest_index.fqn));
}
