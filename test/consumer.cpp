// test/consumer.cpp — a program outside the project, built by
// install_consumer.sh against the installed headers, library and ringckpt.pc.
// It uses the public API only.
#include <ringckpt/ringckpt.hpp>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

int main() {
  namespace fs = std::filesystem;
  std::random_device rd;
  const fs::path dir =
      fs::temp_directory_path() / ("ringckpt-consumer-" + std::to_string(rd()) + std::to_string(rd()));
  int rc = 1;
  try {
    std::vector<float> weight(4096 + 17);
    std::vector<std::int32_t> bias(37);
    for (std::size_t i = 0; i < weight.size(); ++i) weight[i] = static_cast<float>(i) * 0.25f - 3.0f;
    for (std::size_t i = 0; i < bias.size(); ++i) bias[i] = static_cast<std::int32_t>(i * i) - 100;
    const std::uint64_t step = 1000;

    ringckpt::StateDict sd;
    sd.add("model.weight", ringckpt::TensorView{weight.data(), ringckpt::DType::F32,
                                                {static_cast<std::int64_t>(weight.size())}});
    sd.add("model.bias", ringckpt::TensorView{bias.data(), ringckpt::DType::I32, {37}});
    sd.add("step", ringckpt::bytes_of(step));

    ringckpt::SaveOptions so;
    so.io.extent_size = 64 << 10;
    so.io.ring_bytes = 1 << 20;
    ringckpt::save(sd, dir, so);

    std::vector<float> weight2(weight.size());
    std::vector<std::int32_t> bias2(bias.size());
    ringckpt::StateDict into;
    into.add("model.weight", ringckpt::TensorView{weight2.data(), ringckpt::DType::F32,
                                                  {static_cast<std::int64_t>(weight2.size())}});
    into.add("model.bias", ringckpt::TensorView{bias2.data(), ringckpt::DType::I32, {37}});
    into.add("step", ringckpt::Bytes{});
    ringckpt::LoadOptions lo;
    lo.io = so.io;
    ringckpt::load(into, dir, lo);

    std::size_t same = 0;
    same += weight2 == weight;
    same += bias2 == bias;
    same += std::get<ringckpt::Bytes>(*into.find("step")) == ringckpt::bytes_of(step);
    if (same == 3) {
      std::printf("consumer ok: %zu entries round-tripped\n", into.size());
      rc = 0;
    } else {
      std::printf("consumer FAILED: only %zu of 3 entries round-tripped\n", same);
    }
  } catch (const std::exception& e) {
    std::printf("consumer FAILED: %s\n", e.what());
  }
  std::error_code ignored;
  fs::remove_all(dir, ignored);
  return rc;
}
