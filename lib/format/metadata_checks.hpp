// lib/format/metadata_checks.hpp — the checks of meaning that make decoded
// metadata.json safe to read by: files, chunks and storage entries agree.
#pragma once

#include <string>

#include "ringckpt/metadata.hpp"

namespace ringckpt::detail {

// Throws Error(kCorrupt, file, fault) unless: every file is a plain name
// inside the directory (not metadata.json, not listed twice) with an extent
// size a positive multiple of 4096 (at most 1 GiB) and one checksum per
// extent; every tensor's size is believable and its chunks have its rank,
// lie inside it, start at distinct offsets and tile it exactly once; every
// storage entry names an item (a chunk of a tensor by its offset, or a blob),
// has the chunk's byte length, and lies inside a listed file; no two entries
// share a byte of a file; and every chunk and blob has a storage entry.
// REQUIRES: `md` was decoded by decode_metadata_text, so every count, size
// and offset is in [0, 2^62].
void check_metadata(const Metadata& md, const std::string& file);

}  // namespace ringckpt::detail
