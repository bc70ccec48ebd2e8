// make_fuzz_seeds.cpp — writes the seed corpora of the fuzz targets from real
// saves: `make_fuzz_seeds DIR` saves a few small checkpoints into a fresh
// temporary directory (one rank, and two ranks of sharded tensors), then
// writes under DIR/<target>/ their metadata.json files, the headers of their
// data files, and wire payloads of their plans, results and metadata. Not run
// by CI: its output is committed in test/fuzz/corpus/.
#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "format/metadata_json.hpp"
#include "plan/wire_codec.hpp"
#include "ringckpt/checkpoint.hpp"
#include "ringckpt/coordinator.hpp"
#include "ringckpt/default_planner.hpp"

using namespace ringckpt;
namespace fs = std::filesystem;

namespace {

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + p.string());
}

SaveOptions small_options(Coordinator* coordinator) {
  SaveOptions o;
  o.io.extent_size = 64 << 10;
  o.io.ring_bytes = 1 << 20;
  o.io.queue_depth = 4;
  o.io.report = [](std::string_view) {};
  o.coordinator = coordinator;
  return o;
}

// The seeds of one saved checkpoint `ck`, named after `tag`; `sd` is what
// rank 0 saved.
void seeds_of(const fs::path& out, const std::string& tag, const fs::path& ck, const StateDict& sd) {
  const std::string json = read_all(ck / kMetadataFile);
  write_file(out / "fuzz_metadata_json" / (tag + ".json"), json);
  const Metadata metadata = decode_metadata(json, tag);

  for (std::size_t k = 0; k < metadata.files.size(); ++k) {
    const FileInfo& f = metadata.files[k];
    const std::string bytes = read_all(ck / f.relative_path);
    std::uint64_t n = 0;
    for (int i = 0; i < 8; ++i) n |= std::uint64_t{static_cast<unsigned char>(bytes.at(i))} << (8 * i);
    const std::uint64_t data_size = bytes.size() - 8 - n;
    std::string seed(4, '\0');
    for (int i = 0; i < 4; ++i) seed[i] = static_cast<char>((data_size >> (8 * i)) & 0xff);
    seed += bytes.substr(0, 8 + n);
    write_file(out / "fuzz_safetensors_header" / (tag + "_file" + std::to_string(k) + ".bin"), seed);
  }

  const auto wire_seed = [&](char selector, const std::string& name, const std::string& payload) {
    write_file(out / "fuzz_wire_codec" / (tag + "_" + name + ".bin"), selector + payload);
  };
  DefaultSavePlanner save_planner;
  save_planner.set_up_planner(sd, true);
  const SavePlan save_plan = save_planner.create_local_plan();
  wire_seed(0, "save_plan", wire::encode(save_plan));

  StateDict load_sd;  // where a load would put it: shapes as saved
  std::vector<std::vector<std::byte>> buffers;
  for (const auto& [fqn, sm] : metadata.state_dict_metadata) {
    if (const auto* t = std::get_if<TensorStorageMetadata>(&sm)) {
      load_sd.add(fqn, TensorView{nullptr, t->properties.dtype, t->size});
    } else {
      load_sd.add(fqn, Bytes{});
    }
  }
  DefaultLoadPlanner load_planner;
  load_planner.set_up_planner(load_sd, metadata, true);
  wire_seed(1, "load_plan", wire::encode(load_planner.create_local_plan()));

  WriteResults results;
  for (const auto& [index, info] : metadata.storage_data) {
    results.items.push_back({index, info.length, info});
  }
  results.files = metadata.files;
  wire_seed(2, "write_results", wire::encode(results));
  wire_seed(3, "metadata", wire::encode(metadata));
  wire_seed(4, "status_ok", wire::encode_ok(wire::encode(save_plan)));
  wire_seed(4, "status_failure",
            wire::encode_failure({1, ErrorCode::kCorrupt, tag + "/" + kMetadataFile,
                                  "bad | thing"}));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_fuzz_seeds DIR\n";
    return 2;
  }
  const fs::path out = argv[1];
  std::string tmp_template = (fs::temp_directory_path() / "ringckpt-seeds-XXXXXX").string();
  if (mkdtemp(tmp_template.data()) == nullptr) return 1;
  const fs::path tmp = tmp_template;

  // One rank: whole tensors of several dtypes and ranks, an empty one, a
  // scalar, a blob.
  std::vector<float> w(12, 0.5f);
  std::vector<std::uint16_t> h(8, 0x3f80);
  std::vector<std::int64_t> step{1000};
  {
    StateDict sd;
    sd.add("model.embed.weight", TensorView{w.data(), DType::F32, {4, 3}});
    sd.add("model.layers.0.attn.q_proj.weight", TensorView{h.data(), DType::BF16, {2, 2, 2}});
    sd.add("model.empty", TensorView{w.data(), DType::F16, {0, 5}});
    sd.add("model.scale", TensorView{w.data(), DType::F32, {}});
    sd.add("step", bytes_of(step[0]));
    save(sd, tmp / "single", small_options(nullptr));
    seeds_of(out, "single", tmp / "single", sd);
  }
  {
    StateDict sd;
    sd.add("optim.state", bytes_of(std::string_view("{\"lr\": 0.001}")));
    save(sd, tmp / "bytes_only", small_options(nullptr));
    seeds_of(out, "bytes_only", tmp / "bytes_only", sd);
  }
  // Two ranks (threads): a tensor sharded by rows, a replicated one.
  {
    ThreadGroup group(2);
    std::vector<std::vector<float>> shards(2, std::vector<float>(12, 1.0f));
    std::vector<StateDict> dicts(2);
    std::vector<std::thread> ranks;
    for (int r = 0; r < 2; ++r) {
      ShardedTensor st;
      st.dtype = DType::F32;
      st.global_shape = {4, 6};
      st.shards.push_back({TensorView{shards[r].data(), DType::F32, {2, 6}}, {2 * r, 0}});
      dicts[r].add("model.sharded", std::move(st));
      dicts[r].add("model.replicated", TensorView{w.data(), DType::F32, {4, 3}});
    }
    for (int r = 0; r < 2; ++r) {
      ranks.emplace_back([&, r] { save(dicts[r], tmp / "sharded", small_options(&group.member(r))); });
    }
    for (auto& t : ranks) t.join();
    seeds_of(out, "sharded", tmp / "sharded", dicts[0]);
  }

  // fuzz_chunk_intersection reads its bytes through FuzzedDataProvider: a few
  // fixed pseudo-random inputs.
  std::uint64_t x = 0x9e3779b97f4a7c15ull;
  for (int k = 0; k < 6; ++k) {
    std::string bytes(32 + 24 * k, '\0');
    for (char& c : bytes) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      c = static_cast<char>(x & 0xff);
    }
    write_file(out / "fuzz_chunk_intersection" / ("random_" + std::to_string(k) + ".bin"), bytes);
  }
  fs::remove_all(tmp);
  std::cout << "seeds written under " << out << "\n";
  return 0;
}
