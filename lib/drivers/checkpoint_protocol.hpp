// checkpoint_protocol.hpp — DCP's collective save and load protocol over any
// storage, planner and coordinator, as ringckpt::save / load run it but
// without translating what escapes: the entry points that know the
// checkpoint directory (ringckpt::save / load on a path, the Checkpointer)
// translate with it (format/error_translation.hpp), so the Error names it.
#pragma once

#include <string>

#include "ringckpt/checkpoint.hpp"

namespace ringckpt::detail {

// `where` names the place of a failure that names none (the directory, or
// the rank).
Metadata save_with(const StateDict& state_dict, StorageWriter& writer, SavePlanner* planner,
                   Coordinator* coordinator, const std::string& where);

void load_with(StateDict& state_dict, StorageReader& reader, LoadPlanner* planner,
               Coordinator* coordinator, const std::string& where);

}  // namespace ringckpt::detail
