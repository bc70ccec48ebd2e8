// tools/bench_workdir.hpp — the directory the bench writes its checkpoints in.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "bench_options.hpp"

namespace ringckpt::tools::bench {

// Where the bench writes, and whether it owns the directory.
struct WorkDir {
  std::filesystem::path path;
  bool owned = false;  // created here: removed at the end (unless kept)
};

// --dir (created if missing; UsageError if it cannot be), else a fresh
// scratch directory that the bench owns.
WorkDir make_work_dir(const BenchOptions& o);

// Removes a work directory the bench made itself, unless asked to keep it.
struct WorkDirCleanup {
  const WorkDir& work;
  bool keep;
  ~WorkDirCleanup();
};

// UsageError naming the first of `names` that already exists in the work
// directory: the bench never overwrites what it did not write.
void check_free(const WorkDir& w, const std::vector<std::string>& names);

// remove_all, ignoring errors.
void remove_quietly(const std::filesystem::path& p);

}  // namespace ringckpt::tools::bench
