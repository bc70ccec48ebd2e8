// ringckpt/io_options.hpp — how ringckpt talks to the disk.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace ringckpt {

inline constexpr std::size_t kAlignment = 4096;  // O_DIRECT unit: offsets, lengths, buffers
inline constexpr std::size_t kMaxExtentSize = std::size_t{1} << 30;  // larger is refused
// The default IoOptions::max_metadata_bytes: the largest metadata.json read.
inline constexpr std::uint64_t kDefaultMaxMetadataBytes = std::uint64_t{1} << 30;

struct IoOptions {
  // The unit of writing and checksumming; a multiple of kAlignment, at most
  // kMaxExtentSize.
  std::size_t extent_size = std::size_t{8} << 20;
  // Staging memory: ring_bytes / extent_size slots, allocated, pre-faulted and
  // registered with io_uring once, reused by every save and load.
  std::size_t ring_bytes = std::size_t{256} << 20;
  // Writes or reads in flight at once.
  unsigned queue_depth = 16;
  // Threads that copy and checksum into the ring.
  unsigned staging_threads = 2;
  // Ask for O_DIRECT and registered buffers; refused ones fall back, reported.
  bool direct_io = true;
  bool register_buffers = true;
  // A data file is closed and the next one begun past this many bytes
  // (0: one data file per rank).
  std::uint64_t max_file_bytes = 0;
  // The largest metadata.json a load, verify or inspect reads (1 GiB: about
  // millions of entries). A larger file is refused, naming it and this limit,
  // from its size before it is read; raise this for a larger checkpoint.
  // A data file's safetensors header has a fixed limit of 100 MiB.
  std::uint64_t max_metadata_bytes = kDefaultMaxMetadataBytes;
  // Where fallbacks and other notes are said. Empty: to stderr, once each.
  std::function<void(std::string_view)> report;
};

// What the I/O path actually did.
struct IoReport {
  bool direct_io = false;           // every data file was opened with O_DIRECT
  bool registered_buffers = false;  // writes and reads used fixed buffers
  std::vector<std::string> notes;   // each fallback taken, said once
};

}  // namespace ringckpt
