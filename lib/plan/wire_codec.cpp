// wire_codec.cpp — the binary form of plans, results, metadata and rank
// statuses that cross ranks (layout in wire_codec.hpp).
#include "plan/wire_codec.hpp"

#include <algorithm>
#include <cstddef>
#include <iterator>
#include <limits>
#include <span>
#include <utility>

#include "format/extent_checksum.hpp"
#include "plan/wire_primitives.hpp"

namespace ringckpt::wire {
namespace {

// Flags of a MetadataIndex.
constexpr std::uint8_t kIndexOffset = 1;  // offset follows
constexpr std::uint8_t kIndexHint = 2;    // index hint follows
constexpr std::uint8_t kIndexFlags = kIndexOffset | kIndexHint;

// A WriteItem's head byte: its type in the low two bits, then flags.
constexpr std::uint8_t kItemType = 3;
constexpr std::uint8_t kItemOffset = 4;         // index.offset is set
constexpr std::uint8_t kItemHint = 8;           // index.index follows
constexpr std::uint8_t kItemTensor = 16;        // tensor_data follows
constexpr std::uint8_t kItemOffsetIsChunk = 32; // index.offset == chunk.offsets, not written
constexpr std::uint8_t kItemBytes = 64;         // bytes_io_size follows (else 0)
constexpr std::uint8_t kItemFlags =
    kItemType | kItemOffset | kItemHint | kItemTensor | kItemOffsetIsChunk | kItemBytes;

// Flags of a WriteItem's tensor_data; "previous" is the previous tensor item's.
constexpr std::uint8_t kSizesAsPrevious = 1;   // chunk.sizes == the previous chunk.sizes
constexpr std::uint8_t kOffsetsZero = 2;       // chunk.offsets == zeros, rank of sizes
constexpr std::uint8_t kGlobalIsChunk = 4;     // size == chunk.sizes
constexpr std::uint8_t kGlobalAsPrevious = 8;  // size == the previous size
constexpr std::uint8_t kDtypeAsPrevious = 16;  // dtype == the previous dtype
constexpr std::uint8_t kTensorFlags =
    kSizesAsPrevious | kOffsetsZero | kGlobalIsChunk | kGlobalAsPrevious | kDtypeAsPrevious;

// Metadata's storage_meta: absent, or present and its fields follow.
constexpr std::uint8_t kNoStorageMeta = 0;
constexpr std::uint8_t kHasStorageMeta = 1;

constexpr std::uint8_t kStatusOk = 0;
constexpr std::uint8_t kStatusFailed = 1;

bool all_zero(const Shape& s) {
  return std::all_of(s.begin(), s.end(), [](std::int64_t d) { return d == 0; });
}

// ---------------------------------------------------------------------------
// Pieces shared by several payloads.

void put_index(WireWriter& w, const MetadataIndex& index) {
  w.fqn(index.fqn);
  w.byte(static_cast<std::uint8_t>((index.offset ? kIndexOffset : 0) |
                                   (index.index ? kIndexHint : 0)));
  if (index.offset) w.shape(*index.offset);
  if (index.index) w.u64(*index.index);
}

MetadataIndex get_index(WireReader& r) {
  MetadataIndex index;
  index.fqn = r.fqn();
  const std::uint8_t flags = r.byte();
  if ((flags & ~kIndexFlags) != 0) r.fail("unknown index flags " + std::to_string(flags));
  if (flags & kIndexOffset) index.offset = r.shape();
  if (flags & kIndexHint) index.index = static_cast<std::size_t>(r.u64());
  return index;
}

void put_map(WireWriter& w, const std::map<std::string, std::string>& map) {
  w.u64(map.size());
  for (const auto& [key, value] : map) {
    w.string(key);
    w.string(value);
  }
}

// Keys arrive in increasing order, as std::map holds them; a repeated or
// out-of-order key is refused rather than silently merged.
std::map<std::string, std::string> get_map(WireReader& r, const char* what) {
  std::map<std::string, std::string> map;
  const std::size_t n = r.count(2, what);
  for (std::size_t i = 0; i < n; ++i) {
    std::string key = r.string();
    std::string value = r.string();
    if (!map.empty() && !(map.rbegin()->first < key)) {
      r.fail(std::string(what) + " key " + std::to_string(i) + " is repeated or out of order");
    }
    map.emplace_hint(map.end(), std::move(key), std::move(value));
  }
  return map;
}

void put_storage_info(WireWriter& w, const StorageInfo& info) {
  w.path(info.relative_path);
  w.u64(info.offset);
  w.u64(info.length);
}

StorageInfo get_storage_info(WireReader& r) {
  StorageInfo info;
  info.relative_path = r.path();
  info.offset = r.u64();
  info.length = r.u64();
  return info;
}

void put_files(WireWriter& w, const std::vector<FileInfo>& files) {
  w.u64(files.size());
  for (const FileInfo& f : files) {
    w.path(f.relative_path);
    w.u64(f.size);
    w.u64(f.extent_size);
    w.u64(f.extent_checksums.size());
    for (std::uint64_t c : f.extent_checksums) w.fixed64(c);
  }
}

std::vector<FileInfo> get_files(WireReader& r) {
  std::vector<FileInfo> files(r.count(5, "file"));
  for (FileInfo& f : files) {
    f.relative_path = r.path();
    f.size = r.u64();
    f.extent_size = r.u64();
    f.extent_checksums.resize(r.count(8, "extent checksum"));
    for (std::uint64_t& c : f.extent_checksums) c = r.fixed64();
  }
  return files;
}

// ---------------------------------------------------------------------------
// WriteItem: name, head byte, then what the flags do not imply: index hint,
// tensor flags, dtype, chunk sizes, chunk offsets, global size, index offset,
// bytes_io_size. A replicated whole tensor of the same shape and dtype as the
// item before it takes its name and two bytes.

// The previous tensor item's fields. Pointers into the plan being coded.
struct PreviousTensor {
  const Shape* sizes = nullptr;
  const Shape* size = nullptr;
  DType dtype = DType::F32;
};

void put_write_item(WireWriter& w, const WriteItem& item, PreviousTensor& previous) {
  w.fqn(item.index.fqn);
  const TensorWriteData* t = item.tensor_data ? &*item.tensor_data : nullptr;
  std::uint8_t head = static_cast<std::uint8_t>(item.type);
  if (item.index.offset) head |= kItemOffset;
  if (item.index.index) head |= kItemHint;
  if (t) head |= kItemTensor;
  if (t && item.index.offset && *item.index.offset == t->chunk.offsets) head |= kItemOffsetIsChunk;
  if (item.bytes_io_size != 0) head |= kItemBytes;
  w.byte(head);
  if (item.index.index) w.u64(*item.index.index);
  if (t) {
    std::uint8_t flags = 0;
    if (previous.sizes && *previous.sizes == t->chunk.sizes) flags |= kSizesAsPrevious;
    if (t->chunk.offsets.size() == t->chunk.sizes.size() && all_zero(t->chunk.offsets)) {
      flags |= kOffsetsZero;
    }
    if (t->size == t->chunk.sizes) {
      flags |= kGlobalIsChunk;
    } else if (previous.size && *previous.size == t->size) {
      flags |= kGlobalAsPrevious;
    }
    if (previous.sizes && previous.dtype == t->properties.dtype) flags |= kDtypeAsPrevious;
    w.byte(flags);
    if (!(flags & kDtypeAsPrevious)) w.dtype(t->properties.dtype);
    if (!(flags & kSizesAsPrevious)) w.shape(t->chunk.sizes);
    if (!(flags & kOffsetsZero)) w.shape(t->chunk.offsets);
    if (!(flags & (kGlobalIsChunk | kGlobalAsPrevious))) w.shape(t->size);
    previous = {&t->chunk.sizes, &t->size, t->properties.dtype};
  }
  if (item.index.offset && !(head & kItemOffsetIsChunk)) w.shape(*item.index.offset);
  if (head & kItemBytes) w.u64(item.bytes_io_size);
}

// Reads into `item` in place: `previous` may point into it afterwards.
void get_write_item(WireReader& r, WriteItem& item, PreviousTensor& previous) {
  item.index.fqn = r.fqn();
  const std::uint8_t head = r.byte();
  if ((head & kItemType) > static_cast<std::uint8_t>(WriteItemType::BYTE_IO)) {
    r.fail("write item type " + std::to_string(head & kItemType) + " is not defined");
  }
  if ((head & ~kItemFlags) != 0 ||
      ((head & kItemOffsetIsChunk) && !((head & kItemOffset) && (head & kItemTensor)))) {
    r.fail("bad write item flags " + std::to_string(head));
  }
  item.type = static_cast<WriteItemType>(head & kItemType);
  if (head & kItemHint) item.index.index = static_cast<std::size_t>(r.u64());
  if (head & kItemTensor) {
    const std::uint8_t flags = r.byte();
    if ((flags & ~kTensorFlags) != 0 ||
        ((flags & kGlobalIsChunk) && (flags & kGlobalAsPrevious))) {
      r.fail("bad tensor flags " + std::to_string(flags));
    }
    if ((flags & (kSizesAsPrevious | kGlobalAsPrevious | kDtypeAsPrevious)) && !previous.sizes) {
      r.fail("the first tensor item refers to a previous one");
    }
    TensorWriteData& t = item.tensor_data.emplace();
    t.properties.dtype = (flags & kDtypeAsPrevious) ? previous.dtype : r.dtype();
    if (flags & kSizesAsPrevious) {
      r.expand(*previous.sizes);
      t.chunk.sizes = *previous.sizes;
    } else {
      t.chunk.sizes = r.shape();
    }
    if (flags & kOffsetsZero) {
      r.expand(t.chunk.sizes);
      t.chunk.offsets.assign(t.chunk.sizes.size(), 0);
    } else {
      t.chunk.offsets = r.shape();
    }
    if (flags & kGlobalIsChunk) {
      r.expand(t.chunk.sizes);
      t.size = t.chunk.sizes;
    } else if (flags & kGlobalAsPrevious) {
      r.expand(*previous.size);
      t.size = *previous.size;
    } else {
      t.size = r.shape();
    }
    previous = {&t.chunk.sizes, &t.size, t.properties.dtype};
  }
  if (head & kItemOffsetIsChunk) {
    r.expand(item.tensor_data->chunk.offsets);
    item.index.offset = item.tensor_data->chunk.offsets;
  } else if (head & kItemOffset) {
    item.index.offset = r.shape();
  }
  if (head & kItemBytes) item.bytes_io_size = r.u64();
}

// Least bytes an item can take: the name (2) and the head byte.
constexpr std::size_t kMinWriteItem = 3;
// type, two indexes, three shapes.
constexpr std::size_t kMinReadItem = 1 + 3 + 1 + 3 + 1 + 1;

// ---------------------------------------------------------------------------
// Metadata pieces.

void put_storage_metadata(WireWriter& w, const StorageMetadata& sm) {
  if (const auto* t = std::get_if<TensorStorageMetadata>(&sm)) {
    w.byte(0);
    w.dtype(t->properties.dtype);
    w.shape(t->size);
    w.u64(t->chunks.size());
    for (const ChunkStorageMetadata& c : t->chunks) {
      w.shape(c.offsets);
      w.shape(c.sizes);
    }
  } else {
    w.byte(1);
  }
}

StorageMetadata get_storage_metadata(WireReader& r) {
  const std::uint8_t tag = r.byte();
  if (tag == 1) return BytesStorageMetadata{};
  if (tag != 0) r.fail("storage metadata tag " + std::to_string(tag) + " is not defined");
  TensorStorageMetadata t;
  t.properties.dtype = r.dtype();
  t.size = r.shape();
  t.chunks.resize(r.count(2, "chunk"));
  for (ChunkStorageMetadata& c : t.chunks) {
    c.offsets = r.shape();
    c.sizes = r.shape();
  }
  return t;
}

}  // namespace

std::string_view kind_name(Kind kind) noexcept {
  switch (kind) {
    case Kind::kSavePlan: return "save plan";
    case Kind::kLoadPlan: return "load plan";
    case Kind::kWriteResults: return "write results";
    case Kind::kMetadata: return "metadata";
    case Kind::kRankStatus: return "rank status";
    case Kind::kSamePlan: return "same-plan token";
  }
  return {};
}

// ---------------------------------------------------------------------------
// SavePlan

std::string encode(const SavePlan& plan) {
  WireWriter w(Kind::kSavePlan, 64 + plan.items.size() * 40 + plan.storage_data.size());
  w.u64(plan.items.size());
  PreviousTensor previous;
  for (const WriteItem& item : plan.items) put_write_item(w, item, previous);
  w.string(plan.storage_data);
  put_map(w, plan.planner_data);
  w.byte(plan.usable ? 1 : 0);
  return std::move(w).take();
}

SavePlan decode_save_plan(std::string_view bytes, const std::string& source) {
  WireReader r(bytes, Kind::kSavePlan, source);
  SavePlan plan;
  plan.items.resize(r.count(kMinWriteItem, "write item"));
  PreviousTensor previous;
  // previous points into plan.items, sized once above and never resized.
  for (WriteItem& item : plan.items) get_write_item(r, item, previous);
  plan.storage_data = r.string();
  plan.planner_data = get_map(r, "planner data");
  const std::uint8_t usable = r.byte();
  if (usable > 1) r.fail("usable flag " + std::to_string(usable) + " is not 0 or 1");
  plan.usable = usable == 1;
  r.finish();
  return plan;
}

std::uint64_t fingerprint(std::string_view encoded) {
  return checksum_of(std::as_bytes(std::span<const char>(encoded.data(), encoded.size())));
}

// ---------------------------------------------------------------------------
// LoadPlan

std::string encode(const LoadPlan& plan) {
  WireWriter w(Kind::kLoadPlan, 64 + plan.items.size() * 48 + plan.storage_data.size());
  w.u64(plan.items.size());
  for (const ReadItem& item : plan.items) {
    w.byte(static_cast<std::uint8_t>(item.type));
    put_index(w, item.dest_index);
    w.shape(item.dest_offsets);
    put_index(w, item.storage_index);
    w.shape(item.storage_offsets);
    w.shape(item.lengths);
  }
  w.string(plan.storage_data);
  put_map(w, plan.planner_data);
  return std::move(w).take();
}

LoadPlan decode_load_plan(std::string_view bytes, const std::string& source) {
  WireReader r(bytes, Kind::kLoadPlan, source);
  LoadPlan plan;
  plan.items.resize(r.count(kMinReadItem, "read item"));
  for (ReadItem& item : plan.items) {
    const std::uint8_t type = r.byte();
    if (type > static_cast<std::uint8_t>(LoadItemType::BYTE_IO)) {
      r.fail("read item type " + std::to_string(type) + " is not defined");
    }
    item.type = static_cast<LoadItemType>(type);
    item.dest_index = get_index(r);
    item.dest_offsets = r.shape();
    item.storage_index = get_index(r);
    item.storage_offsets = r.shape();
    item.lengths = r.shape();
  }
  plan.storage_data = r.string();
  plan.planner_data = get_map(r, "planner data");
  r.finish();
  return plan;
}

// ---------------------------------------------------------------------------
// WriteResults

std::string encode(const WriteResults& results) {
  WireWriter w(Kind::kWriteResults, 64 + results.items.size() * 32 + results.files.size() * 64);
  w.u64(results.items.size());
  for (const WriteResult& item : results.items) {
    put_index(w, item.index);
    w.u64(item.size_in_bytes);
    put_storage_info(w, item.storage_data);
  }
  put_files(w, results.files);
  return std::move(w).take();
}

WriteResults decode_write_results(std::string_view bytes, const std::string& source) {
  WireReader r(bytes, Kind::kWriteResults, source);
  WriteResults results;
  // index 3, size 1, storage info 4.
  results.items.resize(r.count(8, "write result"));
  for (WriteResult& item : results.items) {
    item.index = get_index(r);
    item.size_in_bytes = r.u64();
    item.storage_data = get_storage_info(r);
  }
  results.files = get_files(r);
  r.finish();
  return results;
}

// ---------------------------------------------------------------------------
// Metadata

std::string encode(const Metadata& metadata) {
  WireWriter w(Kind::kMetadata, 64 + metadata.state_dict_metadata.size() * 48 +
                                metadata.storage_data.size() * 32 + metadata.files.size() * 64);
  w.i64(metadata.version);
  w.u64(metadata.state_dict_metadata.size());
  for (const auto& [fqn, sm] : metadata.state_dict_metadata) {
    w.fqn(fqn);
    put_storage_metadata(w, sm);
  }
  put_map(w, metadata.planner_data);
  w.u64(metadata.storage_data.size());
  for (const auto& [index, info] : metadata.storage_data) {
    put_index(w, index);
    put_storage_info(w, info);
  }
  put_files(w, metadata.files);
  if (const auto& m = metadata.storage_meta) {
    w.byte(kHasStorageMeta);
    w.string(m->checkpoint_id);
    w.string(m->save_id);
    w.string(m->load_id);
    w.u64(m->modules.size());
    for (const std::string& module : m->modules) w.string(module);
  } else {
    w.byte(kNoStorageMeta);
  }
  return std::move(w).take();
}

Metadata decode_metadata(std::string_view bytes, const std::string& source) {
  WireReader r(bytes, Kind::kMetadata, source);
  Metadata md;
  const std::int64_t version = r.i64();
  if (version < std::numeric_limits<int>::min() || version > std::numeric_limits<int>::max()) {
    r.fail("metadata version " + std::to_string(version) + " is out of range");
  }
  md.version = static_cast<int>(version);
  // Keys arrive in increasing order (std::map's); repeats are refused.
  const std::size_t names = r.count(3, "state dict entry");
  for (std::size_t i = 0; i < names; ++i) {
    std::string fqn = r.fqn().str();
    StorageMetadata sm = get_storage_metadata(r);
    if (!md.state_dict_metadata.empty() && !(md.state_dict_metadata.rbegin()->first < fqn)) {
      r.fail("state dict entry " + std::to_string(i) + " is repeated or out of order");
    }
    md.state_dict_metadata.emplace_hint(md.state_dict_metadata.end(), std::move(fqn),
                                        std::move(sm));
  }
  md.planner_data = get_map(r, "planner data");
  const std::size_t entries = r.count(7, "storage entry");
  for (std::size_t i = 0; i < entries; ++i) {
    MetadataIndex index = get_index(r);
    StorageInfo info = get_storage_info(r);
    if (!md.storage_data.empty() && !(md.storage_data.rbegin()->first < index)) {
      r.fail("storage entry " + std::to_string(i) + " is repeated or out of order");
    }
    md.storage_data.emplace_hint(md.storage_data.end(), std::move(index), std::move(info));
  }
  md.files = get_files(r);
  const std::uint8_t has_meta = r.byte();
  if (has_meta == kHasStorageMeta) {
    StorageMeta& m = md.storage_meta.emplace();
    m.checkpoint_id = r.string();
    m.save_id = r.string();
    m.load_id = r.string();
    m.modules.resize(r.count(1, "storage meta module"));
    for (std::string& module : m.modules) module = r.string();
  } else if (has_meta != kNoStorageMeta) {
    r.fail("storage meta flag " + std::to_string(has_meta) + " is neither absent nor present");
  }
  r.finish();
  return md;
}

// ---------------------------------------------------------------------------
// Rank status

std::string encode_ok(std::string_view payload) {
  WireWriter w(Kind::kRankStatus, kHeaderSize + 11 + payload.size());
  w.byte(kStatusOk);
  w.string(payload);
  return std::move(w).take();
}

std::string encode_failure(const RankError& failure) {
  WireWriter w(Kind::kRankStatus, 32 + failure.where.size() + failure.message.size());
  w.byte(kStatusFailed);
  w.u64(static_cast<std::uint64_t>(failure.rank));
  w.u64(static_cast<std::uint64_t>(failure.code));
  w.string(failure.where);
  w.string(failure.message);
  return std::move(w).take();
}

RankStatus decode_status(std::string_view bytes, const std::string& source) {
  WireReader r(bytes, Kind::kRankStatus, source);
  RankStatus status;
  const std::uint8_t tag = r.byte();
  if (tag == kStatusOk) {
    status.payload = r.string();
  } else if (tag == kStatusFailed) {
    RankError e;
    const std::uint64_t rank = r.u64();
    if (rank > static_cast<std::uint64_t>(std::numeric_limits<int>::max())) {
      r.fail("rank " + std::to_string(rank) + " is out of range");
    }
    e.rank = static_cast<int>(rank);
    e.code = r.enumerator(ErrorCode::kCancelled, "error code");
    e.where = r.string();
    e.message = r.string();
    status.failure = std::move(e);
  } else {
    r.fail("status tag " + std::to_string(tag) + " is neither OK nor failed");
  }
  r.finish();
  return status;
}

Error to_error(const RankError& failure) {
  return Error(failure.code, failure.where,
               failure.message + " (on rank " + std::to_string(failure.rank) + ")");
}

}  // namespace ringckpt::wire
