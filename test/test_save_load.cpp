#define BOOST_TEST_MODULE save_load
#include <boost/test/unit_test.hpp>

#include <cstring>
#include <fstream>
#include <list>
#include <thread>

#include "io/data_file.hpp"
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

namespace {

// Saves `tensors` under names t0, t1, ... and loads them into blanks; checks
// every byte.
void round_trip(const std::vector<OwnedTensor>& tensors, const std::filesystem::path& dir,
                SaveOptions so = save_options()) {
  StateDict sd;
  for (std::size_t i = 0; i < tensors.size(); ++i) sd.add("t" + std::to_string(i), tensors[i].view);
  save(sd, dir, so);
  std::vector<OwnedTensor> blanks;
  for (const auto& t : tensors) blanks.push_back(t.blank_like());
  StateDict into;
  for (std::size_t i = 0; i < blanks.size(); ++i) into.add("t" + std::to_string(i), blanks[i].view);
  load(into, dir, load_options());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    BOOST_TEST_INFO("tensor t" << i);
    BOOST_TEST((blanks[i].storage == tensors[i].storage));
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(every_dtype_round_trips) {
  TempDir dir;
  std::vector<OwnedTensor> tensors;
  std::uint64_t seed = 1;
  for (DType t : kAllDTypes) tensors.emplace_back(t, Shape{3, 7, 5}, seed++);
  round_trip(tensors, dir.path());
  // Each safetensors entry carries the dtype's own name.
  auto header = read_header(dir / test::first_data_file(dir.path()));
  BOOST_TEST(header.entries.size() == std::size(kAllDTypes));
  for (const auto& e : header.entries) {
    std::size_t i = std::stoul(e.name.substr(1));
    BOOST_TEST(dtype_name(e.dtype) == dtype_name(kAllDTypes[i]));
  }
}

BOOST_AUTO_TEST_CASE(zero_dim_empty_and_odd_sized_tensors) {
  TempDir dir;
  std::vector<OwnedTensor> tensors;
  tensors.emplace_back(DType::F32, Shape{}, 1);           // 0-d scalar
  tensors.emplace_back(DType::F32, Shape{0}, 2);          // empty
  tensors.emplace_back(DType::BF16, Shape{0, 5}, 3);      // empty, 2-d
  tensors.emplace_back(DType::U8, Shape{4097}, 4);        // one byte past a block
  tensors.emplace_back(DType::F16, Shape{3, 333, 7}, 5);  // odd everything
  tensors.emplace_back(DType::I8, Shape{1}, 6);
  round_trip(tensors, dir.path());
  // The file is exactly header + data: the padded O_DIRECT tail was cut.
  std::uint64_t data = 0;
  for (const auto& t : tensors) data += t.view.nbytes();
  auto header = read_header(dir / test::first_data_file(dir.path()));
  BOOST_TEST(header.data_start % 4096 == 0u);
  BOOST_TEST(std::filesystem::file_size(dir / test::first_data_file(dir.path())) == header.data_start + data);
}

BOOST_AUTO_TEST_CASE(ten_thousand_small_tensors) {
  TempDir dir;
  std::vector<OwnedTensor> tensors;
  tensors.reserve(10000);
  for (int i = 0; i < 10000; ++i) tensors.emplace_back(DType::F32, Shape{1 + i % 17}, 100 + i);
  round_trip(tensors, dir.path());
  Metadata md = read_metadata(dir.path());
  BOOST_TEST(md.state_dict_metadata.size() == 10000u);
  BOOST_TEST(md.storage_data.size() == 10000u);
}

BOOST_AUTO_TEST_CASE(one_tensor_spanning_many_extents) {
  TempDir dir;
  std::vector<OwnedTensor> tensors;
  tensors.emplace_back(DType::F32, Shape{1001, 1237}, 42);  // ~4.7 MiB over 64 KiB extents
  round_trip(tensors, dir.path());
  Metadata md = read_metadata(dir.path());
  BOOST_TEST_REQUIRE(md.files.size() == 1u);
  BOOST_TEST(md.files[0].extent_size == 64u << 10);
  BOOST_TEST(md.files[0].extent_checksums.size() ==
             (md.files[0].size + (64u << 10) - 1) / (64u << 10));
  BOOST_TEST(md.files[0].extent_checksums.size() > 70u);
}

BOOST_AUTO_TEST_CASE(byte_blobs_round_trip) {
  TempDir dir;
  OwnedTensor w(DType::F32, {16, 16}, 7);
  StateDict sd;
  sd.add("step", bytes_of(std::int64_t{1234}));
  sd.add("model.w", w.view);
  sd.add("config", bytes_of(std::string_view("{\"lr\": 0.001}")));
  sd.add("empty", Bytes{});
  save(sd, dir.path(), save_options());

  OwnedTensor w2 = w.blank_like();
  StateDict into;
  into.add("step", Bytes{});
  into.add("model.w", w2.view);
  into.add("config", Bytes{});
  into.add("empty", Bytes{std::byte{9}});
  load(into, dir.path(), load_options());
  std::int64_t step = 0;
  const Bytes& s = std::get<Bytes>(*into.find("step"));
  BOOST_TEST_REQUIRE(s.size() == sizeof step);
  std::memcpy(&step, s.data(), sizeof step);
  BOOST_TEST(step == 1234);
  const Bytes& c = std::get<Bytes>(*into.find("config"));
  BOOST_TEST(std::string(reinterpret_cast<const char*>(c.data()), c.size()) == "{\"lr\": 0.001}");
  BOOST_TEST(std::get<Bytes>(*into.find("empty")).empty());
  BOOST_TEST((w2.storage == w.storage));
  // Blobs are U8 tensors in the safetensors file and bytes in the metadata.
  auto header = read_header(dir / test::first_data_file(dir.path()));
  bool found = false;
  for (const auto& e : header.entries) {
    if (e.name == "step") {
      found = true;
      BOOST_TEST(dtype_name(e.dtype) == "U8");
      BOOST_TEST(e.shape == Shape{8}, boost::test_tools::per_element());
    }
  }
  BOOST_TEST(found);
  Metadata md = read_metadata(dir.path());
  BOOST_TEST(std::holds_alternative<BytesStorageMetadata>(md.state_dict_metadata.at("step")));
}

BOOST_AUTO_TEST_CASE(single_rank_safetensors_names_are_fqns_in_plan_order) {
  TempDir dir;
  OwnedTensor a(DType::F32, {4}, 1), b(DType::BF16, {2, 3}, 2);
  StateDict sd;
  sd.add("layers.0.attn.q", a.view);
  sd.add("layers.0.attn.k", b.view);
  save(sd, dir.path(), save_options());
  auto header = read_header(dir / test::first_data_file(dir.path()));
  BOOST_TEST_REQUIRE(header.entries.size() == 2u);
  BOOST_TEST(header.entries[0].name == "layers.0.attn.q");
  BOOST_TEST(header.entries[1].name == "layers.0.attn.k");
  BOOST_TEST(header.entries[0].begin == 0u);
  BOOST_TEST(header.entries[1].begin == header.entries[0].end);  // no holes
}

BOOST_AUTO_TEST_CASE(saving_over_a_checkpoint_is_refused_unless_asked) {
  TempDir dir;
  OwnedTensor a(DType::F32, {8}, 1), b(DType::F32, {8}, 2);
  StateDict sd;
  sd.add("x", a.view);
  save(sd, dir.path(), save_options());
  const std::string before = test::slurp(dir / "metadata.json");
  StateDict other;
  other.add("x", b.view);
  BOOST_CHECK_EXCEPTION(save(other, dir.path(), save_options()), Error, [](const Error& e) {
    return e.code() == ErrorCode::kAlreadyExists &&
           std::string(e.what()).find("metadata.json") != std::string::npos;
  });
  // Nothing already saved was touched.
  BOOST_TEST(test::slurp(dir / "metadata.json") == before);
  OwnedTensor back = a.blank_like();
  StateDict into;
  into.add("x", back.view);
  load(into, dir.path(), load_options());
  BOOST_TEST((back.storage == a.storage));

  SaveOptions over = save_options();
  over.overwrite = true;
  save(other, dir.path(), over);
  load(into, dir.path(), load_options());
  BOOST_TEST((back.storage == b.storage));
}

BOOST_AUTO_TEST_CASE(strict_load_names_the_key_at_fault) {
  TempDir dir;
  OwnedTensor w(DType::F32, {4, 4}, 1);
  StateDict sd;
  sd.add("w", w.view);
  sd.add("step", bytes_of(7));
  save(sd, dir.path(), save_options());

  auto fails_with = [&](StateDict& into, ErrorCode code, const std::string& key) {
    BOOST_CHECK_EXCEPTION(load(into, dir.path(), load_options()), Error, [&](const Error& e) {
      BOOST_TEST_MESSAGE(e.what());
      return e.code() == code && std::string(e.what()).find(key) != std::string::npos;
    });
  };
  OwnedTensor extra(DType::F32, {4}, 2), wrong_shape(DType::F32, {4, 5}, 3),
      wrong_dtype(DType::I32, {4, 4}, 4), good = w.blank_like();  // not a floating cast
  {
    StateDict into;
    into.add("w", good.view);
    into.add("not.saved", extra.view);
    fails_with(into, ErrorCode::kNotFound, "not.saved");
    // allow_partial_load lets the missing key pass and loads the rest.
    DefaultLoadPlanner partial({.allow_partial_load = true});
    LoadOptions lo = load_options();
    lo.planner = &partial;
    load(into, dir.path(), lo);
    BOOST_TEST((good.storage == w.storage));
  }
  {
    StateDict into;
    into.add("w", wrong_shape.view);
    fails_with(into, ErrorCode::kMismatch, "w");
  }
  {
    StateDict into;
    into.add("w", wrong_dtype.view);
    fails_with(into, ErrorCode::kMismatch, "I32");
  }
  {
    StateDict into;
    into.add("step", extra.view);  // saved as bytes, asked as a tensor
    fails_with(into, ErrorCode::kMismatch, "step");
  }
  {
    StateDict into;
    into.add("w", good.view);
    BOOST_CHECK_EXCEPTION(load(into, dir / "nowhere", load_options()), Error, [](const Error& e) {
      return e.code() == ErrorCode::kNotFound &&
             std::string(e.what()).find("metadata.json") != std::string::npos;
    });
  }
}

// Saves and loads where O_DIRECT is granted (ext4) and where it may be
// refused (tmpfs before Linux 6.6, ramfs always): the writer uses O_DIRECT
// exactly where the file system grants it, and reports the fallback.
BOOST_AUTO_TEST_CASE(o_direct_where_granted_and_reported_fallback_where_refused) {
  ringckpt::test::RamfsMount ramfs;
  std::vector<std::filesystem::path> roots = {"/var/tmp", "/dev/shm"};
  if (ramfs.mounted()) {
    roots.push_back(ramfs.path());
  } else {
    BOOST_TEST_MESSAGE("ramfs cannot be mounted here: the refusal path is tested only on "
                       "file systems that refuse O_DIRECT");
  }
  bool saw_refusal = false;
  for (const auto& root : roots) {
    if (!std::filesystem::is_directory(root)) continue;
    TempDir dir(root);
    const bool granted = ringckpt::test::grants_o_direct(dir.path());
    saw_refusal |= !granted;
    OwnedTensor t(DType::F32, {333, 77}, 9);
    StateDict sd;
    sd.add("t", t.view);
    std::vector<std::string> notes;
    IoOptions io = small_io();
    io.report = [&](std::string_view m) { notes.emplace_back(m); };
    FileSystemWriter writer(dir.path(), io);
    save(sd, writer);
    BOOST_TEST_INFO("root " << root << (granted ? " grants" : " refuses") << " O_DIRECT");
    BOOST_TEST(writer.report().direct_io == granted);
    const bool said = std::any_of(notes.begin(), notes.end(), [](const std::string& n) {
      return n.find("O_DIRECT refused") != std::string::npos;
    });
    BOOST_TEST(said == !granted);  // the fallback is reported, and only then
    OwnedTensor back = t.blank_like();
    StateDict into;
    into.add("t", back.view);
    FileSystemReader reader(dir.path(), small_io());
    load(into, reader);
    BOOST_TEST((back.storage == t.storage));
    BOOST_TEST(verify(dir.path(), small_io()).ok());
  }
  if (ramfs.mounted()) BOOST_TEST(saw_refusal);
}

// Two ranks save a row-sharded tensor and a replicated one; three ranks (and
// one rank, whole) load them back with other shardings.
BOOST_AUTO_TEST_CASE(resharding_across_world_sizes) {
  TempDir dir;
  constexpr std::int64_t kRows = 30, kCols = 7;
  OwnedTensor full(DType::F32, {kRows, kCols}, 5);
  OwnedTensor bias(DType::F32, {kCols}, 6);
  const std::size_t row_bytes = kCols * 4;

  auto shard_of = [&](std::int64_t r0, std::int64_t rows, std::vector<std::byte>& storage) {
    storage.assign(full.storage.begin() + r0 * row_bytes,
                   full.storage.begin() + (r0 + rows) * row_bytes);
    ShardedTensor st{DType::F32, {kRows, kCols}, {}};
    st.shards.push_back({TensorView{storage.data(), DType::F32, {rows, kCols}}, {r0, 0}});
    return st;
  };
  {
    ThreadGroup group(2);
    std::vector<std::thread> ranks;
    std::vector<std::vector<std::byte>> storage(2);
    for (int r = 0; r < 2; ++r) {
      ranks.emplace_back([&, r] {
        StateDict sd;
        sd.add("w", shard_of(r * 15, 15, storage[r]));
        sd.add("bias", bias.view);  // replicated: written once
        SaveOptions o = save_options();
        o.coordinator = &group.member(r);
        save(sd, dir.path(), o);
      });
    }
    for (auto& t : ranks) t.join();
  }
  Metadata md = read_metadata(dir.path());
  const auto& w = std::get<TensorStorageMetadata>(md.state_dict_metadata.at("w"));
  BOOST_TEST(w.chunks.size() == 2u);
  BOOST_TEST(std::get<TensorStorageMetadata>(md.state_dict_metadata.at("bias")).chunks.size() == 1u);
  {
    ThreadGroup group(3);
    std::vector<std::thread> ranks;
    std::vector<std::vector<std::byte>> storage(3);
    std::vector<std::vector<std::byte>> loaded(3);
    std::vector<OwnedTensor> biases(3, bias.blank_like());
    for (int r = 0; r < 3; ++r) {
      ranks.emplace_back([&, r] {
        StateDict sd;
        ShardedTensor st = shard_of(r * 10, 10, storage[r]);
        std::fill(storage[r].begin(), storage[r].end(), std::byte{0});
        sd.add("w", st);
        sd.add("bias", biases[r].view);
        LoadOptions o = load_options();
        o.coordinator = &group.member(r);
        load(sd, dir.path(), o);
        loaded[r] = storage[r];
      });
    }
    for (auto& t : ranks) t.join();
    for (int r = 0; r < 3; ++r) {
      BOOST_TEST_INFO("rank " << r);
      BOOST_TEST(std::equal(loaded[r].begin(), loaded[r].end(),
                            full.storage.begin() + r * 10 * row_bytes));
      BOOST_TEST((biases[r].storage == bias.storage));
    }
  }
  {  // one rank, the whole tensor
    OwnedTensor whole = full.blank_like();
    StateDict sd;
    sd.add("w", whole.view);
    load(sd, dir.path(), load_options());
    BOOST_TEST((whole.storage == full.storage));
  }
  {  // column shards: a box copy with one run per row
    OwnedTensor cols(DType::F32, {kRows, 3}, 0);
    ShardedTensor st{DType::F32, {kRows, kCols}, {{cols.view, {0, 4}}}};
    StateDict sd;
    sd.add("w", st);
    load(sd, dir.path(), load_options());
    for (std::int64_t r = 0; r < kRows; ++r) {
      BOOST_TEST(std::memcmp(cols.storage.data() + r * 12,
                             full.storage.data() + r * row_bytes + 16, 12) == 0);
    }
  }
}

BOOST_AUTO_TEST_CASE(several_files_per_rank_when_asked) {
  TempDir dir;
  std::vector<OwnedTensor> tensors;
  for (int i = 0; i < 6; ++i) tensors.emplace_back(DType::F32, Shape{100, 100}, 50 + i);
  SaveOptions so = save_options();
  so.io.max_file_bytes = 80000;
  round_trip(tensors, dir.path(), so);
  Metadata md = read_metadata(dir.path());
  BOOST_TEST(md.files.size() == 3u);
  BOOST_TEST(std::filesystem::exists(dir / test::data_file(dir.path(), 0, 2)));
  BOOST_TEST(verify(dir.path(), small_io()).ok());
}
