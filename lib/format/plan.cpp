#include "ringckpt/plan.hpp"

#include <algorithm>
#include <cstring>
#include <map>

#include "format/storage_merge.hpp"

#include "ringckpt/error.hpp"

namespace ringckpt {

std::uint64_t WriteItem::nbytes() const noexcept {
  if (type == WriteItemType::BYTE_IO || !tensor_data) return bytes_io_size;
  return static_cast<std::uint64_t>(numel(tensor_data->chunk.sizes)) *
         dtype_size(tensor_data->properties.dtype);
}

ItemData ItemData::view(std::span<const std::byte> bytes) {
  ItemData d;
  d.size_ = bytes.size();
  d.data_ = bytes.data();
  return d;
}

ItemData ItemData::owned(std::vector<std::byte> bytes) {
  ItemData d;
  d.owned_ = std::make_shared<const std::vector<std::byte>>(std::move(bytes));
  d.size_ = d.owned_->size();
  d.data_ = d.owned_->data();
  return d;
}

ItemData ItemData::produced(std::uint64_t size, Producer producer) {
  ItemData d;
  d.size_ = size;
  d.producer_ = std::move(producer);
  return d;
}

void ItemData::copy_to(std::uint64_t offset, std::span<std::byte> out) const {
  if (out.empty()) return;
  if (producer_) {
    producer_(offset, out);
  } else {
    std::memcpy(out.data(), data_ + offset, out.size());
  }
}

namespace detail {

void for_each_merged_entry(const Metadata& metadata, const std::vector<WriteResults>& results,
                           const std::function<void(const MetadataIndex&, const StorageInfo&)>& f) {
  std::vector<const WriteResult*> added;
  for (const WriteResults& r : results) {
    for (const WriteResult& item : r.items) added.push_back(&item);
  }
  std::stable_sort(added.begin(), added.end(), [](const WriteResult* a, const WriteResult* b) {
    return a->index < b->index;
  });
  auto old = metadata.storage_data.begin();
  const auto old_end = metadata.storage_data.end();
  for (std::size_t b = 0; b < added.size();) {
    std::size_t e = b + 1;
    while (e < added.size() && added[e]->index == added[b]->index) ++e;
    const MetadataIndex& key = added[b]->index;
    const StorageInfo& value = added[e - 1]->storage_data;
    for (; old != old_end && old->first < key; ++old) f(old->first, old->second);
    if (old != old_end && old->first == key) {
      f(old->first, value);  // the map keeps its key, takes the new value
      ++old;
    } else {
      f(key, value);
    }
    b = e;
  }
  for (; old != old_end; ++old) f(old->first, old->second);
}

}  // namespace detail

void add_results(Metadata& metadata, const std::vector<WriteResults>& results) {
  const bool any_item = std::any_of(results.begin(), results.end(),
                                    [](const WriteResults& r) { return !r.items.empty(); });
  if (!any_item) {
    for (const WriteResults& r : results) {
      metadata.files.insert(metadata.files.end(), r.files.begin(), r.files.end());
    }
    return;
  }
  std::map<MetadataIndex, StorageInfo> merged;
  detail::for_each_merged_entry(metadata, results,
                                [&](const MetadataIndex& index, const StorageInfo& info) {
                                  merged.emplace_hint(merged.end(), index, info);  // in order: O(1)
                                });
  metadata.storage_data = std::move(merged);
  for (const WriteResults& r : results) {
    metadata.files.insert(metadata.files.end(), r.files.begin(), r.files.end());
  }
}

}  // namespace ringckpt
