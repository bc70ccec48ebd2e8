#define BOOST_TEST_MODULE example_planners
#include <boost/test/unit_test.hpp>

// The example planners of DCP's docstrings (torch/distributed/checkpoint/
// planner.py), as ringckpt's library classes (ringckpt/example_planners.hpp),
// each proven through a real save and load on disk:
//   RenameSavePlanner / RenameLoadPlanner  rewrite the state dict in set_up_planner
//   FP16Planner (F16 or BF16)              change the local plan and resolve_data together
//   LoadBalancingPlanner                   a central decision in create_global_plan
//   SaveExtraDataPlanner                   planner data carried into the metadata
//   MetaModelMaterialize                   a load planner that allocates what it loads

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <list>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "format/dtype_cast.hpp"
#include "format/metadata_json.hpp"
#include "ringckpt/ringckpt.hpp"
#include "format/safetensors.hpp"
#include "test_util.hpp"

using namespace ringckpt;
using ringckpt::test::OwnedTensor;
using ringckpt::test::TempDir;
using ringckpt::test::load_options;
using ringckpt::test::read_header;
using ringckpt::test::save_options;
using ringckpt::test::small_io;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> header_names(const fs::path& file) {
  std::vector<std::string> names;
  for (const auto& e : read_header(file).entries) names.push_back(e.name);
  return names;
}

// A sharded tensor of `rows` x `cols` F32 held as two local shards (rows split
// at `split`), both views of `full`.
ShardedTensor two_shards(OwnedTensor& full, std::int64_t split) {
  const std::int64_t rows = full.view.shape[0], cols = full.view.shape[1];
  auto* base = static_cast<std::byte*>(full.view.data);
  ShardedTensor st{full.view.dtype, full.view.shape, {}};
  st.shards.push_back({TensorView{base, full.view.dtype, {split, cols}}, {0, 0}});
  st.shards.push_back({TensorView{base + split * cols * dtype_size(full.view.dtype),
                                  full.view.dtype, {rows - split, cols}},
                       {split, 0}});
  return st;
}

}  // namespace

// ===========================================================================
// 1. RenamePlanner.

BOOST_AUTO_TEST_CASE(rename_planner_prefixes_every_key_and_loads_back) {
  TempDir dir;
  OwnedTensor w(DType::F32, {33, 65}, 1), emb(DType::BF16, {500, 64}, 2), s(DType::F32, {8, 10}, 3);
  StateDict sd;
  sd.add("w", w.view);
  sd.add("emb", emb.view);
  sd.add("s", two_shards(s, 4));
  sd.add("step", bytes_of(std::int64_t{1234}));
  RenameSavePlanner rename_save("foo_");
  save(sd, dir.path(), save_options(&rename_save));

  // On disk every name carries the prefix: metadata.json and safetensors.
  const Metadata md = read_metadata(dir.path());
  std::set<std::string> keys;
  for (const auto& [fqn, item] : md.state_dict_metadata) keys.insert(fqn);
  BOOST_TEST((keys == std::set<std::string>{"foo_w", "foo_emb", "foo_s", "foo_step"}));
  for (const auto& [index, info] : md.storage_data) BOOST_TEST(index.fqn.str().starts_with("foo_"));
  const std::vector<std::string> expected_names = {"foo_w", "foo_emb", "foo_s@0,0", "foo_s@4,0",
                                                   "foo_step"};
  BOOST_TEST(header_names(dir / test::first_data_file(dir.path())) == expected_names,
             boost::test_tools::per_element());

  // A plain load must ask for the prefixed names ...
  {
    OwnedTensor back = w.blank_like();
    StateDict plain;
    plain.add("w", back.view);
    BOOST_CHECK_EXCEPTION(load(plain, dir.path(), load_options()), Error, [](const Error& e) {
      return e.code() == ErrorCode::kNotFound && e.where() == "w";
    });
    StateDict prefixed;
    prefixed.add("foo_w", back.view);
    load(prefixed, dir.path(), load_options());
    BOOST_TEST((back.storage == w.storage));
  }
  // ... and the rename load planner loads them into the un-prefixed keys.
  OwnedTensor w2 = w.blank_like(), emb2 = emb.blank_like(), s2 = s.blank_like();
  StateDict into;
  into.add("w", w2.view);
  into.add("emb", emb2.view);
  into.add("s", two_shards(s2, 4));
  into.add("step", Bytes{});
  RenameLoadPlanner rename_load("foo_");
  load(into, dir.path(), load_options(&rename_load));
  BOOST_TEST((w2.storage == w.storage));
  BOOST_TEST((emb2.storage == emb.storage));
  BOOST_TEST((s2.storage == s.storage));
  BOOST_TEST((std::get<Bytes>(*into.find("step")) == bytes_of(std::int64_t{1234})));
  BOOST_TEST(into.size() == 4u);  // the caller's dict kept its own names
  BOOST_TEST(verify(dir.path(), small_io()).ok());
}

// ===========================================================================
// 2. FP16Planner. DCP sets tensor_data.properties.dtype = float16 in
// create_local_plan and returns item.to(float16) from resolve_data. Here F32
// items are stored as BF16, converted while staging: resolve_data returns a
// producer that writes any byte range [offset, offset + n) of the BF16 item,
// so staging converts, copies and checksums in one pass. Pieces are cut at
// extent boundaries, which fall at any byte of an item (an odd-sized blob
// before it makes them odd), so a piece may begin or end inside an element.

// Bytes [offset, offset + out.size()) of the BF16 image of the F32 elements in src.
void f32_to_bf16_bytes(std::span<const std::byte> src, std::uint64_t offset,
                       std::span<std::byte> out) {
  detail::cast_byte_range(DType::F32, src, DType::BF16, offset, out);
}

// The expected BF16 of f, worked out another way: the two BF16 values that
// bracket f (truncation and the next one away from zero) compared by distance
// in double, a tie going to the even one; past the largest BF16 the next one
// up is 2^128 (which rounds to infinity).
std::uint16_t expected_bf16(float f) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  if (std::isnan(f)) return 0;                         // checked separately
  if (std::isinf(f)) return static_cast<std::uint16_t>(u >> 16);  // exact
  const std::uint32_t down = u >> 16, up = down + 1;
  auto value = [](std::uint32_t h) {
    const float as_float = std::bit_cast<float>(h << 16);
    if (std::isinf(as_float)) return std::copysign(std::ldexp(1.0, 128), static_cast<double>(as_float));
    return static_cast<double>(as_float);
  };
  const double x = f;
  if (x == value(down)) return static_cast<std::uint16_t>(down);
  const double d_down = std::fabs(x - value(down)), d_up = std::fabs(value(up) - x);
  if (d_down < d_up) return static_cast<std::uint16_t>(down);
  if (d_up < d_down) return static_cast<std::uint16_t>(up);
  return static_cast<std::uint16_t>(down % 2 == 0 ? down : up);
}

// F32 values that exercise rounding: random bit patterns (denormals, huge
// values, overflow to infinity), random normals at many scales, exact ties,
// infinities, zeros and NaNs.
std::vector<float> tricky_floats(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> scale(-40, 38);
  const std::uint32_t specials[] = {
      0x3f808000u, 0x3f818000u, 0x3f817fffu, 0x3f818001u, 0xbf808000u, 0xbf818000u,  // ties
      0x00008000u, 0x00018000u, 0x80008000u, 0x00000001u, 0x007fffffu,             // denormals
      0x7f7fffffu, 0x7f7f8000u, 0x7f7f7fffu, 0xff7fffffu,  // near the top: to inf or not
      0x7f800000u, 0xff800000u, 0x00000000u, 0x80000000u,  // infinities, zeros
      0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu,  // NaNs (some with only low bits)
  };
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) {
    if (i < std::size(specials)) {
      v[i] = std::bit_cast<float>(specials[i]);
    } else if (i % 3 == 0) {
      std::uint32_t bits;
      do bits = static_cast<std::uint32_t>(rng());
      while ((bits & 0x7f800000u) == 0x7f800000u);  // finite
      v[i] = std::bit_cast<float>(bits);
    } else {
      v[i] = normal(rng) * std::pow(10.0f, static_cast<float>(scale(rng)));
    }
  }
  return v;
}

void check_bf16(const std::vector<float>& src, const std::byte* bf16, const std::string& what) {
  std::size_t bad = 0;
  for (std::size_t i = 0; i < src.size(); ++i) {
    std::uint16_t got;
    std::memcpy(&got, bf16 + 2 * i, 2);
    bool ok;
    if (std::isnan(src[i])) {
      ok = (got & 0x7f80u) == 0x7f80u && (got & 0x007fu) != 0 &&
           (got >> 15) == (std::bit_cast<std::uint32_t>(src[i]) >> 31);
    } else {
      ok = got == expected_bf16(src[i]);
    }
    if (!ok && bad++ < 5) {
      BOOST_ERROR(what << " element " << i << ": F32 0x" << std::hex
                       << std::bit_cast<std::uint32_t>(src[i]) << " became BF16 0x" << got
                       << ", expected 0x" << expected_bf16(src[i]) << std::dec);
    }
  }
  BOOST_TEST(bad == 0u, what << ": " << bad << " of " << src.size() << " elements wrong");
}

BOOST_AUTO_TEST_CASE(bf16_producer_handles_pieces_split_anywhere) {
  const std::vector<float> src = tricky_floats(4099, 5);
  const auto f32 = std::as_bytes(std::span<const float>(src));
  std::vector<std::byte> whole(src.size() * 2);
  f32_to_bf16_bytes(f32, 0, whole);
  check_bf16(src, whole.data(), "one piece");
  // The same image built from pieces of random (often odd) lengths.
  std::mt19937_64 rng(9);
  for (int round = 0; round < 20; ++round) {
    std::vector<std::byte> pieced(whole.size(), std::byte{0xee});
    std::uint64_t pos = round;  // begin at an odd offset every other round
    f32_to_bf16_bytes(f32, 0, std::span<std::byte>(pieced).first(pos));
    while (pos < pieced.size()) {
      const std::uint64_t n = std::min<std::uint64_t>(1 + rng() % 37, pieced.size() - pos);
      f32_to_bf16_bytes(f32, pos, std::span<std::byte>(pieced).subspan(pos, n));
      pos += n;
    }
    BOOST_TEST((pieced == whole), "round " << round);
  }
}

BOOST_AUTO_TEST_CASE(bf16_planner_converts_f32_while_staging) {
  TempDir dir;
  // A 3-byte blob first: every later item starts at an odd file offset, so
  // the 64 KiB extent boundaries cut the BF16 images mid-element.
  const Bytes tag = bytes_of(std::string_view("abc"));
  std::vector<float> w = tricky_floats(300 * 257, 1);  // 308400 F32 bytes over ~3 extents
  std::vector<float> odd = tricky_floats(7 * 13, 2);
  std::vector<float> scalar = {3.14159265f};
  std::vector<float> sharded = tricky_floats(6 * 5, 3);
  OwnedTensor ids(DType::I32, {1001}, 4);  // not F32: stored as is
  OwnedTensor sharded_owned(DType::F32, {6, 5}, 0);
  std::memcpy(sharded_owned.storage.data(), sharded.data(), sharded.size() * 4);

  StateDict sd;
  sd.add("tag", tag);
  sd.add("w", TensorView{w.data(), DType::F32, {300, 257}});
  sd.add("ids", ids.view);
  sd.add("odd", TensorView{odd.data(), DType::F32, {7, 13}});
  sd.add("scalar", TensorView{scalar.data(), DType::F32, {}});
  sd.add("sharded", two_shards(sharded_owned, 2));

  save(sd, dir / "f32", save_options());
  FP16Planner bf16(DType::BF16);
  save(sd, dir / "bf16", save_options(&bf16));

  // The checkpoint says BF16, in metadata.json and in the safetensors header.
  const Metadata md = read_metadata(dir / "bf16");
  for (const std::string fqn : {"w", "odd", "scalar", "sharded"}) {
    BOOST_TEST_INFO(fqn);
    BOOST_TEST(dtype_name(std::get<TensorStorageMetadata>(md.state_dict_metadata.at(fqn))
                              .properties.dtype) == "BF16");
  }
  BOOST_TEST(dtype_name(std::get<TensorStorageMetadata>(md.state_dict_metadata.at("ids"))
                            .properties.dtype) == "I32");
  for (const auto& e : read_header(dir / "bf16" / test::first_data_file(dir / "bf16")).entries) {
    BOOST_TEST_INFO(e.name);
    const bool f32_source = e.name != "tag" && e.name != "ids";
    BOOST_TEST(dtype_name(e.dtype) == (f32_source ? "BF16" : dtype_name(e.dtype)));
  }
  // The tensor bytes halve; the rest is the same.
  const auto data_bytes = [](const fs::path& file) {
    return fs::file_size(file) - read_header(file).data_start;
  };
  const std::uint64_t f32_data = data_bytes(dir / "f32" / test::first_data_file(dir / "f32"));
  const std::uint64_t bf16_data = data_bytes(dir / "bf16" / test::first_data_file(dir / "bf16"));
  const std::uint64_t unconverted = tag.size() + ids.storage.size();
  BOOST_TEST(bf16_data - unconverted == (f32_data - unconverted) / 2);
  BOOST_TEST(fs::file_size(dir / "bf16" / test::first_data_file(dir / "bf16")) <
             fs::file_size(dir / "f32" / test::first_data_file(dir / "f32")) * 6 / 10);
  BOOST_TEST(verify(dir / "bf16", small_io()).ok());

  // Loaded into BF16 buffers, every element is the correctly rounded value.
  std::vector<std::byte> w16(w.size() * 2), odd16(odd.size() * 2), scalar16(2),
      sharded16(sharded.size() * 2);
  OwnedTensor ids_back = ids.blank_like();
  StateDict into;
  into.add("tag", Bytes{});
  into.add("w", TensorView{w16.data(), DType::BF16, {300, 257}});
  into.add("ids", ids_back.view);
  into.add("odd", TensorView{odd16.data(), DType::BF16, {7, 13}});
  into.add("scalar", TensorView{scalar16.data(), DType::BF16, {}});
  into.add("sharded", TensorView{sharded16.data(), DType::BF16, {6, 5}});
  load(into, dir / "bf16", load_options());
  check_bf16(w, w16.data(), "w");
  check_bf16(odd, odd16.data(), "odd");
  check_bf16(scalar, scalar16.data(), "scalar");
  check_bf16(sharded, sharded16.data(), "sharded");
  std::uint16_t pi16;
  std::memcpy(&pi16, scalar16.data(), 2);
  BOOST_TEST(pi16 == 0x4049u);  // 3.140625, the BF16 nearest pi
  BOOST_TEST((ids_back.storage == ids.storage));
  BOOST_TEST((std::get<Bytes>(*into.find("tag")) == tag));

  // Loaded into F32 buffers, the default load planner casts back: every
  // element is the F32 value of its BF16.
  std::vector<float> w32(w.size(), -1.0f);
  StateDict as_f32;
  as_f32.add("w", TensorView{w32.data(), DType::F32, {300, 257}});
  load(as_f32, dir / "bf16", load_options());
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < w.size(); ++i) {
    std::uint16_t h;
    std::memcpy(&h, w16.data() + 2 * i, 2);
    const float expected = std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16);
    const bool same = std::isnan(expected) ? std::isnan(w32[i]) : w32[i] == expected;
    wrong += !same;
  }
  BOOST_TEST(wrong == 0u);
  // strict_dtype refuses the cast, naming the key.
  DefaultLoadPlanner strict(DefaultLoadPlanner::Options{.strict_dtype = true});
  BOOST_CHECK_EXCEPTION(load(as_f32, dir / "bf16", load_options(&strict)), Error,
                        [](const Error& e) {
                          return e.code() == ErrorCode::kMismatch && e.where() == "w";
                        });
}

BOOST_AUTO_TEST_CASE(fp16_planner_stores_f16_and_loads_back_into_f32) {
  TempDir dir;
  const Bytes tag = bytes_of(std::string_view("odd"));  // later items start at odd offsets
  std::vector<float> w = tricky_floats(200 * 301, 7);
  OwnedTensor ids(DType::I64, {33}, 8);
  StateDict sd;
  sd.add("tag", tag);
  sd.add("w", TensorView{w.data(), DType::F32, {200, 301}});
  sd.add("ids", ids.view);
  FP16Planner fp16;  // F16 by default, as DCP's example
  save(sd, dir.path(), save_options(&fp16));
  const Metadata md = read_metadata(dir.path());
  BOOST_TEST(dtype_name(std::get<TensorStorageMetadata>(md.state_dict_metadata.at("w"))
                            .properties.dtype) == "F16");
  BOOST_TEST(dtype_name(std::get<TensorStorageMetadata>(md.state_dict_metadata.at("ids"))
                            .properties.dtype) == "I64");
  BOOST_TEST(verify(dir.path(), small_io()).ok());

  // Into F16 buffers: the bytes are the compiler's F32 -> F16 rounding.
  std::vector<_Float16> w16(w.size());
  OwnedTensor ids_back = ids.blank_like();
  StateDict into16;
  into16.add("w", TensorView{w16.data(), DType::F16, {200, 301}});
  into16.add("ids", ids_back.view);
  DefaultLoadPlanner partial(DefaultLoadPlanner::Options{.allow_partial_load = true});
  load(into16, dir.path(), load_options(&partial));
  // Into F32 buffers: cast back, each value the F16's.
  std::vector<float> w32(w.size());
  StateDict into32;
  into32.add("w", TensorView{w32.data(), DType::F32, {200, 301}});
  into32.add("tag", Bytes{});
  load(into32, dir.path(), load_options());
  std::size_t wrong16 = 0, wrong32 = 0;
  for (std::size_t i = 0; i < w.size(); ++i) {
    const _Float16 expected = static_cast<_Float16>(w[i]);
    if (std::isnan(w[i])) {
      wrong16 += !std::isnan(static_cast<float>(w16[i]));
      wrong32 += !std::isnan(w32[i]);
      continue;
    }
    wrong16 += std::bit_cast<std::uint16_t>(w16[i]) != std::bit_cast<std::uint16_t>(expected);
    wrong32 += std::bit_cast<std::uint32_t>(w32[i]) !=
               std::bit_cast<std::uint32_t>(static_cast<float>(expected));
  }
  BOOST_TEST(wrong16 == 0u);
  BOOST_TEST(wrong32 == 0u);
  BOOST_TEST((ids_back.storage == ids.storage));
  BOOST_TEST((std::get<Bytes>(*into32.find("tag")) == tag));
  // Only F16 and BF16 are half types to store.
  BOOST_CHECK_EXCEPTION(FP16Planner(DType::I8), Error, [](const Error& e) {
    return e.code() == ErrorCode::kInvalidArgument && e.where() == "FP16Planner";
  });
}

// ===========================================================================
// 3. DDPLoadBalancingPlanner. Every rank holds every item (DDP replicates the
// model); DCP's sample deals rank 0's items out in chunks in
// create_global_plan. Here each item goes to one rank so that bytes balance:
// biggest first, each to the rank (among those holding it) with the fewest
// bytes so far (LPT), so the ranks end within one largest item of each other.
// The remaining plans then go through the default global plan (which finds
// nothing left to deduplicate), so metadata and validation are the default's.

// A replicated model: tensors of very different sizes, and blobs.
struct Model {
  std::vector<OwnedTensor> tensors;
  StateDict sd;
  Model() {
    const std::vector<Shape> shapes = {{512, 64}, {64}, {256, 256}, {3, 7}, {1000, 33},
                                       {128, 128}, {64, 300}, {17}, {40, 40}, {200, 100}};
    for (std::size_t i = 0; i < shapes.size(); ++i)
      tensors.emplace_back(i % 2 ? DType::BF16 : DType::F32, shapes[i], 100 + i);
    for (std::size_t i = 0; i < tensors.size(); ++i)
      sd.add("layer" + std::to_string(i) + ".w", tensors[i].view);
    sd.add("step", bytes_of(std::int64_t{77}));
    sd.add("rng", bytes_of(std::string_view("some rng state bytes")));
  }
  Model(const Model&) = delete;
};

std::map<std::size_t, std::uint64_t> bytes_per_rank(const std::vector<SavePlan>& plans) {
  std::map<std::size_t, std::uint64_t> out;
  for (std::size_t r = 0; r < plans.size(); ++r) {
    out[r] = 0;
    for (const auto& item : plans[r].items) out[r] += item.nbytes();
  }
  return out;
}

BOOST_AUTO_TEST_CASE(load_balancing_refuses_ranks_that_disagree) {
  // Rank 0 holds w as [4], rank 1 as [8]: dropping one of them as a replica
  // would save the wrong tensor. The check runs before anything is dropped.
  OwnedTensor small(DType::F32, {4}, 1), large(DType::F32, {8}, 2);
  StateDict sd0, sd1;
  sd0.add("w", small.view);
  sd1.add("w", large.view);
  LoadBalancingPlanner p0, p1;
  p0.set_up_planner(sd0, true);
  p1.set_up_planner(sd1, false);
  std::vector<SavePlan> plans{p0.create_local_plan(), p1.create_local_plan()};
  try {
    (void)p0.create_global_plan(plans);
    BOOST_FAIL("ranks that disagree on w were accepted");
  } catch (const Error& e) {
    BOOST_TEST(e.where() == "w");
    BOOST_TEST(std::string(e.what()).find("[8]") != std::string::npos, e.what());
  }
}

BOOST_AUTO_TEST_CASE(load_balancing_global_plan_over_four_ranks) {
  Model m;
  LoadBalancingPlanner planner;
  planner.set_up_planner(m.sd, true);
  const SavePlan local = planner.create_local_plan();
  std::uint64_t largest = 0, total = 0;
  for (const auto& item : local.items) {
    largest = std::max(largest, item.nbytes());
    total += item.nbytes();
  }
  auto [plans, md] = planner.create_global_plan(std::vector<SavePlan>(4, local));
  BOOST_TEST_REQUIRE(plans.size() == 4u);

  // Every item is kept exactly once.
  std::map<MetadataIndex, int> count;
  for (const auto& p : plans) {
    for (const auto& item : p.items) ++count[item.index];
  }
  BOOST_TEST(count.size() == local.items.size());
  for (const auto& item : local.items) {
    BOOST_TEST_INFO(item.index.fqn);
    BOOST_TEST(count[item.index] == 1);
  }
  // Bytes per rank are within the largest item of each other.
  const auto per_rank = bytes_per_rank(plans);
  std::uint64_t lo = total, hi = 0, sum = 0;
  for (const auto& [r, b] : per_rank) {
    BOOST_TEST_MESSAGE("rank " << r << ": " << b << " bytes");
    lo = std::min(lo, b);
    hi = std::max(hi, b);
    sum += b;
  }
  BOOST_TEST(sum == total);
  BOOST_TEST(hi - lo <= largest);
  BOOST_TEST(lo > 0u);
  // The metadata describes every item once.
  BOOST_TEST(md.state_dict_metadata.size() == m.sd.size());
  for (const auto& [fqn, item] : md.state_dict_metadata) {
    if (const auto* t = std::get_if<TensorStorageMetadata>(&item)) BOOST_TEST(t->chunks.size() == 1u);
  }
}

BOOST_AUTO_TEST_CASE(load_balancing_two_rank_save_and_load) {
  TempDir dir;
  Model m;
  ThreadGroup group(2);
  std::vector<std::thread> ranks;
  std::vector<std::string> errors(2);
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      try {
        LoadBalancingPlanner planner;  // each rank its own; rank 0's makes the global plan
        save(m.sd, dir.path(), save_options(&planner, &group.member(r)));
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : ranks) t.join();
  BOOST_TEST_REQUIRE(errors[0] == "");
  BOOST_TEST_REQUIRE(errors[1] == "");

  // Both ranks wrote about half.
  const Metadata md = read_metadata(dir.path());
  BOOST_TEST_REQUIRE(md.files.size() == 2u);
  std::map<std::string, std::uint64_t> per_file;
  std::uint64_t largest = 0;
  for (const auto& [index, info] : md.storage_data) {
    per_file[info.relative_path] += info.length;
    largest = std::max(largest, info.length);
  }
  BOOST_TEST_REQUIRE(per_file.size() == 2u);
  const std::uint64_t a = per_file[test::data_file(dir.path(), 0)],
                      b = per_file[test::data_file(dir.path(), 1)];
  BOOST_TEST_MESSAGE("rank 0 wrote " << a << " bytes, rank 1 " << b);
  BOOST_TEST((a > b ? a - b : b - a) <= largest);
  BOOST_TEST(md.storage_data.size() == m.sd.size());  // each item stored once
  BOOST_TEST(verify(dir.path(), small_io()).ok());

  // A single rank loads it all back.
  std::vector<OwnedTensor> back;
  for (const auto& t : m.tensors) back.push_back(t.blank_like());
  StateDict into;
  for (std::size_t i = 0; i < back.size(); ++i) into.add("layer" + std::to_string(i) + ".w", back[i].view);
  into.add("step", Bytes{});
  into.add("rng", Bytes{});
  load(into, dir.path(), load_options());
  for (std::size_t i = 0; i < back.size(); ++i) {
    BOOST_TEST_INFO("layer" << i);
    BOOST_TEST((back[i].storage == m.tensors[i].storage));
  }
  BOOST_TEST((std::get<Bytes>(*into.find("step")) == bytes_of(std::int64_t{77})));
  BOOST_TEST((std::get<Bytes>(*into.find("rng")) == bytes_of(std::string_view("some rng state bytes"))));
}

// ===========================================================================
// 4. SaveExtraDataPlanner. Each rank contributes its planner data in the local
// plan; the global plan merges them into the metadata's planner data, as
// "<rank>/<key>" (DCP's planner_data is any picklable object; here a
// string -> string map).

BOOST_AUTO_TEST_CASE(save_extra_data_planner_stores_planner_data_in_metadata) {
  TempDir dir;
  OwnedTensor w(DType::F32, {64, 64}, 1);
  std::vector<OwnedTensor> own;
  own.emplace_back(DType::F32, Shape{10}, 2);
  own.emplace_back(DType::F32, Shape{10}, 3);
  ThreadGroup group(2);
  std::vector<std::thread> ranks;
  std::vector<std::string> errors(2);
  const auto data_of = [](int r) {
    return std::map<std::string, std::string>{
        {"per_rank", "per-rank-data-" + std::to_string(r)},
        {"note", "quotes \" and \\ and\nnewlines survive"}};
  };
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      try {
        StateDict sd;
        sd.add("w", w.view);  // replicated
        sd.add("rank" + std::to_string(r) + ".own", own[r].view);
        SaveExtraDataPlanner planner(r, data_of(r));
        save(sd, dir.path(), save_options(&planner, &group.member(r)));
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : ranks) t.join();
  BOOST_TEST_REQUIRE(errors[0] == "");
  BOOST_TEST_REQUIRE(errors[1] == "");

  const Metadata md = read_metadata(dir.path());
  BOOST_TEST(md.planner_data.size() == 4u);
  BOOST_TEST(md.planner_data.at("0/per_rank") == "per-rank-data-0");
  BOOST_TEST(md.planner_data.at("1/per_rank") == "per-rank-data-1");
  BOOST_TEST((SaveExtraDataPlanner::rank_data(md, 0) == data_of(0)));
  BOOST_TEST((SaveExtraDataPlanner::rank_data(md, 1) == data_of(1)));
  BOOST_TEST(SaveExtraDataPlanner::rank_data(md, 2).empty());
  BOOST_TEST(verify(dir.path(), small_io()).ok());

  // The data is all there too.
  OwnedTensor w2 = w.blank_like(), a = own[0].blank_like(), b = own[1].blank_like();
  StateDict into;
  into.add("w", w2.view);
  into.add("rank0.own", a.view);
  into.add("rank1.own", b.view);
  load(into, dir.path(), load_options());
  BOOST_TEST((w2.storage == w.storage));
  BOOST_TEST((a.storage == own[0].storage));
  BOOST_TEST((b.storage == own[1].storage));
}

// ===========================================================================
// 5. MetaModelMaterialize. The caller gives an empty state dict (or entries
// with null data); every destination is allocated in resolve_tensor through
// the caller's allocator.

// An allocator that owns what it hands out and records each call.
struct Arena {
  std::list<std::vector<std::byte>> buffers;  // stable addresses
  std::vector<std::string> calls;
  MetaModelMaterialize::Allocator allocator() {
    return [this](const std::string& fqn, DType dtype, const Shape& shape) -> void* {
      calls.push_back(fqn);
      return buffers.emplace_back(static_cast<std::size_t>(numel(shape)) * dtype_size(dtype)).data();
    };
  }
};

BOOST_AUTO_TEST_CASE(meta_model_materialize_allocates_every_item) {
  TempDir dir;
  OwnedTensor w(DType::F32, {40, 50}, 1), b(DType::BF16, {50}, 2), s(DType::F32, {10, 6}, 3),
      scalar(DType::I64, {}, 4), empty(DType::F32, {0, 3}, 5), mask(DType::BOOL, {7, 3}, 6);
  StateDict sd;
  sd.add("model.w", w.view);
  sd.add("model.b", b.view);
  sd.add("model.sharded", two_shards(s, 5));  // two stored chunks, loaded as one tensor
  sd.add("step", scalar.view);
  sd.add("empty", empty.view);
  sd.add("mask", mask.view);
  sd.add("config", bytes_of(std::string_view("{\"layers\": 2}")));
  save(sd, dir.path(), save_options());

  Arena arena;
  MetaModelMaterialize planner(arena.allocator());
  StateDict loaded;  // empty: the planner decides what it holds
  load(loaded, dir.path(), load_options(&planner));
  BOOST_TEST(loaded.size() == sd.size());
  // One allocation a destination (model.sharded's two chunks share one); the
  // empty tensor needs none.
  BOOST_TEST(planner.allocations() == 5u);
  std::vector<std::string> calls = arena.calls;
  std::sort(calls.begin(), calls.end());
  const std::vector<std::string> expected_calls = {"mask", "model.b", "model.sharded",
                                                   "model.w", "step"};
  BOOST_TEST(calls == expected_calls, boost::test_tools::per_element());

  const std::map<std::string, const OwnedTensor*> originals = {
      {"model.w", &w}, {"model.b", &b}, {"model.sharded", &s},
      {"step", &scalar}, {"empty", &empty}, {"mask", &mask}};
  for (const auto& [fqn, original] : originals) {
    BOOST_TEST_CONTEXT(fqn) {
      const StateValue* v = loaded.find(fqn);
      BOOST_TEST_REQUIRE(v != nullptr);
      const TensorView* t = std::get_if<TensorView>(v);
      BOOST_TEST_REQUIRE(t != nullptr);
      BOOST_TEST(dtype_name(t->dtype) == dtype_name(original->view.dtype));
      BOOST_TEST(t->shape == original->view.shape, boost::test_tools::per_element());
      BOOST_TEST_REQUIRE(t->nbytes() == original->storage.size());
      // memcmp on the empty tensor's null data is undefined, even for 0 bytes.
      BOOST_TEST((t->nbytes() == 0 || std::memcmp(t->data, original->storage.data(), t->nbytes()) == 0));
    }
  }
  const Bytes* config = std::get_if<Bytes>(loaded.find("config"));
  BOOST_TEST_REQUIRE(config != nullptr);
  BOOST_TEST((*config == bytes_of(std::string_view("{\"layers\": 2}"))));

  // Entries the caller brings with memory are loaded into it; a meta shard
  // (null data) is allocated; the rest is materialized.
  OwnedTensor mine = w.blank_like();
  ShardedTensor meta_shards = two_shards(s, 5);
  for (auto& shard : meta_shards.shards) shard.local.data = nullptr;
  Arena arena2;
  MetaModelMaterialize planner2(arena2.allocator());
  StateDict partial;
  partial.add("model.w", mine.view);
  partial.add("model.sharded", meta_shards);
  load(partial, dir.path(), load_options(&planner2));
  BOOST_TEST((mine.storage == w.storage));
  BOOST_TEST(planner2.allocations() == 5u);  // two shards, b, step, mask
  BOOST_TEST(partial.size() == sd.size());
  const auto& shards = std::get<ShardedTensor>(*partial.find("model.sharded")).shards;
  BOOST_TEST_REQUIRE(shards.size() == 2u);
  const std::size_t first_bytes = shards[0].local.nbytes();
  BOOST_TEST(std::memcmp(shards[0].local.data, s.storage.data(), first_bytes) == 0);
  BOOST_TEST(std::memcmp(shards[1].local.data, s.storage.data() + first_bytes,
                         shards[1].local.nbytes()) == 0);

  // An allocator that gives nothing is an Error naming the key.
  MetaModelMaterialize refusing([](const std::string&, DType, const Shape&) -> void* {
    return nullptr;
  });
  StateDict none;
  BOOST_CHECK_EXCEPTION(load(none, dir.path(), load_options(&refusing)), Error,
                        [](const Error& e) {
                          return e.code() == ErrorCode::kInvalidArgument &&
                                 !e.where().empty();
                        });
}
