#include "ringckpt/plan.hpp"

#include <cstring>

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

void add_results(Metadata& metadata, const std::vector<WriteResults>& results) {
  for (const WriteResults& r : results) {
    for (const WriteResult& item : r.items) metadata.storage_data[item.index] = item.storage_data;
    metadata.files.insert(metadata.files.end(), r.files.begin(), r.files.end());
  }
}


}  // namespace ringckpt
