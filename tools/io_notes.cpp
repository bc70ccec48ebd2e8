// tools/io_notes.cpp — the notes of the I/O paths a run took.
#include "io_notes.hpp"

#include <algorithm>
#include <utility>

namespace ringckpt::tools {

std::function<void(std::string_view)> IoNotes::sink(std::string who) {
  return [this, who = std::move(who)](std::string_view m) { add(who + ": " + std::string(m)); };
}

void IoNotes::add(std::string note) {
  std::lock_guard lock(mu_);
  if (std::find(notes_.begin(), notes_.end(), note) == notes_.end()) {
    notes_.push_back(std::move(note));
  }
}

std::vector<std::string> IoNotes::all() const {
  std::lock_guard lock(mu_);
  return notes_;
}

}  // namespace ringckpt::tools
