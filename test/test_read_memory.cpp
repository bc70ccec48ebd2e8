#define BOOST_TEST_MODULE read_memory
#include <boost/test/unit_test.hpp>

// Bounded reads: peak memory while reading a checkpoint stays under
// 4 x the size of what is read + 64 MiB. A checkpoint of many tiny tensors
// makes metadata.json and the safetensors header large (tens of MiB, and
// MiB) while the data is small; read_metadata, verify and load each run in a
// forked child, so that only their own growth of the resident set counts
// (getrusage's ru_maxrss, less the child's resident set when it starts; the
// destination tensors of load are allocated before that). Skipped under
// sanitizers, which change memory use.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "ringckpt/ringckpt.hpp"
#include "test_util.hpp"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define RINGCKPT_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
#define RINGCKPT_TEST_SANITIZED 1
#endif
#endif

using namespace ringckpt;
using namespace ringckpt::test;
namespace fs = std::filesystem;
namespace utf = boost::unit_test;

namespace {

constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;
constexpr int kTensors = 120000;

// This process's peak resident set, in bytes.
std::uint64_t peak_rss() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<std::uint64_t>(u.ru_maxrss) * 1024;
}

// Runs `body` in a forked child and returns what it returned, or "error: "
// and what it threw. The wait is bounded: a child that has not finished in
// 120 s is killed (an empty reply).
// REQUIRES: no other thread runs in this process (fork copies only this one).
std::string in_child(const std::function<std::string()>& body) {
  int fds[2];
  BOOST_TEST_REQUIRE(::pipe(fds) == 0);
  const pid_t pid = ::fork();
  BOOST_TEST_REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    std::string out;
    try {
      out = body();
    } catch (const std::exception& e) {
      out = std::string("error: ") + e.what();
    }
    [[maybe_unused]] ssize_t w = ::write(fds[1], out.data(), out.size());
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string reply;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  const auto ms_left = [&] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               deadline - std::chrono::steady_clock::now())
        .count();
  };
  // The reply, until the child closes its end (EOF) or time runs out.
  while (ms_left() > 0) {
    pollfd p{fds[0], POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(ms_left()));
    if (ready < 0 && errno == EINTR) continue;  // Boost.Test catches SIGCHLD
    if (ready <= 0) break;
    char buf[256];
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    reply.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  pid_t done = 0;
  while ((done = ::waitpid(pid, &status, WNOHANG)) == 0 && ms_left() > 0) {
    ::usleep(10000);
  }
  if (done != pid) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    BOOST_ERROR("the child did not finish in 120 s");
    return std::string();
  }
  return reply;
}

// Runs `prepare` then `measured` in a forked child; returns how far the
// child's peak resident set grew during `measured`, or -1 if the child
// failed. A child's peak starts at its resident set when forked, so the
// parent keeps its heap small: whatever it freed, a child could reuse
// without growing.
std::int64_t peak_growth(const std::function<void()>& prepare,
                         const std::function<void()>& measured) {
  const std::string reply = in_child([&] {
    prepare();
    const std::uint64_t before = peak_rss();
    measured();
    return std::to_string(peak_rss() - before);
  });
  if (reply.empty() || reply.starts_with("error")) {
    BOOST_ERROR("the measuring child failed: " << reply);
    return -1;
  }
  return std::stoll(reply);
}

// The bytes of a data file's safetensors header (its 8-byte length prefix
// and the JSON), read from the prefix alone.
std::uint64_t header_size(const fs::path& file) {
  unsigned char prefix[8] = {};
  std::ifstream in(file, std::ios::binary);
  in.read(reinterpret_cast<char*>(prefix), 8);
  BOOST_TEST_REQUIRE(in.gcount() == 8);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | prefix[i];
  return 8 + n;
}

std::string name_of(int i) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model.layers.%05d.attention.q_proj.weight", i);
  return buf;
}

// A checkpoint of `tensors` tensors of 4 floats each, saved into `dir` by a
// child, so that this process's heap stays small (see peak_growth).
void save_many(const fs::path& dir, int tensors) {
  BOOST_TEST_REQUIRE(in_child([&] {
                       std::vector<float> values(static_cast<std::size_t>(tensors) * 4);
                       for (std::size_t i = 0; i < values.size(); ++i) {
                         values[i] = static_cast<float>(i);
                       }
                       StateDict sd;
                       for (int i = 0; i < tensors; ++i) {
                         sd.add(name_of(i), TensorView{values.data() + 4 * i, DType::F32, {4}});
                       }
                       save(sd, dir, save_options());
                       return std::string("saved");
                     }) == "saved");
}

// What reading `dir` reads: metadata.json and its data file's header.
std::uint64_t bytes_read(const fs::path& dir) {
  return fs::file_size(dir / kMetadataFile) + header_size(dir / first_data_file(dir));
}

// How far load's peak grows loading the checkpoint of `tensors` tensors in
// `dir` (save_many) into destinations allocated before the measurement.
std::int64_t load_growth(const fs::path& dir, int tensors) {
  std::vector<float> back;
  StateDict dest;
  return peak_growth(
      [&] {
        back.assign(static_cast<std::size_t>(tensors) * 4, -1.0f);
        for (int i = 0; i < tensors; ++i) {
          dest.add(name_of(i), TensorView{back.data() + 4 * i, DType::F32, {4}});
        }
      },
      [&] {
        load(dest, dir, load_options());
        const int probe = tensors / 2 + 3;
        if (back[4 * probe + 2] != static_cast<float>(4 * probe + 2)) {
          throw std::runtime_error("wrong bytes loaded");
        }
      });
}

void report(const char* what, std::int64_t growth, std::uint64_t read_bytes) {
  const std::uint64_t limit = 4 * read_bytes + 64 * kMiB;
  BOOST_TEST_MESSAGE(what << ": peak grew " << growth / double(kMiB) << " MiB for "
                          << read_bytes / double(kMiB) << " MiB read ("
                          << growth / double(read_bytes) << " x), limit "
                          << limit / double(kMiB) << " MiB");
  BOOST_TEST(growth >= 0);
  BOOST_TEST(static_cast<std::uint64_t>(growth) <= limit,
             what << " grew " << growth << " bytes, over 4 x " << read_bytes << " + 64 MiB");
}

}  // namespace

BOOST_AUTO_TEST_CASE(peak_memory_of_reads_is_bounded, *utf::timeout(300)) {
#ifdef RINGCKPT_TEST_SANITIZED
  BOOST_TEST_MESSAGE("skipped: sanitizers change memory use");
  return;
#else
  TempDir tmp;
  const fs::path dir = tmp.path() / "many";
  save_many(dir, kTensors);
  const std::uint64_t metadata_bytes = fs::file_size(dir / kMetadataFile);
  const std::uint64_t header_bytes = header_size(dir / first_data_file(dir));
  BOOST_TEST_MESSAGE("metadata.json " << metadata_bytes << " bytes, safetensors header "
                                      << header_bytes << " bytes, " << kTensors << " tensors");
  BOOST_TEST_REQUIRE(metadata_bytes > 20 * kMiB);  // metadata dominates what is read
  BOOST_TEST_REQUIRE(header_bytes > 5 * kMiB);

  report("read_metadata", peak_growth([] {}, [&] {
           const Metadata md = read_metadata(dir);
           if (md.state_dict_metadata.size() != kTensors) throw std::runtime_error("entries lost");
         }),
         metadata_bytes);
  report("verify", peak_growth([] {}, [&] {
           const VerifyReport r = verify(dir, small_io());
           if (!r.ok()) throw std::runtime_error("verify failed: " + faults_text(r));
         }),
         metadata_bytes + header_bytes);
  report("load", load_growth(dir, kTensors), metadata_bytes + header_bytes);
#endif
}

// The bound must hold for metadata of any size the limit allows (1 GiB), not
// only at the size measured: load's peak grows, per byte more read, by less
// than 4 bytes. Measured between half and all of kTensors tensors, so the
// fixed costs (ring, threads, the library's own) cancel out.
BOOST_AUTO_TEST_CASE(peak_memory_of_load_grows_under_4_per_byte_read, *utf::timeout(300)) {
#ifdef RINGCKPT_TEST_SANITIZED
  BOOST_TEST_MESSAGE("skipped: sanitizers change memory use");
  return;
#else
  TempDir tmp;
  const int sizes[2] = {kTensors / 2, kTensors};
  std::uint64_t read[2] = {};
  std::int64_t growth[2] = {};
  for (int k = 0; k < 2; ++k) {
    const fs::path dir = tmp.path() / (k == 0 ? "half" : "all");
    save_many(dir, sizes[k]);
    read[k] = bytes_read(dir);
    growth[k] = load_growth(dir, sizes[k]);
    BOOST_TEST_MESSAGE("load of " << sizes[k] << " tensors: peak grew "
                                  << growth[k] / double(kMiB) << " MiB for "
                                  << read[k] / double(kMiB) << " MiB read ("
                                  << growth[k] / double(read[k]) << " x)");
    BOOST_TEST_REQUIRE(growth[k] > 0);
    fs::remove_all(dir);
  }
  BOOST_TEST_REQUIRE(read[1] > read[0] + 10 * kMiB);
  const double slope = double(growth[1] - growth[0]) / double(read[1] - read[0]);
  BOOST_TEST_MESSAGE("load: peak grows " << slope << " bytes per byte read");
  BOOST_TEST(slope < 4.0, "load's peak grows " << slope << " bytes per extra byte read");
#endif
}
