#define BOOST_TEST_MODULE tensor_geometry
#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <limits>
#include <vector>

#include "format/tensor_geometry.hpp"

using namespace ringckpt;
using namespace ringckpt::detail;

namespace {

constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();

ChunkStorageMetadata box(Shape offsets, Shape sizes) { return {std::move(offsets), std::move(sizes)}; }

TilingFault::Kind kind_of(const Shape& global, const std::vector<ChunkStorageMetadata>& chunks) {
  const auto fault = find_tiling_fault(global, chunks);
  BOOST_TEST_REQUIRE(fault.has_value());
  return fault->kind;
}

}  // namespace

BOOST_AUTO_TEST_CASE(shape_bytes_counts_and_refuses_overflow) {
  BOOST_TEST(shape_bytes(Shape{4, 6}, 2).value() == 48u);
  BOOST_TEST(shape_bytes(Shape{}, 8).value() == 8u);
  BOOST_TEST(shape_bytes(Shape{0, kMax}, 4).value() == 0u);
  BOOST_TEST(!shape_bytes(Shape{-1, 2}, 4));
  BOOST_TEST(!shape_bytes(Shape{kMax, kMax}, 1));
  BOOST_TEST(shape_bytes(Shape{std::int64_t{1} << 60}, 4).value() == kMaxTensorBytes);
  BOOST_TEST(!shape_bytes(Shape{std::int64_t{1} << 60}, 8));
}

BOOST_AUTO_TEST_CASE(box_inside_checks_rank_sign_and_bounds_without_overflow) {
  BOOST_TEST(box_inside(Shape{1, 2}, Shape{3, 4}, Shape{4, 6}));
  BOOST_TEST(box_inside(Shape{}, Shape{}, Shape{}));
  BOOST_TEST(box_inside(Shape{4}, Shape{0}, Shape{4}));
  BOOST_TEST(!box_inside(Shape{1, 3}, Shape{3, 4}, Shape{4, 6}));
  BOOST_TEST(!box_inside(Shape{0}, Shape{4}, Shape{4, 1}));
  BOOST_TEST(!box_inside(Shape{-1}, Shape{2}, Shape{4}));
  BOOST_TEST(!box_inside(Shape{0}, Shape{-1}, Shape{4}));
  BOOST_TEST(!box_inside(Shape{kMax}, Shape{kMax}, Shape{kMax}));
  BOOST_TEST(!box_inside(Shape{0}, Shape{1}, Shape{-1}));
}

BOOST_AUTO_TEST_CASE(find_chunk_takes_a_matching_hint_else_the_first_match) {
  TensorStorageMetadata t{{DType::F32}, {4}, {box({0}, {2}), box({2}, {2}), box({2}, {0})}};
  BOOST_TEST(find_chunk(t, Shape{2}, std::nullopt) == &t.chunks[1]);
  BOOST_TEST(find_chunk(t, Shape{2}, 2) == &t.chunks[2]);  // the hint, when it starts there
  BOOST_TEST(find_chunk(t, Shape{2}, 0) == &t.chunks[1]);  // a wrong hint is ignored
  BOOST_TEST(find_chunk(t, Shape{2}, 99) == &t.chunks[1]);
  BOOST_TEST(find_chunk(t, Shape{1}, 0) == nullptr);
  BOOST_TEST(find_chunk(t, Shape{0, 0}, std::nullopt) == nullptr);
}

BOOST_AUTO_TEST_CASE(tilings) {
  using Kind = TilingFault::Kind;
  BOOST_TEST(!find_tiling_fault({4, 6}, {box({0, 0}, {2, 6}), box({2, 0}, {2, 6})}));
  BOOST_TEST(!find_tiling_fault({}, {box({}, {})}));
  BOOST_TEST(!find_tiling_fault({0, 3}, {}));
  BOOST_TEST(!find_tiling_fault({4}, {box({0}, {2}), box({2}, {0}), box({2}, {2})}));

  BOOST_TEST((kind_of({-1}, {}) == Kind::bad_shape));
  BOOST_TEST((kind_of({kMax, kMax}, {}) == Kind::bad_shape));
  BOOST_TEST((kind_of({4}, {box({0, 0}, {4, 1})}) == Kind::rank));
  BOOST_TEST((kind_of({4}, {box({0}, {4}), box({2}, {3})}) == Kind::outside));
  BOOST_TEST((kind_of({4}, {box({-1}, {5})}) == Kind::outside));

  auto fault = find_tiling_fault({4, 4}, {box({0, 0}, {3, 4}), box({2, 0}, {2, 4})});
  BOOST_TEST_REQUIRE(fault.has_value());
  BOOST_TEST((fault->kind == Kind::overlap));
  BOOST_TEST(static_cast<std::uint64_t>(fault->held) == 20u);
  BOOST_TEST(fault->total == 16u);
  BOOST_TEST(fault->chunk.has_value());

  fault = find_tiling_fault({4}, {box({0}, {2}), box({3}, {1})});
  BOOST_TEST_REQUIRE(fault.has_value());
  BOOST_TEST((fault->kind == Kind::gap));
  BOOST_TEST(static_cast<std::uint64_t>(fault->held) == 3u);
  BOOST_TEST(fault->chunk.has_value());

  BOOST_TEST((kind_of({2, 2}, {box({0, 0}, {1, 2}), box({1, 0}, {1, 1}), box({0, 0}, {1, 1})}) ==
              Kind::overlap_and_gap));
  BOOST_TEST((kind_of({}, {box({}, {}), box({}, {})}) == Kind::overlap));
  BOOST_TEST((kind_of({}, {}) == Kind::gap));
}

// A tiling that splits more dimensions than can be checked is refused, not
// checked at a cost that grows as 2^dimensions.
BOOST_AUTO_TEST_CASE(too_many_split_dimensions_are_refused) {
  const Shape global(17, 2);
  std::vector<ChunkStorageMetadata> chunks = {box(Shape(17, 0), Shape(17, 1)),
                                              box(Shape(17, 1), Shape(17, 1))};
  const auto fault = find_tiling_fault(global, chunks);
  BOOST_TEST_REQUIRE(fault.has_value());
  BOOST_TEST((fault->kind == TilingFault::Kind::too_complex));
  BOOST_TEST(fault->split_dims == 17u);
}
