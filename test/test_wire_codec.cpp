#define BOOST_TEST_MODULE wire_codec
#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "plan/mpi_layout.hpp"
#include "plan/wire_codec.hpp"
#include "ringckpt/checkpoint.hpp"
#include "ringckpt/coordinator.hpp"
#include "ringckpt/default_planner.hpp"
#include "ringckpt/error.hpp"
#include "test_util.hpp"

using namespace ringckpt;
namespace utf = boost::unit_test;

namespace {

constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t kMin = std::numeric_limits<std::int64_t>::min();
constexpr std::uint64_t kMaxU = std::numeric_limits<std::uint64_t>::max();

// ------------------------------------------------------------ field by field
// The plan types compare MetadataIndex without its hint; these compare it too
// (as test_util.hpp's check_same of an index and of Metadata do).

using ringckpt::test::check_same;

void check_same(const WriteItem& a, const WriteItem& b) {
  check_same(a.index, b.index);
  BOOST_TEST((a.type == b.type));
  BOOST_TEST_REQUIRE(a.tensor_data.has_value() == b.tensor_data.has_value());
  if (a.tensor_data) {
    BOOST_TEST(a.tensor_data->chunk.offsets == b.tensor_data->chunk.offsets);
    BOOST_TEST(a.tensor_data->chunk.sizes == b.tensor_data->chunk.sizes);
    BOOST_TEST((a.tensor_data->properties.dtype == b.tensor_data->properties.dtype));
    BOOST_TEST(a.tensor_data->size == b.tensor_data->size);
  }
  BOOST_TEST(a.bytes_io_size == b.bytes_io_size);
}

void check_same(const SavePlan& a, const SavePlan& b) {
  BOOST_TEST_REQUIRE(a.items.size() == b.items.size());
  for (std::size_t i = 0; i < a.items.size(); ++i) {
    BOOST_TEST_CONTEXT("item " << i) { check_same(a.items[i], b.items[i]); }
  }
  BOOST_TEST(a.storage_data == b.storage_data);
  BOOST_TEST((a.planner_data == b.planner_data));
  BOOST_TEST(a.usable == b.usable);
}

void check_same(const LoadPlan& a, const LoadPlan& b) {
  BOOST_TEST_REQUIRE(a.items.size() == b.items.size());
  for (std::size_t i = 0; i < a.items.size(); ++i) {
    BOOST_TEST_CONTEXT("item " << i) {
      const ReadItem& x = a.items[i];
      const ReadItem& y = b.items[i];
      BOOST_TEST((x.type == y.type));
      check_same(x.dest_index, y.dest_index);
      BOOST_TEST(x.dest_offsets == y.dest_offsets);
      check_same(x.storage_index, y.storage_index);
      BOOST_TEST(x.storage_offsets == y.storage_offsets);
      BOOST_TEST(x.lengths == y.lengths);
    }
  }
  BOOST_TEST(a.storage_data == b.storage_data);
  BOOST_TEST((a.planner_data == b.planner_data));
}

void check_same(const WriteResults& a, const WriteResults& b) {
  BOOST_TEST_REQUIRE(a.items.size() == b.items.size());
  for (std::size_t i = 0; i < a.items.size(); ++i) {
    check_same(a.items[i].index, b.items[i].index);
    BOOST_TEST(a.items[i].size_in_bytes == b.items[i].size_in_bytes);
    BOOST_TEST((a.items[i].storage_data == b.items[i].storage_data));
  }
  BOOST_TEST((a.files == b.files));
}

// ------------------------------------------------------------ samples

TensorWriteData tensor(Shape offsets, Shape sizes, DType dtype, Shape size) {
  return TensorWriteData{{std::move(offsets), std::move(sizes)}, {dtype}, std::move(size)};
}

SavePlan sample_save_plan() {
  SavePlan plan;
  // A whole tensor, then one of the same shape (sizes as the previous item).
  plan.items.push_back({{"model.embed.weight", Shape{0, 0}, 0}, WriteItemType::TENSOR,
                        tensor({0, 0}, {4096, 512}, DType::BF16, {4096, 512}), 0});
  plan.items.push_back({{"model.layers.0.attn.q_proj.weight", std::nullopt, std::nullopt},
                        WriteItemType::TENSOR, tensor({0, 0}, {4096, 512}, DType::F8_E4M3,
                                                      {4096, 512}), 0});
  // Shards: offsets equal to the index offset, and offsets that are not.
  plan.items.push_back({{"model.layers.0.mlp.w1", Shape{2048, 0}, 3}, WriteItemType::SHARD,
                        tensor({2048, 0}, {2048, 512}, DType::F32, {4096, 512}), 0});
  // Sizes, dtype and global shape as the previous item's; offsets zero.
  plan.items.push_back({{"model.layers.1.mlp.w1", Shape{0, 0}, 2}, WriteItemType::SHARD,
                        tensor({0, 0}, {2048, 512}, DType::F32, {4096, 512}), 0});
  plan.items.push_back({{"model.layers.0.mlp.w2", Shape{1, 1}, std::nullopt}, WriteItemType::SHARD,
                        tensor({0, 7}, {3, 5}, DType::F16, {9, 12}), 0});
  // Offsets of another rank than the sizes; a 0-d tensor; a zero dimension.
  plan.items.push_back({{"odd.rank", std::nullopt, 1}, WriteItemType::SHARD,
                        tensor({0}, {2, 2}, DType::U8, {2, 2}), 0});
  plan.items.push_back({{"scalar", Shape{}, 0}, WriteItemType::TENSOR,
                        tensor({}, {}, DType::F64, {}), 0});
  plan.items.push_back({{"empty", std::nullopt, std::nullopt}, WriteItemType::TENSOR,
                        tensor({0, 0}, {0, 3}, DType::I32, {0, 3}), 0});
  // Extreme dimensions, negative ones included: the payload carries, it does
  // not judge.
  plan.items.push_back({{"huge", Shape{kMin, -1}, std::numeric_limits<std::size_t>::max()},
                        WriteItemType::SHARD,
                        tensor({kMax, 0}, {kMax, 1}, DType::U64, {kMax, kMax}),
                        kMaxU});
  // BYTE_IO, with and without a size; UTF-8, NUL and empty names.
  plan.items.push_back({{"step", std::nullopt, std::nullopt}, WriteItemType::BYTE_IO,
                        std::nullopt, 8});
  plan.items.push_back({{"", std::nullopt, std::nullopt}, WriteItemType::BYTE_IO, std::nullopt, 0});
  plan.items.push_back({{"gewicht.größe.重み", std::nullopt, 2}, WriteItemType::BYTE_IO,
                        std::nullopt, 1});
  plan.items.push_back({{std::string("nul\0name", 8), std::nullopt, std::nullopt},
                        WriteItemType::BYTE_IO, std::nullopt, 300});
  plan.storage_data = std::string("writer\0state \xff\"", 15);
  plan.planner_data = {{"a", "1"}, {"", ""}, {"bin", std::string("\0\x01", 2)}};
  plan.usable = false;
  return plan;
}

LoadPlan sample_load_plan() {
  LoadPlan plan;
  plan.items.push_back({LoadItemType::TENSOR, {"model.w", Shape{2, 0}, 1}, {0, 3},
                        {"model.w", Shape{0, 0}, 0}, {2, 3}, {1, 3}});
  plan.items.push_back({LoadItemType::TENSOR, {"model.v", std::nullopt, std::nullopt}, {kMax},
                        {"model.v.old", Shape{kMin}, std::nullopt}, {-5}, {kMax}});
  plan.items.push_back({LoadItemType::BYTE_IO, {"step", std::nullopt, std::nullopt}, {},
                        {"step", std::nullopt, 4}, {}, {}});
  plan.storage_data = "{\"nested\": \"json\"}";
  plan.planner_data = {{"k", "v"}};
  return plan;
}

WriteResults sample_write_results() {
  WriteResults results;
  results.items.push_back({{"w", Shape{0, 0}, 0}, 24, {"__0_0.safetensors", 4096, 24}});
  results.items.push_back({{"step", std::nullopt, std::nullopt}, 8,
                           {"__0_0.safetensors", kMaxU, 8}});
  results.items.push_back({{"x", std::nullopt, 9}, kMaxU, {"__0_1.safetensors", 0, 0}});
  results.files.push_back({"__0_0.safetensors", 4128, 4096, {1, 2}});
  results.files.push_back({"__0_1.safetensors", 0, 4096, {}});
  return results;
}

Metadata sample_metadata() {
  Metadata md;
  md.version = 3;  // the payload carries, it does not judge
  md.state_dict_metadata["model.w"] =
      TensorStorageMetadata{{DType::BF16}, {4, 6}, {{{0, 0}, {2, 6}}, {{2, 0}, {2, 6}}}};
  md.state_dict_metadata["odd \"name\"\n\x01\xff"] =
      TensorStorageMetadata{{DType::F64}, {}, {ChunkStorageMetadata{{}, {}}}};
  md.state_dict_metadata["empty"] = TensorStorageMetadata{{DType::I32}, {0, 3}, {}};
  md.state_dict_metadata["step"] = BytesStorageMetadata{};
  md.state_dict_metadata[""] = BytesStorageMetadata{};
  md.storage_data[{"model.w", Shape{0, 0}, 0}] = {"__0_0.safetensors", 4096, 24};
  md.storage_data[{"model.w", Shape{2, 0}, std::nullopt}] = {"__1_0.safetensors", 4096, 24};
  md.storage_data[{"step", std::nullopt, std::nullopt}] = {"__0_0.safetensors", 4128, 8};
  md.files.push_back({"__0_0.safetensors", 4136, 4096, {0x0123456789abcdefULL, 42}});
  md.files.push_back({"__1_0.safetensors", 4120, 8192, {kMaxU}});
  md.planner_data = {{"planner", "default"}, {"dedup", "true"}};
  return md;
}

// sample_metadata with storage_meta set, strings of any bytes.
Metadata sample_metadata_with_storage_meta() {
  Metadata md = sample_metadata();
  md.storage_meta = StorageMeta{"/ckpt/step-7", "0123456789abcdef", std::string("lo\0d", 4),
                                {"model", "", "optim"}};
  return md;
}

// A transformer's plan as the global plan holds it: per layer ten 2-D BF16
// weights, whole tensors (offset zero, chunk hint 0).
SavePlan transformer_plan(std::size_t entries) {
  static const char* const kParts[] = {"attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj",
                                       "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
                                       "input_layernorm", "post_attention_layernorm", "attn.rope"};
  SavePlan plan;
  for (std::size_t i = 0; i < entries; ++i) {
    const std::size_t part = i % std::size(kParts);
    const Shape shape =
        part < 4 ? Shape{4096, 4096} : part < 7 ? Shape{11008, 4096} : Shape{1, 4096};
    const std::string fqn =
        "model.layers." + std::to_string(i / std::size(kParts)) + "." + kParts[part] + ".weight";
    plan.items.push_back({{fqn, Shape{0, 0}, 0}, WriteItemType::TENSOR,
                          tensor({0, 0}, shape, DType::BF16, shape), 0});
  }
  plan.planner_data = {{"planner", "default"}};
  return plan;
}

// A whole tensor as DefaultSavePlanner plans it: index offset zero, no hint.
WriteItem whole(std::string fqn, Shape shape) {
  return {{std::move(fqn), Shape(shape.size(), 0), std::nullopt}, WriteItemType::TENSOR,
          tensor(Shape(shape.size(), 0), shape, DType::BF16, shape), 0};
}

// Rank `rank`'s local plan of issue 10's scenario (1,024 ranks): per layer
// five row shards of BF16 tensors split over all ranks, then five replicated
// whole tensors, as DefaultSavePlanner plans them.
SavePlan rank_plan(std::size_t entries, std::int64_t rank, std::int64_t ranks) {
  static const char* const kParts[] = {
      "attention.wq.weight",    "attention.wk.weight",    "attention.wv.weight",
      "attention.wo.weight",    "feed_forward.w1.weight", "feed_forward.w2.weight",
      "feed_forward.w3.weight", "attention_norm.weight",  "ffn_norm.weight",
      "attention.inner_attention.rope.freqs"};
  SavePlan plan;
  for (std::size_t i = 0; i < entries; ++i) {
    const std::size_t part = i % std::size(kParts);
    std::string fqn =
        "model.layers." + std::to_string(i / std::size(kParts)) + "." + kParts[part];
    if (part < 5) {
      const std::int64_t cols = part == 4 ? 11008 : 4096;
      const Shape offsets{16 * rank, 0};
      plan.items.push_back({{std::move(fqn), offsets, std::nullopt}, WriteItemType::SHARD,
                            tensor(offsets, {16, cols}, DType::BF16, {16 * ranks, cols}), 0});
    } else {
      plan.items.push_back(whole(std::move(fqn), part == 5   ? Shape{4096, 11008}
                                                 : part == 6 ? Shape{11008, 4096}
                                                 : part == 9 ? Shape{64}
                                                             : Shape{4096}));
    }
  }
  return plan;
}

// Every encoded sample, with a decoder that accepts it.
struct Sample {
  const char* what;
  std::string bytes;
  std::function<void(std::string_view)> decode;
};

std::vector<Sample> samples() {
  return {
      {"save plan", wire::encode(sample_save_plan()),
       [](std::string_view b) { wire::decode_save_plan(b, "sample"); }},
      {"empty save plan", wire::encode(SavePlan{}),
       [](std::string_view b) { wire::decode_save_plan(b, "sample"); }},
      {"load plan", wire::encode(sample_load_plan()),
       [](std::string_view b) { wire::decode_load_plan(b, "sample"); }},
      {"write results", wire::encode(sample_write_results()),
       [](std::string_view b) { wire::decode_write_results(b, "sample"); }},
      {"metadata", wire::encode(sample_metadata()),
       [](std::string_view b) { wire::decode_metadata(b, "sample"); }},
      {"metadata with storage meta", wire::encode(sample_metadata_with_storage_meta()),
       [](std::string_view b) { wire::decode_metadata(b, "sample"); }},
      {"ok status", wire::encode_ok(std::string("pay\0load", 8)),
       [](std::string_view b) { wire::decode_status(b, "sample"); }},
      {"failed status", wire::encode_failure({3, ErrorCode::kIo, "file", "disk full"}),
       [](std::string_view b) { wire::decode_status(b, "sample"); }},
  };
}

// A predicate for BOOST_CHECK_EXCEPTION: kCorrupt, about `source`, with `text`.
auto corrupt_with(std::string source, std::string text) {
  return [source = std::move(source), text = std::move(text)](const Error& e) {
    return e.code() == ErrorCode::kCorrupt && e.where() == source &&
           e.message().find(text) != std::string::npos;
  };
}

}  // namespace

// ================================================================ round trips

BOOST_AUTO_TEST_SUITE(round_trips)

BOOST_AUTO_TEST_CASE(save_plan) {
  const SavePlan plan = sample_save_plan();
  check_same(wire::decode_save_plan(wire::encode(plan), "p"), plan);
  const SavePlan empty = wire::decode_save_plan(wire::encode(SavePlan{}), "p");
  check_same(empty, SavePlan{});
  BOOST_TEST(empty.usable);
}

BOOST_AUTO_TEST_CASE(load_plan) {
  const LoadPlan plan = sample_load_plan();
  check_same(wire::decode_load_plan(wire::encode(plan), "p"), plan);
  check_same(wire::decode_load_plan(wire::encode(LoadPlan{}), "p"), LoadPlan{});
}

BOOST_AUTO_TEST_CASE(write_results) {
  const WriteResults results = sample_write_results();
  check_same(wire::decode_write_results(wire::encode(results), "r"), results);
  check_same(wire::decode_write_results(wire::encode(WriteResults{}), "r"), WriteResults{});
}

BOOST_AUTO_TEST_CASE(metadata) {
  const Metadata md = sample_metadata();
  check_same(wire::decode_metadata(wire::encode(md), "m"), md);
  Metadata negative;
  negative.version = std::numeric_limits<int>::min();
  check_same(wire::decode_metadata(wire::encode(negative), "m"), negative);
}

BOOST_AUTO_TEST_CASE(metadata_storage_meta) {
  const Metadata md = sample_metadata_with_storage_meta();
  const Metadata back = wire::decode_metadata(wire::encode(md), "m");
  check_same(back, md);
  BOOST_TEST_REQUIRE(back.storage_meta.has_value());
  BOOST_TEST((*back.storage_meta == *md.storage_meta));
  // Empty fields, and none at all, come back as such.
  Metadata empty;
  empty.storage_meta = StorageMeta{};
  BOOST_TEST((wire::decode_metadata(wire::encode(empty), "m").storage_meta == StorageMeta{}));
  BOOST_TEST(!wire::decode_metadata(wire::encode(Metadata{}), "m").storage_meta.has_value());
  // The presence byte ends a payload without it: 0 or 1, any other value refused.
  std::string bad = wire::encode(Metadata{});
  BOOST_TEST_REQUIRE(bad.back() == '\0');
  bad.back() = '\x02';
  BOOST_CHECK_EXCEPTION(wire::decode_metadata(bad, "m"), Error,
                        corrupt_with("m", "storage meta flag 2 is neither absent nor present"));
  // A module count beyond the bytes left is refused before allocating.
  bad.back() = '\x01';
  bad += std::string("\x00\x00\x00\xff\xff\xff\xff\x0f", 8);
  BOOST_CHECK_EXCEPTION(wire::decode_metadata(bad, "m"), Error,
                        corrupt_with("m", "storage meta module count 4294967295"));
}

BOOST_AUTO_TEST_CASE(rank_status_keeps_every_field) {
  const std::string payload("binary\0payload\xff", 15);
  const wire::RankStatus ok = wire::decode_status(wire::encode_ok(payload), "s");
  BOOST_TEST(!ok.failure.has_value());
  BOOST_TEST(ok.payload == payload);

  // Separator characters and NUL bytes in the fields are kept as they are.
  const wire::RankError failure{7, ErrorCode::kMismatch, std::string("a|b\0c", 5), "x|y!z\n"};
  const wire::RankStatus failed = wire::decode_status(wire::encode_failure(failure), "s");
  BOOST_TEST_REQUIRE(failed.failure.has_value());
  BOOST_TEST(failed.failure->rank == 7);
  BOOST_TEST((failed.failure->code == ErrorCode::kMismatch));
  BOOST_TEST(failed.failure->where == failure.where);
  BOOST_TEST(failed.failure->message == failure.message);
  BOOST_TEST(failed.payload.empty());

  const Error e = wire::to_error(*failed.failure);
  BOOST_TEST((e.code() == ErrorCode::kMismatch));
  BOOST_TEST(e.where() == failure.where);
  BOOST_TEST(e.message() == failure.message + " (on rank 7)");
}

BOOST_AUTO_TEST_CASE(fingerprint_follows_the_plan) {
  const SavePlan plan = sample_save_plan();
  BOOST_TEST(wire::fingerprint(wire::encode(plan)) ==
             wire::fingerprint(wire::encode(sample_save_plan())));
  SavePlan other = plan;
  other.items[2].tensor_data->chunk.sizes[0] = 2047;
  BOOST_TEST(wire::fingerprint(wire::encode(other)) != wire::fingerprint(wire::encode(plan)));
  other = plan;
  other.planner_data["a"] = "2";
  BOOST_TEST(wire::fingerprint(wire::encode(other)) != wire::fingerprint(wire::encode(plan)));
}

// 1,000 entries of dotted names, BF16, 2-D shapes: a few tens of KB.
BOOST_AUTO_TEST_CASE(transformer_plan_is_compact) {
  const SavePlan plan = transformer_plan(1000);
  const std::string bytes = wire::encode(plan);
  BOOST_TEST(bytes.size() < std::size_t{64} << 10);
  BOOST_TEST(bytes.size() < std::size_t{12} << 10);  // about 10 bytes an item
  check_same(wire::decode_save_plan(bytes, "p"), plan);
}

// Issue 10's scenario: a rank of 1,024 with 1,000 entries, half row shards,
// half replicated, sends under 16 KB (32,030 bytes in wire version 1).
BOOST_AUTO_TEST_CASE(a_rank_of_1024_sends_1000_entries_in_under_16_kb) {
  for (std::int64_t rank : {0, 1, 511, 1023}) {
    BOOST_TEST_CONTEXT("rank " << rank) {
      const SavePlan plan = rank_plan(1000, rank, 1024);
      const std::string bytes = wire::encode(plan);
      BOOST_TEST(bytes.size() < std::size_t{16} << 10);
      check_same(wire::decode_save_plan(bytes, "p"), plan);
    }
  }
}

// A replicated whole tensor whose name's components were all seen before, of
// the shape and dtype of the item before it: its name (shared count, count of
// the rest, two components by number), a head byte and a tensor flags byte.
BOOST_AUTO_TEST_CASE(a_replicated_item_costs_its_name_and_two_bytes) {
  SavePlan plan;
  plan.items.push_back(whole("model.layers.0.attention_norm.weight", {4096}));
  plan.items.push_back(whole("model.layers.0.ffn_norm.weight", {4096}));
  plan.items.push_back(whole("model.layers.1.attention_norm.weight", {4096}));
  const std::size_t before = wire::encode(plan).size();
  plan.items.push_back(whole("model.layers.1.ffn_norm.weight", {4096}));
  const std::string bytes = wire::encode(plan);
  BOOST_TEST(bytes.size() - before == 6u);
  check_same(wire::decode_save_plan(bytes, "p"), plan);
}

// Names of every form come back as they went: empty components, dots at
// either end, repeated components, a name equal to the previous one, a name
// that is a prefix of the previous one, NUL bytes.
BOOST_AUTO_TEST_CASE(names_of_every_form_come_back) {
  const std::vector<std::string> names = {
      "",     ".",    "..",   "a",     "a.",   ".a",  "a..b", "a.b.a.b", "a.b.a.b",
      "a.b",  "a",    "b.a",  "model.layers.0.w", "model.layers.0", "model.layers.10.w",
      std::string("nul\0.x", 6), "x.y.z.x.y.z.x"};
  SavePlan plan;
  for (const std::string& n : names) {
    plan.items.push_back({{n, std::nullopt, std::nullopt}, WriteItemType::BYTE_IO, std::nullopt, 1});
  }
  check_same(wire::decode_save_plan(wire::encode(plan), "p"), plan);
}

BOOST_AUTO_TEST_SUITE_END()

// ================================================================ hostile input

BOOST_AUTO_TEST_SUITE(hostile_input)

BOOST_AUTO_TEST_CASE(every_truncation_throws_corrupt) {
  for (const Sample& s : samples()) {
    BOOST_TEST_CONTEXT(s.what) {
      BOOST_TEST_REQUIRE(s.bytes.size() > wire::kHeaderSize);
      BOOST_CHECK_NO_THROW(s.decode(s.bytes));
      std::size_t refused = 0;
      for (std::size_t n = 0; n < s.bytes.size(); ++n) {
        try {
          s.decode(std::string_view(s.bytes).substr(0, n));
        } catch (const Error& e) {
          refused += e.code() == ErrorCode::kCorrupt && e.where() == "sample";
        }
      }
      BOOST_TEST(refused == s.bytes.size());
      // One byte too many is refused too.
      BOOST_CHECK_EXCEPTION(s.decode(s.bytes + '\0'), Error,
                            corrupt_with("sample", "after the end of the payload"));
    }
  }
}

// Any bit flipped anywhere: decoded or refused with an Error, never a crash,
// a hang or bad_alloc.
BOOST_AUTO_TEST_CASE(every_bit_flip_decodes_or_throws_error) {
  for (const Sample& s : samples()) {
    std::size_t other = 0;
    for (std::size_t i = 0; i < s.bytes.size(); ++i) {
      for (int bit = 0; bit < 8; ++bit) {
        std::string bad = s.bytes;
        bad[i] = static_cast<char>(bad[i] ^ (1 << bit));
        try {
          s.decode(bad);
        } catch (const Error& e) {
          other += e.code() != ErrorCode::kCorrupt;
        } catch (...) {
          ++other;
        }
      }
    }
    BOOST_TEST_CONTEXT(s.what) { BOOST_TEST(other == 0u); }
  }
}

BOOST_AUTO_TEST_CASE(header_is_checked) {
  std::string bytes = wire::encode(sample_save_plan());
  std::string bad = bytes;
  bad[1] = 7;
  BOOST_CHECK_EXCEPTION(wire::decode_save_plan(bad, "save plan from rank 3"), Error,
                        corrupt_with("save plan from rank 3", "wire version 7"));
  bad = bytes;
  bad[0] = '{';
  BOOST_CHECK_EXCEPTION(wire::decode_save_plan(bad, "p"), Error,
                        corrupt_with("p", "not a ringckpt wire payload (first byte 0x7b)"));
  BOOST_CHECK_EXCEPTION(wire::decode_load_plan(bytes, "p"), Error,
                        corrupt_with("p", "a save plan payload where a load plan was expected"));
  bad = bytes;
  bad[2] = static_cast<char>(wire::Kind::kSamePlan);
  BOOST_CHECK_EXCEPTION(wire::decode_save_plan(bad, "p"), Error,
                        corrupt_with("p", "same-plan token"));
  bad[2] = 99;
  BOOST_CHECK_EXCEPTION(wire::decode_save_plan(bad, "p"), Error, corrupt_with("p", "kind 99"));
  BOOST_CHECK_EXCEPTION(wire::decode_status("", "p"), Error, corrupt_with("p", "truncated"));
}

// A payload built by hand: the header of `kind`, then `body`.
std::string payload(wire::Kind kind, std::string body) {
  return std::string{static_cast<char>(wire::kMagic), static_cast<char>(wire::kVersion),
                     static_cast<char>(kind)} +
         body;
}

BOOST_AUTO_TEST_CASE(counts_are_checked_before_allocating) {
  // 2^62 items, 2^63 - 1 string bytes: refused without an allocation.
  const std::string huge_count("\x80\x80\x80\x80\x80\x80\x80\x80\x40", 9);
  BOOST_CHECK_EXCEPTION(wire::decode_save_plan(payload(wire::Kind::kSavePlan, huge_count), "p"),
                        Error, corrupt_with("p", "write item count 4611686018427387904"));
  const std::string long_string("\x00\xff\xff\xff\xff\xff\xff\xff\xff\x7f", 10);
  BOOST_CHECK_EXCEPTION(wire::decode_status(payload(wire::Kind::kRankStatus, long_string), "p"),
                        Error, corrupt_with("p", "string length count"));
  // 2^61 extent checksums of 8 bytes each.
  const std::string files = std::string("\x01\x00\x00\x00\x00", 5) +
                            std::string("\x80\x80\x80\x80\x80\x80\x80\x80\x20", 9) + "01234567";
  BOOST_CHECK_EXCEPTION(wire::decode_write_results(payload(wire::Kind::kWriteResults,
                                                           std::string(1, '\0') + files), "p"),
                        Error, corrupt_with("p", "extent checksum count"));
}

// Bytes that stand for earlier ones (a shared name prefix, a repeated shape)
// may not make a small payload expand without bound.
BOOST_AUTO_TEST_CASE(expansion_is_bounded) {
  SavePlan names;  // 2,000 names of 60,000 bytes: 74 KB standing for 120 MB
  for (int i = 0; i < 2000; ++i) {
    names.items.push_back({{std::string(60000, 'n'), std::nullopt, std::nullopt},
                           WriteItemType::BYTE_IO, std::nullopt, 0});
  }
  std::string bytes = wire::encode(names);
  BOOST_TEST(bytes.size() < std::size_t{80} << 10);
  BOOST_CHECK_EXCEPTION(wire::decode_save_plan(bytes, "p"), Error,
                        corrupt_with("p", "expand past"));

  SavePlan shapes;  // 200 items of the same 100,000-dimension shape
  const Shape wide(100000, 1);
  for (int i = 0; i < 200; ++i) {
    shapes.items.push_back({{"w", std::nullopt, std::nullopt}, WriteItemType::TENSOR,
                            tensor(Shape(100000, 0), wide, DType::U8, wide), 0});
  }
  bytes = wire::encode(shapes);
  BOOST_TEST(bytes.size() < std::size_t{200} << 10);
  BOOST_CHECK_EXCEPTION(wire::decode_save_plan(bytes, "p"), Error,
                        corrupt_with("p", "expand past"));
}

BOOST_AUTO_TEST_CASE(varints_are_shortest_and_fit) {
  // Zero items written as two bytes.
  const std::string two_byte_zero("\x80\x00\x00\x00", 4);
  BOOST_CHECK_EXCEPTION(wire::decode_load_plan(payload(wire::Kind::kLoadPlan, two_byte_zero), "p"),
                        Error, corrupt_with("p", "shortest form"));
  // Eleven bytes; and ten whose last carries bits past 64.
  BOOST_CHECK_EXCEPTION(
      wire::decode_load_plan(payload(wire::Kind::kLoadPlan, std::string(10, '\xff') + '\x01'), "p"),
      Error, corrupt_with("p", "overflows 64 bits"));
  BOOST_CHECK_EXCEPTION(
      wire::decode_load_plan(payload(wire::Kind::kLoadPlan, std::string(9, '\xff') + '\x02'), "p"),
      Error, corrupt_with("p", "overflows 64 bits"));
}

BOOST_AUTO_TEST_CASE(fields_are_checked) {
  // Names: more shared components than the previous name has, a component
  // never defined, no component at all (then a head byte).
  auto first_name = [](std::string name) {
    return wire::decode_save_plan(payload(wire::Kind::kSavePlan, "\x01" + name + '\0'), "p");
  };
  BOOST_CHECK_EXCEPTION(first_name(std::string("\x05\x00", 2)), Error,
                        corrupt_with("p", "shares 5 components with a previous name of 0"));
  BOOST_CHECK_EXCEPTION(first_name(std::string("\x00\x01\x03", 3)), Error,
                        corrupt_with("p", "name component 2 is not defined (0 so far)"));
  BOOST_CHECK_EXCEPTION(first_name(std::string("\x00\x00", 2)), Error,
                        corrupt_with("p", "a name has no component"));
  // Bad dtype, item type, flags, usable, status tag, error code, rank.
  const std::string item = std::string("\x01\x00\x01\x00\x01w", 6);  // one item "w"
  auto save_plan = [&](std::string rest) {
    return wire::decode_save_plan(payload(wire::Kind::kSavePlan, item + rest), "p");
  };
  BOOST_CHECK_EXCEPTION(save_plan(std::string("\x10\x00\x40", 3)), Error,
                        corrupt_with("p", "dtype 64"));
  BOOST_CHECK_EXCEPTION(save_plan(std::string("\x03", 1)), Error,
                        corrupt_with("p", "write item type 3"));
  BOOST_CHECK_EXCEPTION(save_plan(std::string("\x80", 1)), Error,
                        corrupt_with("p", "bad write item flags 128"));
  // The index offset said to be the chunk's, without a chunk.
  BOOST_CHECK_EXCEPTION(save_plan(std::string("\x24", 1)), Error,
                        corrupt_with("p", "bad write item flags 36"));
  BOOST_CHECK_EXCEPTION(save_plan(std::string("\x10\x20", 2)), Error,
                        corrupt_with("p", "bad tensor flags 32"));
  // The global shape both the chunk's and the previous item's.
  BOOST_CHECK_EXCEPTION(save_plan(std::string("\x10\x0c", 2)), Error,
                        corrupt_with("p", "bad tensor flags 12"));
  BOOST_CHECK_EXCEPTION(save_plan(std::string("\x10\x01", 2)), Error,
                        corrupt_with("p", "refers to a previous one"));
  BOOST_CHECK_EXCEPTION(save_plan(std::string("\x10\x10", 2)), Error,
                        corrupt_with("p", "refers to a previous one"));
  BOOST_CHECK_EXCEPTION(save_plan(std::string("\x02\x00\x00\x02", 4)), Error,
                        corrupt_with("p", "usable flag 2"));
  BOOST_CHECK_EXCEPTION(wire::decode_status(payload(wire::Kind::kRankStatus, "\x02"), "p"), Error,
                        corrupt_with("p", "status tag 2"));
  const std::string code_7("\x01\x00\x07\x00\x00", 5);
  BOOST_CHECK_EXCEPTION(wire::decode_status(payload(wire::Kind::kRankStatus, code_7), "p"), Error,
                        corrupt_with("p", "error code 7"));
  BOOST_CHECK_EXCEPTION(
      wire::decode_status(
          payload(wire::Kind::kRankStatus, std::string("\x01\x80\x80\x80\x80\x08\x00\x00\x00", 9)),
          "p"),
      Error, corrupt_with("p", "rank 2147483648"));
}

BOOST_AUTO_TEST_CASE(repeated_keys_are_refused) {
  // planner_data {"a": "", "a": ""} in an empty load plan.
  BOOST_CHECK_EXCEPTION(
      wire::decode_load_plan(payload(wire::Kind::kLoadPlan,
                                     std::string("\x00\x00\x02\x01" "a\x00\x01" "a\x00", 9)), "p"),
      Error, corrupt_with("p", "repeated or out of order"));
  // Metadata with two state dict entries "x", "x" (the second: one component
  // shared, none more).
  BOOST_CHECK_EXCEPTION(
      wire::decode_metadata(
          payload(wire::Kind::kMetadata,
                  std::string("\x02\x02\x00\x01\x00\x01x\x01\x01\x00\x01", 11)),
          "p"),
      Error, corrupt_with("p", "state dict entry 1 is repeated"));
}

BOOST_AUTO_TEST_SUITE_END()

// ================================================================ the protocol

// The default planner, but one that (when told to) refuses to make a local
// plan, with separator characters and a NUL byte in its error.
class RefusingPlanner final : public DefaultSavePlanner {
 public:
  explicit RefusingPlanner(bool refuse) : refuse_(refuse) {}
  SavePlan create_local_plan() override {
    if (refuse_) {
      throw Error(ErrorCode::kMismatch, "model.w|x", std::string("refused!|\0 here", 15));
    }
    return DefaultSavePlanner::create_local_plan();
  }

 private:
  bool refuse_;
};

// Runs fn(rank) on `world` threads, each a member of one ThreadGroup, and
// returns what each rank's Error said ("" if it threw none).
std::vector<std::string> errors_of_ranks(int world, const std::function<void(Coordinator&)>& fn) {
  ThreadGroup group(world);
  std::vector<std::string> errors(static_cast<std::size_t>(world));
  std::vector<std::thread> ranks;
  for (int r = 0; r < world; ++r) {
    ranks.emplace_back([&, r] {
      try {
        fn(group.member(r));
      } catch (const Error& e) {
        errors[r] = std::string(to_string(e.code())) + "#" + e.where() + "#" + e.message();
      }
    });
  }
  for (auto& t : ranks) t.join();
  return errors;
}

// Rank 1 refuses to plan: every rank throws its error, code, where and
// message intact, naming rank 1; nothing is committed.
BOOST_AUTO_TEST_CASE(a_rank_error_reaches_every_rank_intact, *utf::timeout(120)) {
  ringckpt::test::TempDir dir;
  std::vector<float> data(4, 1.0f);
  const auto errors = errors_of_ranks(3, [&](Coordinator& c) {
    StateDict sd;
    sd.add("model.w", TensorView{data.data(), DType::F32, {4}});
    RefusingPlanner planner(c.rank() == 1);
    SaveOptions o;
    o.io = ringckpt::test::small_io();
    o.planner = &planner;
    o.coordinator = &c;
    save(sd, dir.path(), o);
  });
  for (int r = 0; r < 3; ++r) {
    BOOST_TEST_CONTEXT("rank " << r) {
      BOOST_TEST(errors[r] == std::string("mismatch#model.w|x#refused!|\0 here (on rank 1)", 46));
    }
  }
  BOOST_TEST(!std::filesystem::exists(dir.path() / "metadata.json"));
}

// The same for load: rank 1 asks for a key the checkpoint does not hold.
BOOST_AUTO_TEST_CASE(a_load_error_reaches_every_rank_intact, *utf::timeout(120)) {
  ringckpt::test::TempDir dir;
  std::vector<float> data(4, 1.0f);
  {
    StateDict sd;
    sd.add("model.w", TensorView{data.data(), DType::F32, {4}});
    SaveOptions o;
    o.io = ringckpt::test::small_io();
    save(sd, dir.path(), o);
  }
  const auto errors = errors_of_ranks(2, [&](Coordinator& c) {
    std::vector<float> back(4, 0.0f);
    StateDict sd;
    sd.add("model.w", TensorView{back.data(), DType::F32, {4}});
    if (c.rank() == 1) sd.add("model.nope", TensorView{back.data(), DType::F32, {4}});
    LoadOptions o;
    o.io = ringckpt::test::small_io();
    o.coordinator = &c;
    load(sd, dir.path(), o);
  });
  for (int r = 0; r < 2; ++r) {
    BOOST_TEST_CONTEXT("rank " << r) {
      BOOST_TEST(errors[r] == "not found#model.nope#missing from the checkpoint (on rank 1)");
    }
  }
}

// ================================================================ MPI layout
// MpiCoordinator's counts and displacements are ints: mpi_layout sums the
// 64-bit payload sizes and names the first rank that makes them overflow.

BOOST_AUTO_TEST_SUITE(mpi_layout_checks)

BOOST_AUTO_TEST_CASE(sizes_that_fit_are_laid_back_to_back) {
  const std::vector<std::uint64_t> sizes = {3, 0, 5, 1};
  const ringckpt::detail::MpiLayout l = ringckpt::detail::mpi_layout(sizes);
  BOOST_TEST(l.overflowing_rank == -1);
  BOOST_TEST((l.counts == std::vector<int>{3, 0, 5, 1}));
  BOOST_TEST((l.displs == std::vector<int>{0, 3, 3, 8}));
  BOOST_TEST(l.total == 9u);
  BOOST_TEST(ringckpt::detail::mpi_layout({}).total == 0u);
  // Exactly INT_MAX bytes in all still fits.
  const std::uint64_t max = std::numeric_limits<int>::max();
  const std::vector<std::uint64_t> edge = {max - 10, 10};
  const ringckpt::detail::MpiLayout e = ringckpt::detail::mpi_layout(edge);
  BOOST_TEST(e.overflowing_rank == -1);
  BOOST_TEST(e.total == max);
  BOOST_TEST(e.displs.back() == std::numeric_limits<int>::max() - 10);
}

BOOST_AUTO_TEST_CASE(the_rank_that_overflows_int_is_named) {
  const std::uint64_t max = std::numeric_limits<int>::max();
  struct Case {
    std::vector<std::uint64_t> sizes;
    int rank;
  };
  const std::vector<Case> cases = {
      {{max + 1}, 0},                       // one payload alone
      {{1, max}, 1},                        // the sum, not any one size
      {{max / 2, max / 2, 2, 0}, 2},        // the displacement of the next would wrap
      {{5, std::uint64_t(-1), 1}, 1},       // 64-bit wrap-around is no escape
      {{0, 0, max, 1}, 3},
  };
  for (const Case& k : cases) {
    BOOST_TEST_CONTEXT("rank " << k.rank) {
      const ringckpt::detail::MpiLayout l = ringckpt::detail::mpi_layout(k.sizes);
      BOOST_TEST(l.overflowing_rank == k.rank);
      BOOST_TEST(l.counts.empty());
      BOOST_TEST(l.displs.empty());
    }
  }
  const Error e = ringckpt::detail::mpi_overflow_error("MPI_Gatherv", 3, max + 7);
  BOOST_TEST((e.code() == ErrorCode::kInvalidArgument));
  BOOST_TEST(e.where() == "rank 3");
  BOOST_TEST(std::string(e.what()).find("MPI_Gatherv") != std::string::npos);
  BOOST_TEST(std::string(e.what()).find(std::to_string(max + 7)) != std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()
