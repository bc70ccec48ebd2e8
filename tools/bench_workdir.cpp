// tools/bench_workdir.cpp — the directory the bench writes its checkpoints in.
#include "bench_workdir.hpp"

#include <system_error>

#include "scratch_directory.hpp"

namespace ringckpt::tools::bench {

namespace fs = std::filesystem;

void remove_quietly(const fs::path& p) {
  std::error_code ec;
  fs::remove_all(p, ec);
}

WorkDirCleanup::~WorkDirCleanup() {
  if (work.owned && !keep) remove_quietly(work.path);
}

WorkDir make_work_dir(const BenchOptions& o) {
  WorkDir w;
  if (o.dir) {
    std::error_code ec;
    fs::create_directories(*o.dir, ec);
    if (ec || !fs::is_directory(*o.dir)) {
      throw UsageError("--dir " + o.dir->string() + " is not a directory that can be created" +
                       (ec ? " (" + ec.message() + ")" : std::string()));
    }
    w.path = *o.dir;
    return w;
  }
  w.path = make_scratch_directory("ringckpt-bench");
  w.owned = true;
  return w;
}

void check_free(const WorkDir& w, const std::vector<std::string>& names) {
  for (const auto& n : names) {
    if (fs::exists(w.path / n)) {
      throw UsageError((w.path / n).string() +
                       " already exists; remove it or give another --dir");
    }
  }
}

}  // namespace ringckpt::tools::bench
