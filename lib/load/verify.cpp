#include "ringckpt/verify.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <map>

#include "io/data_file.hpp"
#include "load/extent_reader.hpp"
#include "io/io_engine.hpp"
#include "format/metadata_json.hpp"
#include "ringckpt/filesystem_reader.hpp"
#include "ringckpt/error.hpp"
#include "format/safetensors.hpp"

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

// The safetensors header of a data file must describe exactly the items that
// metadata.json places in it.
void check_header(const std::filesystem::path& path, const FileInfo& info,
                  const std::vector<StorageInfo>& stored) {
  auto first8 = pread_range(path, 0, 8);
  const std::uint64_t n = decode_safetensors_header_length(first8, info.size, path.string());
  auto bytes = pread_range(path, 0, 8 + n);
  SafetensorsHeader header = decode_safetensors_header(bytes, info.size, path.string());
  std::vector<std::pair<std::uint64_t, std::uint64_t>> in_header, in_metadata;
  for (const auto& e : header.entries) in_header.emplace_back(header.data_start + e.begin, e.end - e.begin);
  for (const auto& s : stored) in_metadata.emplace_back(s.offset, s.length);
  std::sort(in_header.begin(), in_header.end());
  std::sort(in_metadata.begin(), in_metadata.end());
  if (in_header != in_metadata) {
    throw Error(ErrorCode::kCorrupt, path.string(),
                "safetensors header lists " + std::to_string(in_header.size()) +
                    " tensors whose byte ranges differ from the " +
                    std::to_string(in_metadata.size()) + " metadata.json places in this file");
  }
}

}  // namespace

VerifyReport verify(const std::filesystem::path& dir, const IoOptions& io,
                    const std::function<void(std::uint64_t, std::uint64_t)>& progress) {
  VerifyReport report;
  Metadata md;
  try {
    md = FileSystemReader(dir, io).read_metadata();
  } catch (const Error& e) {
    report.faults.push_back({e.where(), -1, 0, 0, e.message()});
    return report;
  }
  std::map<std::string, std::vector<StorageInfo>> stored;
  for (const auto& [index, info] : md.storage_data) stored[info.relative_path].push_back(info);

  std::vector<detail::FileReadTask> tasks;
  for (const FileInfo& f : md.files) {
    const std::filesystem::path path = dir / f.relative_path;
    try {
      check_header(path, f, stored[f.relative_path]);
    } catch (const Error& e) {
      // Missing and truncated files are reported by the extent pass.
      std::error_code ec;  // a FIFO, directory or device has no size: no throw
      if (e.code() != ErrorCode::kNotFound && std::filesystem::file_size(path, ec) == f.size) {
        report.faults.push_back({e.where(), -1, 0, 0, e.message()});
      }
    }
    std::uint64_t header = f.size;  // the header ends where the first item begins
    for (const StorageInfo& s : stored[f.relative_path]) header = std::min(header, s.offset);
    tasks.push_back({f, {}, header, true});
    report.files += 1;
    report.extents += f.extent_checksums.size();
    report.bytes += f.size;
  }
  std::vector<detail::ExtentFault> faults;
  try {
    detail::IoEngine engine(detail::read_options(io, md.files));
    detail::read_extents(engine, dir, tasks, &faults, progress);
  } catch (const Error& e) {
    report.faults.push_back({e.where(), -1, 0, 0, e.message()});
  }
  for (auto& f : faults) {
    report.faults.push_back({std::move(f.file), f.extent, f.offset, f.length, std::move(f.message)});
  }
  return report;
}

}  // namespace ringckpt
