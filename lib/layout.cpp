#include "layout.hpp"

#include <map>

#include "ringckpt/error.hpp"
#include "safetensors.hpp"

namespace ringckpt {

std::uint64_t SaveLayout::total_bytes() const noexcept {
  std::uint64_t total = 0;
  for (const auto& f : files) total += f.size;
  return total;
}

std::string safetensors_name(const WriteItem& item) {
  if (item.type != WriteItemType::SHARD || !item.index.offset) return item.index.fqn;
  std::string name = item.index.fqn + "@";
  for (std::size_t d = 0; d < item.index.offset->size(); ++d) {
    if (d) name += ',';
    name += std::to_string((*item.index.offset)[d]);
  }
  return name;
}

static SafetensorsEntry entry_for(const WriteItem& item, std::uint64_t begin) {
  SafetensorsEntry e;
  e.name = safetensors_name(item);
  if (item.type == WriteItemType::BYTE_IO || !item.tensor_data) {
    e.dtype = DType::U8;
    e.shape = {static_cast<std::int64_t>(item.bytes_io_size)};
  } else {
    e.dtype = item.tensor_data->properties.dtype;
    e.shape = item.tensor_data->chunk.sizes;
  }
  e.begin = begin;
  e.end = begin + item.nbytes();
  return e;
}

// Completes a file whose items hold data offsets relative to the data start.
static FileLayout finish_file(const SavePlan& plan, std::string path,
                              std::vector<std::size_t> items) {
  FileLayout file;
  file.relative_path = std::move(path);
  std::vector<SafetensorsEntry> entries;
  entries.reserve(items.size());
  std::uint64_t data = 0;
  for (std::size_t i : items) {
    entries.push_back(entry_for(plan.items[i], data));
    data += plan.items[i].nbytes();
  }
  file.header = encode_safetensors_header(entries, {{"format", "ringckpt"}});
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
