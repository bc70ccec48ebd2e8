// tools/state_dict_mirror.hpp — a second state dict shaped like the model,
// for the bench to copy and load into, and how two such are compared.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "ringckpt/tensor.hpp"
#include "synthetic.hpp"

namespace ringckpt::tools::bench {

// A state dict with the same entries as `model`, whose tensors live in `dst`
// at the offsets they have in the model's arena; a tensor outside the arena
// gets its own buffer, kept in `extra`; blobs are copied.
// REQUIRES: dst holds at least model.arena_bytes bytes.
StateDict mirror_state_dict(const SyntheticModel& model, std::byte* dst,
                            std::vector<std::unique_ptr<std::byte[]>>& extra);

// The fqn of the first entry whose bytes differ between two state dicts of
// the same shape, "entry count differs", or "" if they are equal.
std::string first_difference(const StateDict& a, const StateDict& b);

}  // namespace ringckpt::tools::bench
