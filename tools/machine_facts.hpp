// tools/machine_facts.hpp — what the bench says about the machine it ran on:
// the file system of a directory, the CPUs it may use, its own memory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace ringckpt::tools::bench {

// "ext4", "tmpfs", "xfs", ... or the statfs magic in hex; "unknown" if
// statfs fails.
std::string filesystem_name(const std::filesystem::path& dir);

// CPUs this process may run on (its affinity mask).
unsigned cpu_count();

// A "VmRSS" / "VmHWM" line of /proc/self/status in bytes (0 if unreadable).
std::uint64_t proc_status_kb(const char* key);

// Resets VmHWM to the current RSS (clear_refs 5); false where not allowed.
bool reset_peak_rss();

}  // namespace ringckpt::tools::bench
