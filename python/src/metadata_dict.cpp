#include "metadata_dict.hpp"

#include <pybind11/stl.h>

#include "shape_caster.hpp"

#include <variant>

namespace ringckpt::python {

namespace {

py::dict tensor_entry(const TensorStorageMetadata& tensor) {
  py::list chunks;
  for (const ChunkStorageMetadata& chunk : tensor.chunks) {
    py::dict box;
    box["offsets"] = py::cast(chunk.offsets);
    box["sizes"] = py::cast(chunk.sizes);
    chunks.append(box);
  }
  py::dict entry;
  entry["kind"] = "tensor";
  entry["dtype"] = std::string(dtype_name(tensor.properties.dtype));
  entry["shape"] = py::cast(tensor.size);
  entry["chunks"] = chunks;
  return entry;
}

// A blob's length is that of its one stored item (MetadataIndex{fqn}).
py::dict bytes_entry(const Metadata& metadata, const std::string& fqn) {
  py::dict entry;
  entry["kind"] = "bytes";
  auto stored = metadata.storage_data.find(MetadataIndex{fqn, std::nullopt, std::nullopt});
  entry["length"] = stored == metadata.storage_data.end() ? 0 : stored->second.length;
  return entry;
}

}  // namespace

py::dict metadata_dict(const Metadata& metadata) {
  py::dict entries;
  for (const auto& [fqn, stored] : metadata.state_dict_metadata) {
    if (const auto* tensor = std::get_if<TensorStorageMetadata>(&stored)) {
      entries[py::str(fqn)] = tensor_entry(*tensor);
    } else {
      entries[py::str(fqn)] = bytes_entry(metadata, fqn);
    }
  }
  py::list files;
  for (const FileInfo& file : metadata.files) {
    py::dict info;
    info["path"] = file.relative_path;
    info["size"] = file.size;
    info["extent_size"] = file.extent_size;
    info["extents"] = file.extent_checksums.size();
    files.append(info);
  }
  py::dict out;
  out["version"] = metadata.version;
  out["total_bytes"] = metadata.total_bytes();
  out["entries"] = entries;
  out["files"] = files;
  out["planner_data"] = py::cast(metadata.planner_data);
  return out;
}

py::dict verify_report_dict(const VerifyReport& report) {
  py::list faults;
  for (const VerifyFault& fault : report.faults) {
    py::dict f;
    f["file"] = fault.file;
    f["extent"] = fault.extent;
    f["offset"] = fault.offset;
    f["length"] = fault.length;
    f["message"] = fault.message;
    faults.append(f);
  }
  py::dict out;
  out["ok"] = report.ok();
  out["files"] = report.files;
  out["extents"] = report.extents;
  out["bytes"] = report.bytes;
  out["faults"] = faults;
  out["notes"] = py::cast(report.notes);
  return out;
}

}  // namespace ringckpt::python
