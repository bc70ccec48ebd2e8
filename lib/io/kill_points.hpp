// lib/io/kill_points.hpp — for tests only: make the process kill itself
// (SIGKILL) at a named step of a save, to prove that a checkpoint directory
// survives a crash at that step (the `crash` suite).
//
// The point is chosen by the environment variable RINGCKPT_TEST_KILL_AT,
// read once, at the first kill_point() call of the process; unset or empty,
// a call costs one comparison of a cached string's size. The points, in the
// order a save reaches them:
//   data-created  every data file of the rank created (save_job)
//   staging       the first extent copied and hashed into its ring slot,
//                 before any write is submitted (save_job)
//   data-written  the first extent written, the rest not yet (save_job)
//   data-synced   every data file fdatasync'ed (save_job)
//   tmp-written   metadata.json.tmp written and synced, before the rename
//                 (write_file_atomically)
//   renamed       metadata.json renamed into place and the directory synced
//                 (rank_writer commit)
//   old-removal   the first data file of the previous generation removed
//                 (rank_writer commit)
#pragma once

#include <string_view>

namespace ringckpt::detail {

// raise(SIGKILL) if RINGCKPT_TEST_KILL_AT names `point`; otherwise nothing.
void kill_point(std::string_view point) noexcept;

}  // namespace ringckpt::detail
