// lib/plan/layout.hpp — where every byte of a finished SavePlan goes.
//
// The layout is a pure function of the plan: data file names, each file's
// safetensors header, and each item's byte range. It is fixed before staging
// copies a byte, and the write order on disk is the plan order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ringckpt/plan.hpp"

namespace ringckpt {

struct ItemPlacement {
  std::size_t item = 0;        // position in SavePlan::items
  std::uint64_t offset = 0;    // absolute, in the file
  std::uint64_t length = 0;
};

// One data file: header bytes at offset 0 (a multiple of kAlignment long),
// then its items back to back in plan order. size = header + all items.
struct FileLayout {
  std::string relative_path;
  std::string header;
  std::vector<ItemPlacement> items;  // sorted by offset, no gaps
  std::uint64_t size = 0;
};

struct SaveLayout {
  std::vector<FileLayout> files;
  std::uint64_t total_bytes() const noexcept;
};

// The safetensors name of an item: its fqn for a whole tensor or blob; for a
// shard, fqn followed by "@" and its offsets joined by ",".
std::string safetensors_name(const WriteItem& item);

// The safetensors name of the shard of `fqn` that starts at `offsets`.
std::string safetensors_shard_name(std::string_view fqn, std::span<const std::int64_t> offsets);

// A blob's safetensors entry: this dtype, shape [its byte count].
inline constexpr DType kBlobDType = DType::U8;

// The names of data files, one implementation for the writer and the clean-up.
// A save picks a fresh generation (16 lowercase hex digits) on the
// coordinator; rank r of that save names its files {data_prefix(r, g)}{n}
// .safetensors, i.e. __{r}_{g}_{n}.safetensors, so a new save never writes
// over the files an older checkpoint in the same directory still lists.
std::string new_save_generation();
std::string data_prefix(int rank, std::string_view generation);
// Whether `name` (a file name, no directory) is one a save of ringckpt
// creates: __{r}_{g}_{n}.safetensors, or __{r}_{n}.safetensors of checkpoints
// written before generations existed.
bool is_data_file_name(std::string_view name);

namespace detail {
// For tests only: while set (not empty), new_save_generation() returns
// `generation` (16 lowercase hex digits), so that a test can predict the
// names a save will create. Empty: fresh generations again.
void fix_save_generation_for_tests(std::string generation);
}  // namespace detail

// Lays `plan` out in files named {prefix}{n}.safetensors (n = 0, 1, ...), a new
// file begun when the current one already holds max_file_bytes of data (0: no
// limit). A plan with no items gets no file.
SaveLayout plan_layout(const SavePlan& plan, std::string_view prefix,
                       std::uint64_t max_file_bytes);

}  // namespace ringckpt
