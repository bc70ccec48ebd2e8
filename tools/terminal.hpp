// tools/terminal.hpp — what the tool shows people: progress and tables.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ringckpt::tools {

// True if stderr is a terminal (progress bars only then).
bool stderr_is_terminal();

// A one-line progress bar on stderr, redrawn in place; silent when stderr is
// not a terminal. Thread-safe.
class ProgressBar {
 public:
  explicit ProgressBar(std::string label);
  ~ProgressBar();  // erases the bar: what follows starts on a clean line
  void update(std::uint64_t done, std::uint64_t total);

 private:
  struct Impl;
  Impl* impl_;
};

// A rate in decimal units, as disks are sold: "1.2 GB/s", "850.3 MB/s".
std::string format_rate(double bytes_per_second);

// Left-aligned text columns, right-aligned numeric ones, one header row.
std::string format_table(const std::vector<std::string>& header,
                         const std::vector<std::vector<std::string>>& rows);

}  // namespace ringckpt::tools
