// lib/format/metadata_document.hpp — the metadata document as Boost.JSON
// builds it and as the streaming decoder reads it: shared by metadata.json
// (metadata_encoder.cpp, metadata_decoder.cpp).
#pragma once

#include <boost/json.hpp>

#include <string>
#include <string_view>

#include "format/json_encode.hpp"
#include "ringckpt/metadata.hpp"

namespace ringckpt::detail {

// A guess at the serialized size of a metadata document, to size buffers.
std::size_t metadata_size_hint(const Metadata& metadata);

// Bytes of arena to give a metadata DOM whose text is about `text_bytes`
// long: the DOM of such a document takes a few times its text.
inline std::size_t metadata_arena_bytes(std::size_t text_bytes) { return 4 * text_bytes + 4096; }

// The metadata document without its checksum, keys in the documented order:
// {"format","version","state_dict_metadata","storage_data","files","planner_data"},
// then "storage_meta" only when metadata.storage_meta is set.
boost::json::object metadata_document(const Metadata& metadata, const JsonStorage& sp);

// Decodes a metadata document in one streaming pass (no DOM: memory stays
// near the size of the result), checking the type and range of every field.
// Throws Error(kCorrupt, where, fault) naming the field at fault. Checks of
// meaning (check_metadata) are the caller's.
Metadata decode_metadata_text(std::string_view text, const std::string& where);

}  // namespace ringckpt::detail
