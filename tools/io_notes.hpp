// tools/io_notes.hpp — the notes of the I/O paths a run took (each fallback
// said once), gathered from every engine to be shown once at the end.
#pragma once

#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace ringckpt::tools {

// Thread-safe: engines report from their own threads.
class IoNotes {
 public:
  // A report callback (IoOptions::report) whose notes read "who: message".
  std::function<void(std::string_view)> sink(std::string who);
  // Keeps `note` unless the same text was kept before.
  void add(std::string note);
  // Every kept note, in the order first seen.
  std::vector<std::string> all() const;

 private:
  mutable std::mutex mu_;
  std::vector<std::string> notes_;  // guarded by mu_; no two alike
};

}  // namespace ringckpt::tools
