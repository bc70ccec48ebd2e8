#include "plan/layout.hpp"

#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <random>
#include <regex>

#include "ringckpt/error.hpp"
#include "format/safetensors.hpp"

namespace ringckpt {

std::uint64_t SaveLayout::total_bytes() const noexcept {
  std::uint64_t total = 0;
  for (const auto& f : files) total += f.size;
  return total;
}

namespace {
std::mutex fixed_generation_mu;
std::string fixed_generation;  // guarded by fixed_generation_mu
}  // namespace

void detail::fix_save_generation_for_tests(std::string generation) {
  std::lock_guard lock(fixed_generation_mu);
  fixed_generation = std::move(generation);
}

std::string new_save_generation() {
  {
    std::lock_guard lock(fixed_generation_mu);
    if (!fixed_generation.empty()) return fixed_generation;
  }
  std::random_device device;
  const auto now = static_cast<std::uint64_t>(
      std::chrono::system_clock::now().time_since_epoch().count());
  std::mt19937_64 mix((static_cast<std::uint64_t>(device()) << 32) ^ device() ^ now);
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(mix()));
  return text;
}

std::string data_prefix(int rank, std::string_view generation) {
  return "__" + std::to_string(rank) + "_" + std::string(generation) + "_";
}

bool is_data_file_name(std::string_view name) {
  static const std::regex pattern(R"(__\d+_([0-9a-f]{16}_)?\d+\.safetensors)");
  return std::regex_match(name.begin(), name.end(), pattern);
}

std::string safetensors_name(const WriteItem& item) {
  if (item.type != WriteItemType::SHARD || !item.index.offset) return item.index.fqn;
  return safetensors_shard_name(item.index.fqn, *item.index.offset);
}

std::string safetensors_shard_name(std::string_view fqn, std::span<const std::int64_t> offsets) {
  std::string name = std::string(fqn) + "@";
  for (std::size_t d = 0; d < offsets.size(); ++d) {
    if (d) name += ',';
    name += std::to_string(offsets[d]);
  }
  return name;
}

// Completes a file whose items hold data offsets relative to the data start.
static FileLayout finish_file(const SavePlan& plan, std::string path,
                              std::vector<std::size_t> items) {
  FileLayout file;
  file.relative_path = std::move(path);
  // Entries refer to the plan's names and shapes; what the plan does not hold
  // (a shard's name, a blob's shape) is kept here.
  std::vector<SafetensorsEntryRef> entries;
  entries.reserve(items.size());
  std::vector<std::string> shard_names;
  std::vector<std::int64_t> blob_sizes;
  blob_sizes.reserve(items.size());
  std::size_t shards = 0;
  for (std::size_t i : items) shards += plan.items[i].type == WriteItemType::SHARD;
  shard_names.reserve(shards);
  std::uint64_t data = 0;
  for (std::size_t i : items) {
    const WriteItem& item = plan.items[i];
    SafetensorsEntryRef e;
    if (item.type == WriteItemType::SHARD && item.index.offset) {
      e.name = shard_names.emplace_back(safetensors_name(item));
    } else {
      e.name = item.index.fqn;
    }
    if (item.type == WriteItemType::BYTE_IO || !item.tensor_data) {
      e.dtype = kBlobDType;
      e.shape = std::span<const std::int64_t>(
          &blob_sizes.emplace_back(static_cast<std::int64_t>(item.bytes_io_size)), 1);
    } else {
      e.dtype = item.tensor_data->properties.dtype;
      e.shape = item.tensor_data->chunk.sizes;
    }
    e.begin = data;
    e.end = data + item.nbytes();
    data = e.end;
    entries.push_back(e);
  }
  file.header = encode_safetensors_header_refs(entries, {{"format", "ringckpt"}});
  const std::uint64_t start = file.header.size();
  file.items.reserve(items.size());
  for (std::size_t k = 0; k < items.size(); ++k) {
    file.items.push_back({items[k], start + entries[k].begin, entries[k].end - entries[k].begin});
  }
  file.size = start + data;
  return file;
}

SaveLayout plan_layout(const SavePlan& plan, std::string_view prefix,
                       std::uint64_t max_file_bytes) {
  SaveLayout layout;
  std::vector<std::size_t> current;
  if (max_file_bytes == 0) current.reserve(plan.items.size());
  std::uint64_t current_bytes = 0;
  auto close_file = [&] {
    std::string path = std::string(prefix) + std::to_string(layout.files.size()) + ".safetensors";
    layout.files.push_back(finish_file(plan, std::move(path), std::move(current)));
    current.clear();
    current_bytes = 0;
  };
  for (std::size_t i = 0; i < plan.items.size(); ++i) {
    if (max_file_bytes != 0 && !current.empty() && current_bytes >= max_file_bytes) close_file();
    current.push_back(i);
    current_bytes += plan.items[i].nbytes();
  }
  if (!current.empty()) close_file();
  return layout;
}

}  // namespace ringckpt
