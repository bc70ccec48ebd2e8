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
#include "io/io_engine.hpp"
#include "format/metadata_json.hpp"
#include "ringckpt/filesystem_reader.hpp"
#include "ringckpt/error.hpp"
#include "format/message_text.hpp"
#include "format/safetensors.hpp"
#include "format/tensor_geometry.hpp"
#include "plan/layout.hpp"

namespace ringckpt {
namespace {

// Reads [offset, offset + n) of `path` with plain pread (headers are small:
// callers bound n by kMaxSafetensorsHeader). The file is opened as every data
// file is (a regular file, not a link, FIFO or device), and a range past its
// fstat size is refused before anything is allocated.
std::vector<std::byte> pread_range(const std::filesystem::path& path, std::uint64_t offset,
                                   std::uint64_t n) {
  DataFile file = DataFile::open_read(path, false);
  const std::uint64_t size = file.size();
  if (offset > size || n > size - offset) {
    throw Error(ErrorCode::kCorrupt, path.string(), "file ends inside its header");
  }
  std::vector<std::byte> out(n);
  std::uint64_t done = 0;
  while (done < n) {
    ssize_t r = ::pread(file.fd(), out.data() + done, n - done, static_cast<off_t>(offset + done));
    if (r <= 0) throw Error(ErrorCode::kCorrupt, path.string(), "file ends inside its header");
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

// "[begin, end)".
std::string range(std::uint64_t begin, std::uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + ")";
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
            detail::index_string(*p.index) + ") at bytes " + range(begin, end));
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
      fault(what + " lies at bytes " + range(at, to) + ", but metadata.json places it at " +
            range(begin, end));
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
void check_header(const std::filesystem::path& path, const FileInfo& info,
                  const std::vector<PlacedItem>& placed, std::vector<VerifyFault>& out) {
  auto first8 = pread_range(path, 0, 8);
  const std::uint64_t n = decode_safetensors_header_length(first8, info.size, path.string());
  auto bytes = pread_range(path, 0, 8 + n);
  SafetensorsHeader header = decode_safetensors_header(bytes, info.size, path.string());
  compare_header(header, path.string(), placed, out);
}

// What lstat says of a data file (no link followed): nullopt where it is
// missing; else whether it is a regular file, and its size.
struct FileKind {
  bool regular = false;
  std::string kind;  // of a file that is not regular
  std::uint64_t size = 0;
};

std::optional<FileKind> kind_of(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(path, ec);
  if (st.type() == fs::file_type::not_found) return std::nullopt;
  if (ec) throw Error(ErrorCode::kIo, path.string(), "cannot stat the data file: " + ec.message());
  FileKind k;
  switch (st.type()) {
    case fs::file_type::regular: {
      k.regular = true;
      const std::uintmax_t size = fs::file_size(path, ec);
      if (ec) {
        throw Error(ErrorCode::kIo, path.string(), "cannot stat the data file: " + ec.message());
      }
      k.size = size;
      return k;
    }
    case fs::file_type::directory: k.kind = "a directory"; break;
    case fs::file_type::symlink: k.kind = "a symbolic link"; break;
    case fs::file_type::fifo: k.kind = "a FIFO"; break;
    case fs::file_type::character: k.kind = "a character device"; break;
    case fs::file_type::block: k.kind = "a block device"; break;
    case fs::file_type::socket: k.kind = "a socket"; break;
    default: k.kind = "not a regular file"; break;
  }
  return k;
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
std::vector<std::string> leftover_notes(const std::filesystem::path& dir, const Metadata& md) {
  std::vector<std::string> notes;
  std::set<std::string> listed;
  for (const FileInfo& f : md.files) listed.insert(f.relative_path);
  const std::string stale_tmp = std::string(kMetadataFile) + ".tmp";
  std::error_code ec;
  std::vector<std::string> names;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    names.push_back(it->path().filename().string());
  }
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    const std::string path = (dir / name).string();
    if (name == stale_tmp) {
      notes.push_back(path + ": a stale temporary of an interrupted commit; the next save removes it");
    } else if (is_data_file_name(name) && !listed.contains(name)) {
      notes.push_back(path + ": a data file metadata.json does not list (left by an interrupted "
                             "save); the next save removes it");
    }
  }
  return notes;
}

void verify_into(VerifyReport& report, const std::filesystem::path& dir, const IoOptions& io,
                 const std::function<void(std::uint64_t, std::uint64_t)>& progress) {
  const std::string metadata_path = (dir / kMetadataFile).string();
  Metadata md;
  try {
    md = FileSystemReader(dir, io).read_metadata();
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
    const std::filesystem::path path = dir / f.relative_path;
    report.files += 1;
    report.extents += f.extent_checksums.size();
    report.bytes += f.size;
    std::optional<FileKind> kind;
    try {
      kind = kind_of(path);
      // Missing and truncated files are reported by the extent pass.
      if (kind && kind->regular && kind->size == f.size) {
        check_header(path, f, placed[f.relative_path], report.faults);
      }
    } catch (const Error& e) {
      report.faults.push_back(file_fault(e.where(), 0, 0, e.message()));
    } catch (const std::exception& e) {
      report.faults.push_back(fault_of(path.string(), e));
    }
    if (kind && !kind->regular) {
      // Never opened: a FIFO or device could block or never end.
      report.faults.push_back(
          file_fault(path.string(), 0, 0, "is " + kind->kind + ", not a regular file"));
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
    report.faults.push_back(fault_of(dir.string(), e));
  }
  for (auto& f : faults) {
    report.faults.push_back({std::move(f.file), f.extent, f.offset, f.length, std::move(f.message)});
  }
}

}  // namespace

VerifyReport verify(const std::filesystem::path& dir, const IoOptions& io,
                    const std::function<void(std::uint64_t, std::uint64_t)>& progress) {
  VerifyReport report;
  try {
    verify_into(report, dir, io, progress);
  } catch (const Error& e) {
    report.faults.push_back(file_fault(e.where(), 0, 0, e.message()));
  } catch (const std::exception& e) {
    report.faults.push_back(fault_of(dir.string(), e));
  }
  return report;
}

}  // namespace ringckpt
