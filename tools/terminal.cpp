// terminal.cpp — progress bars and tables for people reading the tool's output.

#include "terminal.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <mutex>

namespace ringckpt::tools {

bool stderr_is_terminal() { return ::isatty(STDERR_FILENO) == 1; }

std::string format_rate(double bytes_per_second) {
  static constexpr const char* kUnits[] = {"B/s", "KB/s", "MB/s", "GB/s", "TB/s"};
  double value = bytes_per_second < 0 ? 0 : bytes_per_second;
  std::size_t unit = 0;
  while (value >= 999.95 && unit + 1 < std::size(kUnits)) {
    value /= 1000.0;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof text, "%.1f %s", value, kUnits[unit]);
  return text;
}

// Invariant: nothing is written unless stderr is a terminal; once anything
// has been drawn, the destructor erases it, so later output starts on a clean
// line (the command's own summary says how it ended).
struct ProgressBar::Impl {
  using Clock = std::chrono::steady_clock;
  static constexpr auto kRedrawInterval = std::chrono::milliseconds(100);
  static constexpr int kWidth = 30;

  std::string label;
  bool enabled = stderr_is_terminal();
  std::mutex mutex;
  Clock::time_point start = Clock::now();
  Clock::time_point last_draw{};
  bool drawn = false;

  void draw(std::uint64_t done, std::uint64_t total) {
    const double fraction =
        total == 0 ? 1.0 : std::min(1.0, static_cast<double>(done) / static_cast<double>(total));
    const int filled = static_cast<int>(fraction * kWidth);
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    const std::string rate = seconds > 0 ? format_rate(done / seconds) : "";
    std::string bar(filled, '#');
    bar.append(kWidth - filled, '.');
    // \x1b[K clears what a longer previous line left behind.
    std::fprintf(stderr, "\r%s [%s] %3d%% %s\x1b[K", label.c_str(), bar.c_str(),
                 static_cast<int>(fraction * 100), rate.c_str());
    std::fflush(stderr);
    drawn = true;
    last_draw = Clock::now();
  }
};

ProgressBar::ProgressBar(std::string label) : impl_(new Impl) {
  impl_->label = std::move(label);
}

ProgressBar::~ProgressBar() {
  {
    std::lock_guard lock(impl_->mutex);
    if (impl_->drawn) {
      std::fputs("\r\x1b[K", stderr);
      std::fflush(stderr);
    }
  }
  delete impl_;
}

void ProgressBar::update(std::uint64_t done, std::uint64_t total) {
  if (!impl_->enabled) return;
  std::lock_guard lock(impl_->mutex);
  const auto now = Impl::Clock::now();
  if (impl_->drawn && done < total && now - impl_->last_draw < Impl::kRedrawInterval) return;
  impl_->draw(done, total);
}

namespace {

// A cell reads as a number if it starts with a digit (or a minus and a
// digit): "4096", "16.0 MiB", "2.3 GB/s". Such columns align right.
bool looks_numeric(const std::string& cell) {
  const auto digit = [](char c) { return c >= '0' && c <= '9'; };
  if (cell.empty()) return true;
  if (digit(cell[0])) return true;
  return cell.size() > 1 && cell[0] == '-' && digit(cell[1]);
}

}  // namespace

std::string format_table(const std::vector<std::string>& header,
                         const std::vector<std::vector<std::string>>& rows) {
  const std::size_t columns = header.size();
  std::vector<std::size_t> width(columns);
  std::vector<bool> numeric(columns, !rows.empty());
  for (std::size_t c = 0; c < columns; ++c) width[c] = header[c].size();
  for (const auto& row : rows) {
    for (std::size_t c = 0; c < columns && c < row.size(); ++c) {
      width[c] = std::max(width[c], row[c].size());
      if (!looks_numeric(row[c])) numeric[c] = false;
    }
  }

  std::string out;
  const auto append_row = [&](const std::vector<std::string>& row) {
    std::string line;
    for (std::size_t c = 0; c < columns; ++c) {
      const std::string& cell = c < row.size() ? row[c] : std::string();
      const std::string padding(width[c] - cell.size(), ' ');
      if (c > 0) line += "  ";
      line += numeric[c] ? padding + cell : cell + padding;
    }
    line.erase(line.find_last_not_of(' ') + 1);
    out += line;
    out += '\n';
  };
  append_row(header);
  std::vector<std::string> rule(columns);
  for (std::size_t c = 0; c < columns; ++c) rule[c] = std::string(width[c], '-');
  append_row(rule);
  for (const auto& row : rows) append_row(row);
  return out;
}

}  // namespace ringckpt::tools
