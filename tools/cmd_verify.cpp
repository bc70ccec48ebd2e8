// cmd_verify.cpp — `ringckpt verify DIR`: re-reads every extent of every data
// file and checks it against the XXH3 that metadata.json records.

#include <iostream>
#include <string>
#include <vector>

#include "commands.hpp"
#include "ringckpt/verify.hpp"
#include "synthetic.hpp"
#include "terminal.hpp"

namespace po = boost::program_options;

namespace ringckpt::tools {
namespace {

constexpr const char* kCommand = "verify";
constexpr std::size_t kRingBytes = std::size_t{64} << 20;  // 8 extents of the default 8 MiB

// "FILE: extent K (bytes a..b): message", or "FILE: message" for a fault of
// the file as a whole. The library's extent messages may already begin with
// their "extent K (...)" locator; it is not said twice.
std::string fault_line(const VerifyFault& fault) {
  std::string line = fault.file + ": ";
  if (fault.extent >= 0) {
    const std::string locator = "extent " + std::to_string(fault.extent);
    const bool located = fault.message.rfind(locator + " ", 0) == 0 ||
                         fault.message.rfind(locator + ":", 0) == 0;
    if (!located) {
      line += locator + " (bytes " + std::to_string(fault.offset) + ".." +
              std::to_string(fault.offset + fault.length) + "): ";
    }
  }
  return line + fault.message;
}

}  // namespace

int run_verify(const std::vector<std::string>& args) {
  po::options_description options;
  po::options_description hidden;
  hidden.add_options()("dir", po::value<std::string>(), "checkpoint directory");
  po::positional_options_description positional;
  positional.add("dir", 1);
  po::variables_map values;
  if (auto status = parse_command_line(
          kCommand, "DIR",
          "Checks the checkpoint in DIR: metadata.json (its own checksum and consistency),\n"
          "each data file's size and safetensors header, and the XXH3 checksum of every\n"
          "extent. Prints one line per fault and exits 1, or a summary and exits 0.\n"
          "Leftovers of interrupted saves (data files metadata.json does not list, a stale\n"
          "metadata.json.tmp) are printed as notes; they do not fail the check.",
          options, hidden, positional, args, values)) {
    return *status;
  }
  if (!values.count("dir")) return bad_argument(kCommand, "missing DIR, the checkpoint directory");
  const std::filesystem::path dir = values["dir"].as<std::string>();

  VerifyReport report;
  {
    ProgressBar bar("verify");
    // A streaming read needs a few extents in flight, not the default ring
    // (sized for staging a save): a smaller ring sets up faster.
    IoOptions io;
    io.ring_bytes = kRingBytes;
    report = verify(dir, io,
                    [&bar](std::uint64_t done, std::uint64_t total) { bar.update(done, total); });
  }
  for (const auto& note : report.notes) std::cout << "note: " << note << '\n';
  if (!report.ok()) {
    for (const auto& fault : report.faults) std::cout << fault_line(fault) << '\n';
    std::cout << "FAILED: " << report.faults.size()
              << (report.faults.size() == 1 ? " fault" : " faults") << " in " << dir.string()
              << '\n';
    return 1;
  }
  std::cout << "ok: " << report.files << (report.files == 1 ? " file, " : " files, ")
            << report.extents << (report.extents == 1 ? " extent, " : " extents, ")
            << report.bytes << " bytes verified (" << format_bytes(report.bytes) << ")\n";
  return 0;
}

}  // namespace ringckpt::tools
