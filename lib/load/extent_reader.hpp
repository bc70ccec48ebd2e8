// lib/load/extent_reader.hpp — the read side: whole extents from disk, each
// verified against its XXH3 before any of its bytes are delivered.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "io/data_file.hpp"
#include "ringckpt/io_options.hpp"
#include "ringckpt/metadata.hpp"

namespace ringckpt::detail {

class IoEngine;

// Deliver file bytes [file_offset, file_offset + length) to dest.
struct ReadRun {
  std::uint64_t file_offset = 0;
  std::uint64_t length = 0;
  std::byte* dest = nullptr;
};

struct FileReadTask {
  FileInfo info;                   // as metadata.json records it
  std::vector<ReadRun> runs;
  std::uint64_t header_bytes = 0;  // [0, header_bytes) is read and verified in any case
  bool all_extents = false;        // read every extent, needed or not (verify)
};

struct ExtentFault {
  std::string file;     // path of the file at fault
  std::int64_t extent;  // -1: the file as a whole
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  std::string message;
};

using Progress = std::function<void(std::uint64_t bytes_done, std::uint64_t bytes_total)>;

// `io` for an engine of a reader's own that reads `files`: ring slots that
// hold the largest extent on disk, and at least two of them.
IoOptions read_options(IoOptions io, const std::vector<FileInfo>& files);

// Reads what the tasks need through the engine. With faults == nullptr the
// first fault is thrown as an Error (after in-flight reads finish); otherwise
// every fault is appended and reading goes on. A file that is missing or not
// the recorded size is one fault and none of its extents are read. Files are
// opened by name relative to `dir`, the handle the caller opened once.
void read_extents(IoEngine& engine, const CheckpointDirectory& dir,
                  std::vector<FileReadTask>& tasks, std::vector<ExtentFault>* faults,
                  const Progress& progress = {});

// The runs that copy the box `lengths` at `src_offsets` of a row-major source
// of shape src_sizes (stored from file offset src_base) to `dst_offsets` of a
// row-major destination of shape dst_sizes at `dst`. Neighbouring rows merge
// when the box spans whole inner dimensions.
void append_box_runs(std::vector<ReadRun>& runs, std::uint64_t src_base, const Shape& src_sizes,
                     const Shape& src_offsets, std::byte* dst, const Shape& dst_sizes,
                     const Shape& dst_offsets, const Shape& lengths, std::size_t element_size);

}  // namespace ringckpt::detail
