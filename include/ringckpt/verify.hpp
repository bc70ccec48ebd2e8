// ringckpt/verify.hpp — re-reading a checkpoint to prove it intact.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "ringckpt/io_options.hpp"

namespace ringckpt {

struct VerifyFault {
  std::string file;          // the file at fault (metadata.json or a data file)
  std::int64_t extent = -1;  // the extent at fault; -1 for the file as a whole
  std::uint64_t offset = 0;  // byte range at fault
  std::uint64_t length = 0;
  std::string message;
};

struct VerifyReport {
  std::uint64_t files = 0;
  std::uint64_t extents = 0;
  std::uint64_t bytes = 0;
  std::vector<VerifyFault> faults;
  // What the directory holds besides the checkpoint, which no load reads:
  // files named like data files that metadata.json does not list (leftovers
  // of a killed save) and a stale metadata.json.tmp (of a killed commit). The
  // next save into the directory removes them. Notes, not faults: ok() stays
  // true. Each names the file.
  std::vector<std::string> notes;
  bool ok() const noexcept { return faults.empty(); }
};

// Checks metadata.json (its own checksum and consistency), every data file's
// size and safetensors header against the metadata (each item's entry by its
// safetensors name: byte range, dtype and shape; no entry metadata.json does
// not place there), and the XXH3 of every extent of every file. A data file
// that is not a regular file (a FIFO, directory, device or symbolic link) is a
// fault and is never opened. Every fault is collected, never thrown (an error
// of the file system or memory becomes a fault naming the file). Leftovers
// of killed saves in the directory are listed in `notes`;
// progress(done, total) is called as bytes are verified.
VerifyReport verify(const std::filesystem::path& dir, const IoOptions& io = {},
                    const std::function<void(std::uint64_t, std::uint64_t)>& progress = {});

}  // namespace ringckpt
