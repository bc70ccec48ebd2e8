// read_index.cpp — the flat index of the metadata that read_data reads by.
#include "load/read_index.hpp"

#include <algorithm>
#include <functional>
#include <map>

#include "format/tensor_geometry.hpp"

namespace ringckpt::detail {

const ReadIndex::Item* ReadIndex::find(std::string_view name) const {
  if (slots_.empty()) return nullptr;
  const std::size_t mask = slots_.size() - 1;
  for (std::size_t i = std::hash<std::string_view>{}(name) & mask;; i = (i + 1) & mask) {
    const std::uint32_t slot = slots_[i];
    if (slot == 0) return nullptr;
    const Item& item = items_[slot - 1];
    if (name_of(item) == name) return &item;
  }
}

const ReadIndex::Entry* ReadIndex::entry(const Item& item, const std::optional<Shape>& offset) const {
  const Entry* first = entries_.data() + item.entry_begin;
  const Entry* last = first + item.entry_count;
  // Entries are in the map's order: no offset first, then by offset.
  auto less = [&](const Entry& e) {  // e < offset
    if (!offset) return false;
    if (!e.has_offset) return true;
    const auto a = dims(e.offset);
    return std::lexicographical_compare(a.begin(), a.end(), offset->begin(), offset->end());
  };
  if (item.entry_count > 8) {
    first = std::partition_point(first, last, less);
  } else {
    while (first != last && less(*first)) ++first;
  }
  if (first == last || first->has_offset != offset.has_value()) return nullptr;
  if (offset && !std::ranges::equal(dims(first->offset), *offset)) return nullptr;
  return first;
}

const ReadIndex::Chunk* ReadIndex::chunk(const Item& item, const std::optional<Shape>& offset,
                                         std::optional<std::size_t> hint) const {
  const Chunk* chunks = chunks_.data() + item.chunk_begin;
  const Shape origin = offset ? Shape() : Shape(item.rank, 0);
  const auto at = find_chunk_at(
      item.chunk_count, [&](std::size_t c) { return dims(chunks[c].offsets); },
      offset ? *offset : origin, hint);
  return at ? &chunks[*at] : nullptr;
}

ReadIndex::Dims ReadIndex::add_dims(std::span<const std::int64_t> shape) {
  Dims d{dims_.size(), shape.size()};
  dims_.insert(dims_.end(), shape.begin(), shape.end());
  return d;
}

void ReadIndex::build(const Metadata& md) {
  *this = ReadIndex();
  files_ = md.files;
  // A file listed twice is found as the first listing (its later listings
  // have their own tasks, which nothing reads).
  std::map<std::string_view, std::size_t> task_of;
  header_bytes_.reserve(files_.size());
  for (std::size_t t = 0; t < files_.size(); ++t) {
    task_of.emplace(files_[t].relative_path, t);
    header_bytes_.push_back(files_[t].size);
  }

  std::size_t name_bytes = 0, chunk_count = 0;
  for (const auto& [fqn, stored] : md.state_dict_metadata) {
    name_bytes += fqn.size();
    if (const auto* t = std::get_if<TensorStorageMetadata>(&stored)) chunk_count += t->chunks.size();
  }
  names_.reserve(name_bytes);
  items_.reserve(md.state_dict_metadata.size());
  chunks_.reserve(chunk_count);
  entries_.reserve(md.storage_data.size());
  dims_.reserve(2 * chunk_count + md.storage_data.size());

  // Both maps are ordered by name: walk them together, one item per name.
  auto stored = md.state_dict_metadata.begin();
  auto entry = md.storage_data.begin();
  while (stored != md.state_dict_metadata.end() || entry != md.storage_data.end()) {
    const std::string& name =
        entry == md.storage_data.end() ||
                (stored != md.state_dict_metadata.end() && stored->first <= entry->first.fqn)
            ? stored->first
            : entry->first.fqn.str();
    Item& item = items_.emplace_back();
    item.name_begin = names_.size();
    item.name_size = name.size();
    names_ += name;
    if (stored != md.state_dict_metadata.end() && stored->first == name) {
      if (const auto* t = std::get_if<TensorStorageMetadata>(&stored->second)) {
        item.tensor = true;
        item.dtype = t->properties.dtype;
        item.rank = t->size.size();
        item.chunk_begin = chunks_.size();
        item.chunk_count = t->chunks.size();
        for (const auto& c : t->chunks) chunks_.push_back({add_dims(c.offsets), add_dims(c.sizes)});
      }
      ++stored;
    }
    item.entry_begin = entries_.size();
    for (; entry != md.storage_data.end() && entry->first.fqn == name; ++entry) {
      const auto& [index, info] = *entry;
      Entry& e = entries_.emplace_back();
      e.has_offset = index.offset.has_value();
      if (index.offset) e.offset = add_dims(*index.offset);
      e.file_offset = info.offset;
      e.length = info.length;
      auto t = task_of.find(info.relative_path);
      if (t == task_of.end()) {
        e.path = unlisted_.size();
        unlisted_.push_back(info.relative_path);
      } else {
        e.task = t->second;  // the header ends where data begins
        header_bytes_[e.task] = std::min(header_bytes_[e.task], info.offset);
      }
    }
    item.entry_count = entries_.size() - item.entry_begin;
  }

  std::size_t slots = 16;
  while (slots < 2 * items_.size()) slots *= 2;
  slots_.assign(slots, 0);
  for (std::size_t k = 0; k < items_.size(); ++k) {
    std::size_t i = std::hash<std::string_view>{}(name_of(items_[k])) & (slots - 1);
    while (slots_[i] != 0) i = (i + 1) & (slots - 1);
    slots_[i] = static_cast<std::uint32_t>(k + 1);
  }
}

}  // namespace ringckpt::detail
