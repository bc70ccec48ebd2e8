// lib/format/storage_merge.hpp — the storage entries of a Metadata with write
// results recorded in it: the one definition of what add_results records,
// walked without building a map (encode_metadata writes it straight).
#pragma once

#include <functional>
#include <vector>

#include "ringckpt/metadata.hpp"
#include "ringckpt/plan.hpp"

namespace ringckpt::detail {

// Calls f(index, info) for each storage entry of `metadata` with the items of
// `results` recorded as storage_data[item.index] = item.storage_data would
// record them, one by one in order: in key order; of equal indexes the first
// gives the key (an existing entry keeps its own, index hint included) and
// the last the value. O(n + k log k) for n entries and k items.
void for_each_merged_entry(const Metadata& metadata, const std::vector<WriteResults>& results,
                           const std::function<void(const MetadataIndex&, const StorageInfo&)>& f);

}  // namespace ringckpt::detail
