#include "load/metadata_file.hpp"

#include <new>

#include "format/metadata_json.hpp"
#include "ringckpt/error.hpp"

namespace ringckpt::detail {

CheckpointDirectory open_checkpoint_directory(const std::filesystem::path& dir) {
  try {
    return CheckpointDirectory::open(dir);
  } catch (const Error& e) {
    if (e.code() != ErrorCode::kNotFound) throw;
    throw Error(ErrorCode::kNotFound, (dir / kMetadataFile).string(),
                "not a checkpoint: the directory does not exist");
  }
}

Metadata read_metadata_file(const CheckpointDirectory& dir, std::uint64_t max_bytes,
                            std::string& text) {
  const std::string where = dir.path_of(kMetadataFile).string();
  try {
    text = dir.read_small_file(kMetadataFile, max_bytes);
  } catch (const Error& e) {
    if (e.code() != ErrorCode::kNotFound) throw;
    throw Error(ErrorCode::kNotFound, where,
                "not a checkpoint: metadata.json is missing (the save never committed?)");
  }
  try {
    return decode_metadata(text, where);
  } catch (const std::bad_alloc&) {
    throw Error(ErrorCode::kIo, where,
                "out of memory decoding " + std::to_string(text.size()) + " bytes of metadata");
  }
}

}  // namespace ringckpt::detail
