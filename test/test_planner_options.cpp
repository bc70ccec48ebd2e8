#define BOOST_TEST_MODULE planner_options
#include <boost/test/unit_test.hpp>

// The rest of DCP's planner surface, each through a real save and load:
//   DefaultLoadPlanner casts between F64, F32, F16 and BF16 (strict_dtype refuses)
//   LoadPlanner::resolve_bytes (bytes moved into the planner's Bytes)
//   DefaultSavePlanner's dedup_save_to_lowest_rank
//   save returns the committed Metadata on every rank

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "format/dtype_cast.hpp"
#include "ringckpt/ringckpt.hpp"
#include "test_util.hpp"

using namespace ringckpt;
using ringckpt::test::OwnedTensor;
using ringckpt::test::TempDir;
using ringckpt::test::load_options;
using ringckpt::test::save_options;
namespace fs = std::filesystem;

namespace {

// n values of `dtype` (castable) from doubles that exercise rounding and
// range: thirds, large and tiny magnitudes, signed zeros, infinities, a NaN.
std::vector<std::byte> float_values(DType dtype, std::size_t n) {
  std::vector<double> v(n);
  for (std::size_t i = 0; i < n; ++i) {
    const double sign = i % 2 ? -1.0 : 1.0;
    v[i] = sign * (static_cast<double>(i) + 1.0) / 3.0 * std::ldexp(1.0, static_cast<int>(i % 40) - 20);
  }
  const double specials[] = {0.0, -0.0, std::numeric_limits<double>::infinity(),
                             -std::numeric_limits<double>::infinity(), 70000.0, 1e-8,
                             std::numeric_limits<double>::quiet_NaN()};
  for (std::size_t i = 0; i < std::size(specials) && i < n; ++i) v[i] = specials[i];
  std::vector<std::byte> out(n * dtype_size(dtype));
  detail::cast_elements(DType::F64, reinterpret_cast<const std::byte*>(v.data()), dtype, out.data(), n);
  return out;
}

// Element i of a castable tensor, as a double.
double element(DType dtype, const std::byte* data, std::size_t i) {
  double d;
  detail::cast_elements(dtype, data + i * dtype_size(dtype), DType::F64,
                        reinterpret_cast<std::byte*>(&d), 1);
  return d;
}

bool same_value(double a, double b) {
  return (std::isnan(a) && std::isnan(b)) ||
         (a == b && std::signbit(a) == std::signbit(b));
}

}  // namespace

// ---------------------------------------------------------------------------
// The element conversion itself, against values worked out by hand.

BOOST_AUTO_TEST_CASE(cast_elements_rounds_to_nearest_even) {
  const double in[] = {1.0 / 3.0, 65520.0, 65519.0, -2.5e-8, 1.0 + 1.0 / 256.0, 3.0e38, 4.0e38};
  std::vector<std::byte> f16(std::size(in) * 2), bf16(std::size(in) * 2), f32(std::size(in) * 4);
  const auto* src = reinterpret_cast<const std::byte*>(in);
  detail::cast_elements(DType::F64, src, DType::F16, f16.data(), std::size(in));
  detail::cast_elements(DType::F64, src, DType::BF16, bf16.data(), std::size(in));
  detail::cast_elements(DType::F64, src, DType::F32, f32.data(), std::size(in));
  const auto u16 = [](const std::vector<std::byte>& b, std::size_t i) {
    std::uint16_t h;
    std::memcpy(&h, b.data() + 2 * i, 2);
    return h;
  };
  BOOST_TEST(u16(f16, 0) == 0x3555u);   // 1/3 in F16: 0.33325195
  BOOST_TEST(u16(f16, 1) == 0x7c00u);   // 65520 rounds up past 65504: infinity
  BOOST_TEST(u16(f16, 2) == 0x7bffu);   // 65519 rounds down to 65504
  BOOST_TEST(u16(f16, 3) == 0x8000u);   // below half the smallest denormal: -0
  BOOST_TEST(u16(bf16, 0) == 0x3eabu);  // 1/3 in BF16
  BOOST_TEST(u16(bf16, 4) == 0x3f80u);  // 1 + 2^-8: a tie, to even (1.0)
  BOOST_TEST(u16(bf16, 5) == 0x7f62u);  // 3e38 stays finite in BF16
  BOOST_TEST(std::isinf(element(DType::F32, f32.data(), 6)));  // 4e38 overflows F32
  BOOST_TEST(detail::is_castable_float(DType::BF16));
  BOOST_TEST(!detail::is_castable_float(DType::I32));
  BOOST_TEST(!detail::is_castable_float(DType::F8_E4M3));
}

// ---------------------------------------------------------------------------
// Cross-dtype loads.

BOOST_AUTO_TEST_CASE(load_casts_between_every_pair_of_floating_dtypes) {
  const DType floats[] = {DType::F64, DType::F32, DType::F16, DType::BF16};
  const Shape shape = {9, 13};
  const std::size_t n = 9 * 13;
  for (DType stored : floats) {
    TempDir dir;
    std::vector<std::byte> values = float_values(stored, n);
    StateDict sd;
    sd.add("w", TensorView{values.data(), stored, shape});
    save(sd, dir.path(), save_options());
    for (DType wanted : floats) {
      BOOST_TEST_CONTEXT(dtype_name(stored) << " loaded as " << dtype_name(wanted)) {
        std::vector<std::byte> back(n * dtype_size(wanted), std::byte{0x5a});
        StateDict into;
        into.add("w", TensorView{back.data(), wanted, shape});
        load(into, dir.path(), load_options());
        std::vector<std::byte> expected(back.size());
        detail::cast_elements(stored, values.data(), wanted, expected.data(), n);
        std::size_t wrong = 0;
        for (std::size_t i = 0; i < n; ++i) {
          wrong += !same_value(element(wanted, back.data(), i), element(wanted, expected.data(), i));
        }
        BOOST_TEST(wrong == 0u);
        // Widening is exact: the stored value comes back.
        if (dtype_size(wanted) > dtype_size(stored) || wanted == stored) {
          std::size_t changed = 0;
          for (std::size_t i = 0; i < n; ++i) {
            changed += !same_value(element(wanted, back.data(), i), element(stored, values.data(), i));
          }
          BOOST_TEST(changed == 0u);
        }
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(cast_load_reshards_between_shard_layouts) {
  // Stored as F32 in two row shards; loaded as BF16 in three column-and-row
  // shards, and as one F64 tensor: each destination box is cast on its own.
  TempDir dir;
  const Shape global = {10, 12};
  std::vector<std::byte> full = float_values(DType::F32, 120);
  ShardedTensor saved{DType::F32, global, {}};
  saved.shards.push_back({TensorView{full.data(), DType::F32, {4, 12}}, {0, 0}});
  saved.shards.push_back({TensorView{full.data() + 4 * 12 * 4, DType::F32, {6, 12}}, {4, 0}});
  StateDict sd;
  sd.add("s", saved);
  save(sd, dir.path(), save_options());

  std::vector<std::byte> a(7 * 5 * 2), b(7 * 7 * 2), c(3 * 12 * 2);
  ShardedTensor into_shards{DType::BF16, global, {}};
  into_shards.shards.push_back({TensorView{a.data(), DType::BF16, {7, 5}}, {0, 0}});
  into_shards.shards.push_back({TensorView{b.data(), DType::BF16, {7, 7}}, {0, 5}});
  into_shards.shards.push_back({TensorView{c.data(), DType::BF16, {3, 12}}, {7, 0}});
  std::vector<double> whole(120);
  StateDict into;
  into.add("s", into_shards);
  load(into, dir.path(), load_options());
  StateDict into_whole;
  into_whole.add("s", TensorView{whole.data(), DType::F64, global});
  load(into_whole, dir.path(), load_options());

  std::size_t wrong = 0;
  for (std::int64_t r = 0; r < 10; ++r) {
    for (std::int64_t col = 0; col < 12; ++col) {
      const std::size_t i = static_cast<std::size_t>(r * 12 + col);
      std::uint16_t expected_bf16;
      detail::cast_elements(DType::F32, full.data() + 4 * i, DType::BF16,
                            reinterpret_cast<std::byte*>(&expected_bf16), 1);
      const std::byte* shard = r >= 7 ? c.data() : col < 5 ? a.data() : b.data();
      const std::int64_t cols = r >= 7 ? 12 : col < 5 ? 5 : 7;
      const std::int64_t lr = r >= 7 ? r - 7 : r, lc = r >= 7 ? col : col < 5 ? col : col - 5;
      std::uint16_t got;
      std::memcpy(&got, shard + 2 * (lr * cols + lc), 2);
      wrong += got != expected_bf16;
      wrong += !same_value(whole[i], element(DType::F32, full.data(), i));
    }
  }
  BOOST_TEST(wrong == 0u);
}

BOOST_AUTO_TEST_CASE(strict_dtype_and_non_floating_differences_are_refused) {
  TempDir dir;
  std::vector<std::byte> values = float_values(DType::F32, 20);
  OwnedTensor ids(DType::I32, {20}, 1);
  StateDict sd;
  sd.add("w", TensorView{values.data(), DType::F32, {20}});
  sd.add("ids", ids.view);
  save(sd, dir.path(), save_options());

  std::vector<std::byte> half(40, std::byte{0x11});
  StateDict as_f16;
  as_f16.add("w", TensorView{half.data(), DType::F16, {20}});
  DefaultLoadPlanner strict(DefaultLoadPlanner::Options{.strict_dtype = true});
  BOOST_CHECK_EXCEPTION(load(as_f16, dir.path(), load_options(&strict)), Error,
                        [](const Error& e) {
                          return e.code() == ErrorCode::kMismatch && e.where() == "w" &&
                                 std::string(e.what()).find("strict_dtype") != std::string::npos;
                        });
  BOOST_TEST((half == std::vector<std::byte>(40, std::byte{0x11})));  // nothing written
  load(as_f16, dir.path(), load_options());  // without strict_dtype, cast
  BOOST_TEST(element(DType::F16, half.data(), 10) ==
             static_cast<double>(static_cast<_Float16>(element(DType::F32, values.data(), 10))));

  // I32 stored, F32 asked for: not a floating cast, refused even so.
  std::vector<float> as_float(20);
  StateDict ids_as_f32;
  ids_as_f32.add("ids", TensorView{as_float.data(), DType::F32, {20}});
  BOOST_CHECK_EXCEPTION(load(ids_as_f32, dir.path(), load_options()), Error, [](const Error& e) {
    return e.code() == ErrorCode::kMismatch && e.where() == "ids";
  });
  // A shape difference is refused whatever the dtype.
  std::vector<double> wrong_shape(21);
  StateDict bad;
  bad.add("w", TensorView{wrong_shape.data(), DType::F64, {21}});
  BOOST_CHECK_EXCEPTION(load(bad, dir.path(), load_options()), Error, [](const Error& e) {
    return e.code() == ErrorCode::kMismatch && e.where() == "w";
  });
}

// ---------------------------------------------------------------------------
// resolve_bytes.

// Routes every blob into the planner's own Bytes; counts load_bytes calls.
class BlobRouter : public DefaultLoadPlanner {
 public:
  Bytes* resolve_bytes(const ReadItem& item) override { return &routed[item.dest_index.fqn]; }
  void load_bytes(const ReadItem& item, std::span<const std::byte> value) override {
    ++load_bytes_calls;
    DefaultLoadPlanner::load_bytes(item, value);
  }
  std::map<std::string, Bytes> routed;
  int load_bytes_calls = 0;
};

class CountingPlanner : public DefaultLoadPlanner {
 public:
  void load_bytes(const ReadItem& item, std::span<const std::byte> value) override {
    ++load_bytes_calls;
    DefaultLoadPlanner::load_bytes(item, value);
  }
  int load_bytes_calls = 0;
};

BOOST_AUTO_TEST_CASE(resolve_bytes_takes_blobs_instead_of_load_bytes) {
  TempDir dir;
  StateDict sd;
  sd.add("step", bytes_of(std::int64_t{99}));
  sd.add("config", bytes_of(std::string_view("{\"lr\": 0.1}")));
  sd.add("empty", Bytes{});
  save(sd, dir.path(), save_options());

  StateDict into;
  into.add("step", Bytes{});
  into.add("config", Bytes{});
  into.add("empty", bytes_of(std::string_view("replaced")));
  BlobRouter router;
  load(into, dir.path(), load_options(&router));
  BOOST_TEST(router.load_bytes_calls == 0);
  BOOST_TEST((router.routed.at("step") == bytes_of(std::int64_t{99})));
  BOOST_TEST((router.routed.at("config") == bytes_of(std::string_view("{\"lr\": 0.1}"))));
  BOOST_TEST(router.routed.at("empty").empty());
  BOOST_TEST(std::get<Bytes>(*into.find("step")).empty());  // the router kept them

  // A planner that does not override resolve_bytes gets load_bytes, once a blob.
  CountingPlanner counting;
  load(into, dir.path(), load_options(&counting));
  BOOST_TEST(counting.load_bytes_calls == 3);
  BOOST_TEST((std::get<Bytes>(*into.find("step")) == bytes_of(std::int64_t{99})));
  BOOST_TEST(std::get<Bytes>(*into.find("empty")).empty());
}

// ---------------------------------------------------------------------------
// dedup_save_to_lowest_rank, and the committed Metadata on every rank.

namespace {

// Saves `sd` (replicated on every rank) from `world` thread ranks; returns
// each rank's return value of save.
std::vector<Metadata> save_replicated(const StateDict& sd, const fs::path& dir, int world,
                                      DefaultSavePlanner::Options options) {
  ThreadGroup group(world);
  std::vector<Metadata> returned(world);
  std::vector<std::string> errors(world);
  std::vector<std::thread> ranks;
  for (int r = 0; r < world; ++r) {
    ranks.emplace_back([&, r] {
      try {
        DefaultSavePlanner planner(options);
        returned[r] = save(sd, dir, save_options(&planner, &group.member(r)));
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : ranks) t.join();
  for (int r = 0; r < world; ++r) BOOST_TEST_REQUIRE(errors[r] == "", "rank " << r);
  return returned;
}

std::set<std::string> files_written(const Metadata& md) {
  std::set<std::string> paths;
  for (const auto& [index, info] : md.storage_data) paths.insert(info.relative_path);
  return paths;
}

}  // namespace

BOOST_AUTO_TEST_CASE(dedup_to_lowest_rank_keeps_every_replicated_item_on_rank_0) {
  std::vector<OwnedTensor> tensors;
  for (int i = 0; i < 6; ++i) tensors.emplace_back(DType::F32, Shape{64 * (i + 1), 16}, i + 1);
  StateDict sd;
  for (int i = 0; i < 6; ++i) sd.add("t" + std::to_string(i), tensors[i].view);
  sd.add("step", bytes_of(std::int64_t{5}));

  // The plans: with the option every item stays on rank 0.
  DefaultSavePlanner lowest(DefaultSavePlanner::Options{.dedup_save_to_lowest_rank = true});
  lowest.set_up_planner(sd, true);
  const SavePlan local = lowest.create_local_plan();
  auto [plans, md] = lowest.create_global_plan(std::vector<SavePlan>(3, local));
  BOOST_TEST(plans[0].items.size() == local.items.size());
  BOOST_TEST(plans[1].items.empty());
  BOOST_TEST(plans[2].items.empty());

  // Through three thread ranks: one data file holds everything ...
  TempDir low_dir, balanced_dir;
  save_replicated(sd, low_dir.path(), 3, {.dedup_save_to_lowest_rank = true});
  const Metadata low = read_metadata(low_dir.path());
  BOOST_TEST(files_written(low) == std::set<std::string>{test::data_file(low_dir.path(), 0)},
             boost::test_tools::per_element());
  // ... while the default spreads the same items over the ranks.
  save_replicated(sd, balanced_dir.path(), 3, {});
  BOOST_TEST(files_written(read_metadata(balanced_dir.path())).size() == 3u);

  std::vector<OwnedTensor> back;
  StateDict into;
  for (int i = 0; i < 6; ++i) {
    back.push_back(tensors[i].blank_like());
    into.add("t" + std::to_string(i), back.back().view);
  }
  into.add("step", Bytes{});
  load(into, low_dir.path(), load_options());
  for (int i = 0; i < 6; ++i) BOOST_TEST((back[i].storage == tensors[i].storage), "t" << i);
}

BOOST_AUTO_TEST_CASE(save_returns_the_committed_metadata_on_every_rank) {
  TempDir dir;
  OwnedTensor w(DType::F32, {128, 32}, 1), b(DType::BF16, {77}, 2);
  StateDict sd;
  sd.add("w", w.view);
  sd.add("b", b.view);
  sd.add("step", bytes_of(std::int64_t{3}));
  const std::vector<Metadata> returned = save_replicated(sd, dir.path(), 3, {});
  const Metadata on_disk = read_metadata(dir.path());
  BOOST_TEST_REQUIRE(!on_disk.files.empty());
  for (int r = 0; r < 3; ++r) {
    BOOST_TEST_CONTEXT("rank " << r) {
      const Metadata& md = returned[r];
      BOOST_TEST(md.state_dict_metadata.size() == on_disk.state_dict_metadata.size());
      for (const auto& [fqn, item] : on_disk.state_dict_metadata) {
        BOOST_TEST(md.state_dict_metadata.count(fqn) == 1u, fqn);
      }
      BOOST_TEST((md.storage_data == on_disk.storage_data));
      BOOST_TEST((md.files == on_disk.files));
      BOOST_TEST((md.planner_data == on_disk.planner_data));
    }
  }
}

// ---------------------------------------------------------------------------
// validate_checkpoint_id.

BOOST_AUTO_TEST_CASE(validate_checkpoint_id_says_whether_a_path_is_usable) {
  TempDir dir;
  const fs::path ckpt = dir / "ckpt";
  BOOST_TEST(FileSystemWriter::validate_checkpoint_id(ckpt));             // created by the save
  BOOST_TEST(FileSystemWriter::validate_checkpoint_id(ckpt / "a" / "b"));  // so are parents
  BOOST_TEST(!FileSystemReader::validate_checkpoint_id(ckpt));             // nothing there yet
  BOOST_TEST(!FileSystemWriter::validate_checkpoint_id(""));
  BOOST_TEST(!FileSystemWriter::validate_checkpoint_id("s3://bucket/ckpt"));
  BOOST_TEST(!FileSystemReader::validate_checkpoint_id("s3://bucket/ckpt"));

  StateDict sd;
  sd.add("step", bytes_of(std::int64_t{1}));
  save(sd, ckpt, save_options());
  BOOST_TEST(FileSystemReader::validate_checkpoint_id(ckpt));
  BOOST_TEST(FileSystemWriter::validate_checkpoint_id(ckpt));

  // A regular file is neither a checkpoint nor a place to save one.
  const fs::path file = dir / "plain";
  std::ofstream(file) << "x";
  BOOST_TEST(!FileSystemReader::validate_checkpoint_id(file));
  BOOST_TEST(!FileSystemWriter::validate_checkpoint_id(file));
  BOOST_TEST(!FileSystemWriter::validate_checkpoint_id(file / "under"));
  // A directory without metadata.json is no checkpoint; a linked
  // metadata.json is not followed.
  fs::create_directories(dir / "empty");
  BOOST_TEST(!FileSystemReader::validate_checkpoint_id(dir / "empty"));
  fs::create_directories(dir / "linked");
  fs::create_symlink(ckpt / "metadata.json", dir / "linked" / "metadata.json");
  BOOST_TEST(!FileSystemReader::validate_checkpoint_id(dir / "linked"));
}

// ---------------------------------------------------------------------------
// storage_meta: what FileSystemWriter::storage_meta() returns is committed.

namespace {

// The generation in the name of rank 0's first data file in dir:
// __0_{generation}_0.safetensors.
std::string generation_of(const fs::path& dir) {
  const std::string name = test::data_file(dir);
  return name.substr(4, 16);
}

}  // namespace

BOOST_AUTO_TEST_CASE(file_system_writer_storage_meta_is_nullopt_before_planning) {
  TempDir dir;
  FileSystemWriter writer(dir / "ckpt", test::small_io());
  BOOST_TEST(!writer.storage_meta().has_value());
  writer.prepare_global_plan(std::vector<SavePlan>(2));
  const std::optional<StorageMeta> meta = writer.storage_meta();
  BOOST_TEST_REQUIRE(meta.has_value());
  BOOST_TEST(meta->checkpoint_id == (dir / "ckpt").string());
  BOOST_TEST(meta->save_id.size() == 16u);
  BOOST_TEST(meta->load_id.empty());
  BOOST_TEST(meta->modules.empty());
  writer.reset(dir / "other");
  BOOST_TEST(!writer.storage_meta().has_value());
}

BOOST_AUTO_TEST_CASE(save_records_storage_meta_with_the_generation_of_its_files) {
  TempDir dir;
  const fs::path ckpt = dir / "ckpt";
  OwnedTensor w(DType::F32, {64, 8}, 1);
  StateDict sd;
  sd.add("w", w.view);
  const Metadata returned = save(sd, ckpt, save_options());
  const Metadata first = read_metadata(ckpt);
  BOOST_TEST_REQUIRE(first.storage_meta.has_value());
  BOOST_TEST(first.storage_meta->checkpoint_id == ckpt.string());
  BOOST_TEST(first.storage_meta->save_id == generation_of(ckpt));
  BOOST_TEST(first.storage_meta->load_id.empty());
  BOOST_TEST(first.storage_meta->modules.empty());
  BOOST_TEST((returned.storage_meta == first.storage_meta));

  // Another save over it: a fresh save_id, again the one naming its files.
  SaveOptions again = save_options();
  again.overwrite = true;
  save(sd, ckpt, again);
  const Metadata second = read_metadata(ckpt);
  BOOST_TEST_REQUIRE(second.storage_meta.has_value());
  BOOST_TEST(second.storage_meta->save_id == generation_of(ckpt));
  BOOST_TEST(second.storage_meta->save_id != first.storage_meta->save_id);
  BOOST_TEST(second.storage_meta->checkpoint_id == ckpt.string());
}

// Every rank's returned Metadata carries it too (rank 0's, shared).
BOOST_AUTO_TEST_CASE(storage_meta_reaches_every_rank) {
  TempDir dir;
  OwnedTensor w(DType::F32, {96, 8}, 3);
  StateDict sd;
  sd.add("w", w.view);
  const std::vector<Metadata> returned = save_replicated(sd, dir.path(), 3, {});
  const Metadata on_disk = read_metadata(dir.path());
  BOOST_TEST_REQUIRE(on_disk.storage_meta.has_value());
  BOOST_TEST(on_disk.storage_meta->save_id == generation_of(dir.path()));
  for (int r = 0; r < 3; ++r) BOOST_TEST((returned[r].storage_meta == on_disk.storage_meta), r);
}

// A Checkpointer's saves too, the second one through the cached plan.
BOOST_AUTO_TEST_CASE(checkpointer_saves_record_storage_meta) {
  TempDir dir;
  const fs::path ckpt = dir / "ckpt";
  OwnedTensor w(DType::F32, {64, 8}, 2);
  StateDict sd;
  sd.add("w", w.view);
  Checkpointer checkpointer(CheckpointerOptions{.io = test::small_io()});
  const Metadata first = checkpointer.save(sd, ckpt);
  BOOST_TEST_REQUIRE(first.storage_meta.has_value());
  BOOST_TEST(first.storage_meta->checkpoint_id == ckpt.string());
  BOOST_TEST(first.storage_meta->save_id == generation_of(ckpt));
  BOOST_TEST((read_metadata(ckpt).storage_meta == first.storage_meta));

  const Metadata second = checkpointer.save(sd, ckpt, AsyncSaveOptions{.overwrite = true});
  BOOST_TEST(checkpointer.plan_cache().cached == 1u);
  BOOST_TEST_REQUIRE(second.storage_meta.has_value());
  BOOST_TEST(second.storage_meta->save_id == generation_of(ckpt));
  BOOST_TEST(second.storage_meta->save_id != first.storage_meta->save_id);
  BOOST_TEST((read_metadata(ckpt).storage_meta == second.storage_meta));
}
