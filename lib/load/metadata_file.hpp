// lib/load/metadata_file.hpp — reading a checkpoint's metadata.json through
// the directory handle a load or verify opened once.
#pragma once

#include <cstdint>
#include <string>

#include "io/data_file.hpp"
#include "ringckpt/metadata.hpp"

namespace ringckpt::detail {

// Reads metadata.json of `dir` (bounded by max_bytes, never through a link,
// FIFO or device: CheckpointDirectory::read_small_file) and decodes it;
// `text` receives what was read. A missing metadata.json is
// Error(kNotFound, dir/metadata.json, "not a checkpoint: ..."); a bad one
// Error(kCorrupt, ...); running out of memory Error(kIo, ...).
Metadata read_metadata_file(const CheckpointDirectory& dir, std::uint64_t max_bytes,
                            std::string& text);

// Opens the directory of a checkpoint to load or verify; a missing directory
// is Error(kNotFound, dir/metadata.json, "not a checkpoint: ...").
CheckpointDirectory open_checkpoint_directory(const std::filesystem::path& dir);

}  // namespace ringckpt::detail
