#include "ringckpt/verify.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <new>
#include <optional>
#include <set>
#include <string_view>

#include "format/error_translation.hpp"
#include "io/data_file.hpp"
#include "load/extent_reader.hpp"
#include "load/metadata_file.hpp"
#include "load/verify_directory.hpp"
#include "io/io_engine.hpp"
#include "format/metadata_json.hpp"
#include "ringckpt/error.hpp"
#include "format/message_text.hpp"
#include "format/safetensors.hpp"
#include "format/tensor_geometry.hpp"
#include "plan/layout.hpp"

namespace ringckpt {
namespace {

// Reads [offset, offset + n) of dir/name with plain pread (headers are small:
// callers bound n by kMaxSafetensorsHeader). The file is opened as every data
// file is (a regular file, not a link, FIFO or device), and a range past its
// fstat size is refused before anything is allocated.
std::vector<std::byte> pread_range(const CheckpointDirectory& dir, const std::string& name,
                                   std::uint64_t offset, std::uint64_t n) {
  DataFile file = dir.open_read(name, false);
  const std::string path = file.path().string();
  const std::uint64_t size = file.size();
  if (offset > size || n > size - offset) {
    throw Error(ErrorCode::kCorrupt, path, "file ends inside its header");
  }
  std::vector<std::byte> out(n);
  std::uint64_t done = 0;
  while (done < n) {
    ssize_t r = ::pread(file.fd(), out.data() + done, n - done, static_cast<off_t>(offset + done));
    if (r <= 0) throw Error(ErrorCode::kCorrupt, path, "file ends inside its header");
    done += static_cast<std::uint64_t>(r);
  }
  return out;
}

// What metadata.json places in one data file: a stored item and its bytes.
struct PlacedItem {
  const MetadataIndex* index;
  const StorageMetadata* item;
  const StorageInfo* info;
};

// A fault of a whole file (extent -1) at a byte range.
VerifyFault file_fault(const std::string& file, std::uint64_t offset, std::uint64_t length,
                       std::string message) {
  return {file, -1, offset, length, std::move(message)};
}


// At most this many header faults are listed per file, then their count.
constexpr std::size_t kMaxHeaderFaults = 16;

// The safetensors header must describe exactly the items that metadata.json
// places in the file: for each item an entry of its safetensors name with its
// byte range, its stored dtype and its chunk's shape (a blob: kBlobDType,
// [its byte count]); no other entry. Appends one fault per difference.
void compare_header(const SafetensorsHeader& header, const std::string& file,
                    const std::vector<PlacedItem>& placed, std::vector<VerifyFault>& out) {
  using detail::in_quotes;
  using detail::shape_string;
  std::map<std::string_view, const SafetensorsEntry*> entries;
  for (const SafetensorsEntry& e : header.entries) entries.emplace(e.name, &e);
  std::vector<VerifyFault> faults;
  for (const PlacedItem& p : placed) {
    const std::uint64_t begin = p.info->offset, end = begin + p.info->length;
    auto fault = [&](std::string message) {
      faults.push_back(file_fault(file, begin, p.info->length, "safetensors header: " + message));
    };
    DType dtype = kBlobDType;
    Shape shape{static_cast<std::int64_t>(p.info->length)};
    std::vector<std::string> names{p.index->fqn};
    if (const auto* tensor = std::get_if<TensorStorageMetadata>(p.item)) {
      // check_metadata saw every entry of a tensor name one of its chunks.
      const ChunkStorageMetadata* chunk =
          detail::find_chunk(*tensor, *p.index->offset, p.index->index);
      dtype = tensor->properties.dtype;
      shape = chunk->sizes;
      const std::string shard = safetensors_shard_name(p.index->fqn, chunk->offsets);
      // A whole tensor is named by its fqn; so is a shard unless it covers
      // the tensor whole (metadata.json does not tell the two apart).
      const bool whole = chunk->sizes == tensor->size &&
                         std::ranges::all_of(chunk->offsets, [](std::int64_t o) { return o == 0; });
      if (whole) names.push_back(shard);
      else names = {shard};
    }
    const SafetensorsEntry* e = nullptr;
    for (const std::string& name : names) {
      auto it = entries.find(name);
      if (it != entries.end() && it->second != nullptr) {
        e = it->second;
        it->second = nullptr;  // claimed
        break;
      }
    }
    const std::string what = "tensor " + in_quotes(names.front());
    if (e == nullptr) {
      fault(what + " is missing; metadata.json places it (storage entry " +
            detail::index_string(*p.index) + ") at bytes " + detail::byte_range(begin, end));
      continue;
    }
    if (e->dtype != dtype) {
      fault(what + " has dtype " + std::string(dtype_name(e->dtype)) + ", but metadata.json says " +
            std::string(dtype_name(dtype)));
    }
    if (e->shape != shape) {
      fault(what + " has shape " + shape_string(e->shape) + ", but metadata.json says " +
            shape_string(shape));
    }
    const std::uint64_t at = header.data_start + e->begin, to = header.data_start + e->end;
    if (at != begin || to != end) {
      fault(what + " lies at bytes " + detail::byte_range(at, to) + ", but metadata.json places it at " +
            detail::byte_range(begin, end));
    }
  }
  for (const SafetensorsEntry& e : header.entries) {
    auto it = entries.find(e.name);
    if (it == entries.end() || it->second == nullptr) continue;  // claimed
    faults.push_back(file_fault(file, header.data_start + e.begin, e.end - e.begin,
                                "safetensors header: tensor " + in_quotes(e.name) +
                                    " is not in metadata.json"));
  }
  const std::size_t more = faults.size() > kMaxHeaderFaults ? faults.size() - kMaxHeaderFaults : 0;
  faults.resize(faults.size() - more);
  for (auto& f : faults) out.push_back(std::move(f));
  if (more) {
    out.push_back(file_fault(file, 0, header.data_start,
                             "safetensors header: " + std::to_string(more) + " more faults"));
  }
}

// Reads the safetensors header of a data file and compares it with what
// metadata.json places there (compare_header).
void check_header(const CheckpointDirectory& dir, const FileInfo& info,
                  const std::vector<PlacedItem>& placed, std::vector<VerifyFault>& out) {
  const std::string path = dir.path_of(info.relative_path).string();
  auto first8 = pread_range(dir, info.relative_path, 0, 8);
  const std::uint64_t n = decode_safetensors_header_length(first8, info.size, path);
  auto bytes = pread_range(dir, info.relative_path, 0, 8 + n);
  SafetensorsHeader header = decode_safetensors_header(bytes, info.size, path);
  compare_header(header, path, placed, out);
}

// A fault for an exception that is not a ringckpt::Error, naming `file`.
// REQUIRES: called in the handler that caught e.
VerifyFault fault_of(const std::string& file, const std::exception& e) {
  const Error error = detail::as_error(std::current_exception(), file);
  if (dynamic_cast<const std::bad_alloc*>(&e) != nullptr)
    return file_fault(error.where(), 0, 0, "out of memory while verifying it");
  return file_fault(error.where(), 0, 0, "verifying it failed: " + error.message());
}

// Notes on what `dir` holds that `md` does not list: files named like data
// files (is_data_file_name) and a stale metadata.json.tmp. Never throws: a
// directory that cannot be listed gets no notes (the data files' own checks
// report what cannot be read).
std::vector<std::string> leftover_notes(const CheckpointDirectory& dir, const Metadata& md) {
  std::vector<std::string> notes;
  std::set<std::string> listed;
  for (const FileInfo& f : md.files) listed.insert(f.relative_path);
  const std::string stale_tmp = std::string(kMetadataFile) + ".tmp";
  std::vector<std::string> names;
  try {
    names = dir.list();
  } catch (const Error&) {
    return notes;
  }
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    const std::string path = dir.path_of(name).string();
    if (name == stale_tmp) {
      notes.push_back(path + ": a stale temporary of an interrupted commit; the next save removes it");
    } else if (is_data_file_name(name) && !listed.contains(name)) {
      notes.push_back(path + ": a data file metadata.json does not list (left by an interrupted "
                             "save); the next save removes it");
    }
  }
  return notes;
}

// REQUIRES: dir is open. metadata.json and every data file are read relative
// to it, so what is verified is the directory as it was opened.
void verify_into(VerifyReport& report, const CheckpointDirectory& dir, const IoOptions& io,
                 const std::function<void(std::uint64_t, std::uint64_t)>& progress) {
  const std::string metadata_path = dir.path_of(kMetadataFile).string();
  Metadata md;
  try {
    std::string text;
    md = detail::read_metadata_file(dir, io.max_metadata_bytes, text);
  } catch (const Error& e) {
    report.faults.push_back(file_fault(e.where(), 0, 0, e.message()));
    return;
  } catch (const std::exception& e) {
    report.faults.push_back(fault_of(metadata_path, e));
    return;
  }
  try {
    report.notes = leftover_notes(dir, md);
  } catch (const std::exception&) {
    // Notes are a courtesy (out of memory listing them): the checks go on.
  }
  std::map<std::string, std::vector<PlacedItem>> placed;
  for (const auto& [index, info] : md.storage_data) {
    // check_metadata saw every entry name an item.
    placed[info.relative_path].push_back({&index, &md.state_dict_metadata.at(index.fqn), &info});
  }

  std::vector<detail::FileReadTask> tasks;
  for (const FileInfo& f : md.files) {
    const std::filesystem::path file_path = dir.path_of(f.relative_path);
    report.files += 1;
    report.extents += f.extent_checksums.size();
    report.bytes += f.size;
    std::optional<CheckpointDirectory::Entry> kind;
    try {
      kind = dir.stat(f.relative_path);
      // Missing and truncated files are reported by the extent pass.
      if (kind && kind->regular && kind->size == f.size) {
        check_header(dir, f, placed[f.relative_path], report.faults);
      }
    } catch (const Error& e) {
      report.faults.push_back(file_fault(e.where(), 0, 0, e.message()));
    } catch (const std::exception& e) {
      report.faults.push_back(fault_of(file_path.string(), e));
    }
    if (kind && !kind->regular) {
      // Never opened: a FIFO or device could block or never end.
      report.faults.push_back(
          file_fault(file_path.string(), 0, 0, "is " + kind->kind + ", not a regular file"));
      continue;
    }
    std::uint64_t header = f.size;  // the header ends where the first item begins
    for (const PlacedItem& p : placed[f.relative_path]) header = std::min(header, p.info->offset);
    tasks.push_back({f, {}, header, true});
  }
  std::vector<detail::ExtentFault> faults;
  try {
    detail::IoEngine engine(detail::read_options(io, md.files));
    detail::read_extents(engine, dir, tasks, &faults, progress);
  } catch (const Error& e) {
    report.faults.push_back(file_fault(e.where(), 0, 0, e.message()));
  } catch (const std::exception& e) {
    report.faults.push_back(fault_of(dir.path().string(), e));
  }
  for (auto& f : faults) {
    report.faults.push_back({std::move(f.file), f.extent, f.offset, f.length, std::move(f.message)});
  }
}

}  // namespace

namespace detail {

VerifyReport verify_directory(const CheckpointDirectory& dir, const IoOptions& io,
                              const std::function<void(std::uint64_t, std::uint64_t)>& progress) {
  VerifyReport report;
  try {
    verify_into(report, dir, io, progress);
  } catch (const Error& e) {
    report.faults.push_back(file_fault(e.where(), 0, 0, e.message()));
  } catch (const std::exception& e) {
    report.faults.push_back(fault_of(dir.path().string(), e));
  }
  return report;
}

}  // namespace detail

VerifyReport verify(const std::filesystem::path& dir, const IoOptions& io,
                    const std::function<void(std::uint64_t, std::uint64_t)>& progress) {
  CheckpointDirectory handle;
  try {
    // Opened once: everything verify reads is named relative to this handle.
    handle = detail::open_checkpoint_directory(dir);
  } catch (const Error& e) {
    VerifyReport report;
    report.faults.push_back(file_fault(e.where(), 0, 0, e.message()));
    return report;
  } catch (const std::exception& e) {
    VerifyReport report;
    report.faults.push_back(fault_of(dir.string(), e));
    return report;
  }
  return detail::verify_directory(handle, io, progress);
}

}  // namespace ringckpt
