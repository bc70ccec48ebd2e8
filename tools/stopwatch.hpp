// tools/stopwatch.hpp — the clock the tools time their steps with.
#pragma once

#include <chrono>

namespace ringckpt::tools {

using Clock = std::chrono::steady_clock;

// Seconds from `start` until now.
inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace ringckpt::tools
