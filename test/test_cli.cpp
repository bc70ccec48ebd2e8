// test/test_cli.cpp — the ringckpt command-line tool, run as a program: exit
// statuses, one-line errors, and what inspect / verify / demo print. The
// binary comes from the environment (RINGCKPT_BIN), set by meson test.
#define BOOST_TEST_MODULE cli
#include <boost/test/unit_test.hpp>

#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

#include <boost/json.hpp>

#include "ringckpt/checkpoint.hpp"
#include "ringckpt/metadata.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using ringckpt::test::TempDir;

namespace {

struct Result {
  int status = -1;
  std::string out;
  std::string err;
};

std::string binary() {
  const char* bin = std::getenv("RINGCKPT_BIN");
  BOOST_TEST_REQUIRE(bin != nullptr, "RINGCKPT_BIN must name the ringckpt binary");
  return bin;
}

std::string quoted(const std::string& text) {
  std::string out = "'";
  for (char c : text) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

std::string read_all(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Runs `ringckpt <args>` (args already quoted where needed), capturing
// stdout, stderr and the exit status.
Result run(const std::string& args) {
  TempDir capture;
  const fs::path out = capture / "stdout", err = capture / "stderr";
  const std::string command = quoted(binary()) + " " + args + " >" + quoted(out.string()) +
                              " 2>" + quoted(err.string()) + " </dev/null";
  const int raw = std::system(command.c_str());
  Result result;
  result.status = raw != -1 && WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  result.out = read_all(out);
  result.err = read_all(err);
  BOOST_TEST_MESSAGE("ringckpt " << args << " -> " << result.status << "\nstdout:\n"
                                 << result.out << "stderr:\n" << result.err);
  return result;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// The name of the first data file metadata.json in dir lists (names carry the
// save's generation).
std::string data_file_of(const fs::path& dir) {
  const ringckpt::Metadata md = ringckpt::read_metadata(dir);
  BOOST_TEST_REQUIRE(!md.files.empty());
  return md.files.front().relative_path;
}

std::size_t line_count(const std::string& text) {
  return static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n'));
}

// A bad argument: exit 2 and exactly one line on stderr, "ringckpt...: ...".
void check_bad_argument(const std::string& args) {
  BOOST_TEST_CONTEXT("ringckpt " << args) {
    const Result r = run(args);
    BOOST_TEST(r.status == 2);
    BOOST_TEST(line_count(r.err) == 1u);
    BOOST_TEST(r.err.rfind("ringckpt", 0) == 0u);
    BOOST_TEST(r.out.empty());
  }
}

// One 16 MiB checkpoint made by `demo --keep`, shared by the tests that only
// read it; tests that damage a checkpoint damage their own copy.
struct DemoCheckpoint {
  TempDir root;
  fs::path dir = root / "ckpt";
  Result demo;
  DemoCheckpoint() {
    demo = run("demo --size 16MiB --keep --seed 7 --dir " + quoted(dir.string()));
  }
};

const DemoCheckpoint& demo_checkpoint() {
  static DemoCheckpoint checkpoint;
  return checkpoint;
}

// A copy of the demo checkpoint in a fresh directory.
struct CheckpointCopy {
  TempDir root;
  fs::path dir = root / "ckpt";
  CheckpointCopy() {
    BOOST_TEST_REQUIRE(demo_checkpoint().demo.status == 0);
    fs::copy(demo_checkpoint().dir, dir, fs::copy_options::recursive);
  }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(arguments)

BOOST_AUTO_TEST_CASE(help_lists_every_subcommand) {
  const Result r = run("--help");
  BOOST_TEST(r.status == 0);
  for (const char* sub : {"inspect", "verify", "demo", "bench"}) {
    BOOST_TEST(contains(r.out, std::string("\n  ") + sub + " "), sub);
  }
}

BOOST_AUTO_TEST_CASE(each_subcommand_has_help) {
  for (const char* sub : {"inspect", "verify", "demo", "bench"}) {
    BOOST_TEST_CONTEXT(sub) {
      const Result r = run(std::string(sub) + " --help");
      BOOST_TEST(r.status == 0);
      BOOST_TEST(!r.out.empty());
    }
  }
  const Result r = run("help demo");
  BOOST_TEST(r.status == 0);
  BOOST_TEST(contains(r.out, "--size"));
}

BOOST_AUTO_TEST_CASE(bad_arguments_exit_2_with_one_line) {
  check_bad_argument("");
  check_bad_argument("frobnicate");
  check_bad_argument("--bogus");
  check_bad_argument("inspect");
  check_bad_argument("inspect a b");
  check_bad_argument("verify");
  check_bad_argument("verify --bogus d");
  check_bad_argument("demo --size abc");
  check_bad_argument("demo --size 0");
  check_bad_argument("demo --size 16XB");
  check_bad_argument("demo --size 99999999999TiB");
  check_bad_argument("demo --size 1KiB");  // too small to shape a transformer
  check_bad_argument("demo --seed minus-one");
  check_bad_argument("demo --size");
  check_bad_argument("demo stray");

  const Result r = run("demo --size abc");
  BOOST_TEST(r.err == "ringckpt demo: invalid --size 'abc' (expected e.g. 256MiB)\n");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(demo)

BOOST_AUTO_TEST_CASE(keeps_a_checkpoint_in_dir) {
  const DemoCheckpoint& checkpoint = demo_checkpoint();
  BOOST_TEST(checkpoint.demo.status == 0);
  BOOST_TEST(fs::exists(checkpoint.dir / "metadata.json"));
  BOOST_TEST(fs::exists(checkpoint.dir / data_file_of(checkpoint.dir)));
  for (const char* step : {"save", "verify", "load", "compare", "O_DIRECT", "B/s"}) {
    BOOST_TEST(contains(checkpoint.demo.out, step), step);
  }
  BOOST_TEST(contains(checkpoint.demo.out, "ok: "));

  const ringckpt::Metadata metadata = ringckpt::read_metadata(checkpoint.dir);
  BOOST_TEST(metadata.state_dict_metadata.count("model.embed_tokens.weight") == 1u);
  BOOST_TEST(metadata.state_dict_metadata.count("optim.exp_avg.model.norm.weight") == 1u);
  BOOST_TEST(metadata.state_dict_metadata.count("optim.exp_avg_sq.model.norm.weight") == 1u);
  BOOST_TEST(metadata.state_dict_metadata.count("step") == 1u);
  // The model is about the size asked for.
  std::uint64_t bytes = 0;
  for (const auto& [index, info] : metadata.storage_data) bytes += info.length;
  BOOST_TEST(bytes > (15ull << 20));
  BOOST_TEST(bytes < (17ull << 20));
}

BOOST_AUTO_TEST_CASE(removes_its_temporary_directory) {
  const Result r = run("demo --size 4MiB");
  BOOST_TEST_REQUIRE(r.status == 0);
  // "  directory /var/tmp/ringckpt-demo-XXXXXX (checkpoint removed at the end; ...)"
  const std::string label = "  directory ";
  const auto begin = r.out.find(label);
  BOOST_TEST_REQUIRE(begin != std::string::npos);
  const auto path_begin = begin + label.size();
  const std::string path = r.out.substr(path_begin, r.out.find(" (", path_begin) - path_begin);
  BOOST_TEST(contains(path, "ringckpt-demo-"));
  BOOST_TEST(!fs::exists(path));
}

BOOST_AUTO_TEST_CASE(refuses_a_directory_holding_a_checkpoint) {
  CheckpointCopy copy;
  const std::string before = read_all(copy.dir / "metadata.json");
  const Result r = run("demo --size 4MiB --dir " + quoted(copy.dir.string()));
  BOOST_TEST(r.status == 1);
  BOOST_TEST(contains(r.err, "metadata.json"));
  BOOST_TEST(line_count(r.err) == 1u);
  BOOST_TEST(read_all(copy.dir / "metadata.json") == before);
  BOOST_TEST(run("verify " + quoted(copy.dir.string())).status == 0);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(inspect)

BOOST_AUTO_TEST_CASE(lists_tensors_and_totals) {
  const DemoCheckpoint& checkpoint = demo_checkpoint();
  BOOST_TEST_REQUIRE(checkpoint.demo.status == 0);
  const Result r = run("inspect " + quoted(checkpoint.dir.string()));
  BOOST_TEST(r.status == 0);
  const std::string data = data_file_of(checkpoint.dir);
  for (const std::string text : {"model.embed_tokens.weight", "optim.exp_avg_sq.model.norm.weight",
                                 "step", "BF16", "F32", "tensor", "bytes", data.c_str(),
                                 "entries", "files", "extents"}) {
    BOOST_TEST(contains(r.out, text), text);
  }
  // Disk order: the embedding is the first tensor saved.
  BOOST_TEST(r.out.find("model.embed_tokens.weight") < r.out.find("optim.exp_avg."));
  const auto entries = ringckpt::read_metadata(checkpoint.dir).state_dict_metadata.size();
  BOOST_TEST(contains(r.out, "entries  " + std::to_string(entries) + " "));
}

BOOST_AUTO_TEST_CASE(json_totals_match_the_metadata) {
  const DemoCheckpoint& checkpoint = demo_checkpoint();
  BOOST_TEST_REQUIRE(checkpoint.demo.status == 0);
  const Result r = run("inspect --json " + quoted(checkpoint.dir.string()));
  BOOST_TEST_REQUIRE(r.status == 0);
  const boost::json::value document = boost::json::parse(r.out);
  const ringckpt::Metadata metadata = ringckpt::read_metadata(checkpoint.dir);

  const auto& totals = document.at("totals").as_object();
  std::uint64_t bytes = 0;
  for (const auto& [index, info] : metadata.storage_data) bytes += info.length;
  BOOST_TEST(totals.at("entries").to_number<std::uint64_t>() ==
             metadata.state_dict_metadata.size());
  BOOST_TEST(totals.at("bytes").to_number<std::uint64_t>() == bytes);
  BOOST_TEST(totals.at("files").to_number<std::uint64_t>() == metadata.files.size());
  BOOST_TEST(totals.at("file_bytes").to_number<std::uint64_t>() == metadata.total_bytes());
  BOOST_TEST(totals.at("extent_size").to_number<std::uint64_t>() ==
             metadata.files.front().extent_size);

  const auto& entries = document.at("entries").as_array();
  BOOST_TEST(entries.size() == metadata.state_dict_metadata.size());
  std::uint64_t tensors = 0, entry_bytes = 0;
  for (const auto& entry : entries) {
    const auto& object = entry.as_object();
    if (object.at("kind").as_string() == "tensor") ++tensors;
    entry_bytes += object.at("bytes").to_number<std::uint64_t>();
  }
  BOOST_TEST(totals.at("tensors").to_number<std::uint64_t>() == tensors);
  BOOST_TEST(entry_bytes == bytes);
  BOOST_TEST(entries.at(0).at("name").as_string() == "model.embed_tokens.weight");
  BOOST_TEST(entries.at(0).at("dtype").as_string() == "BF16");
}

BOOST_AUTO_TEST_CASE(non_checkpoint_directory_names_metadata_json) {
  TempDir empty;
  const Result r = run("inspect " + quoted(empty.path().string()));
  BOOST_TEST(r.status == 1);
  BOOST_TEST(contains(r.err, "metadata.json"));
  BOOST_TEST(line_count(r.err) == 1u);
  BOOST_TEST(r.out.empty());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(verify)

BOOST_AUTO_TEST_CASE(intact_checkpoint_is_ok) {
  const DemoCheckpoint& checkpoint = demo_checkpoint();
  BOOST_TEST_REQUIRE(checkpoint.demo.status == 0);
  const Result r = run("verify " + quoted(checkpoint.dir.string()));
  BOOST_TEST(r.status == 0);
  BOOST_TEST(r.out.rfind("ok: 1 file, ", 0) == 0u);
  BOOST_TEST(contains(r.out, "bytes verified"));
}

BOOST_AUTO_TEST_CASE(flipped_byte_names_file_and_extent) {
  CheckpointCopy copy;
  const std::string name = data_file_of(copy.dir);
  const fs::path data = copy.dir / name;
  const ringckpt::Metadata metadata = ringckpt::read_metadata(copy.dir);
  const std::uint64_t size = fs::file_size(data);
  const std::uint64_t middle = size / 2;
  {
    std::fstream file(data, std::ios::in | std::ios::out | std::ios::binary);
    file.seekg(static_cast<std::streamoff>(middle));
    char byte = 0;
    file.read(&byte, 1);
    byte = static_cast<char>(byte ^ 0x5A);
    file.seekp(static_cast<std::streamoff>(middle));
    file.write(&byte, 1);
  }
  const std::uint64_t extent = middle / metadata.files.front().extent_size;
  const Result r = run("verify " + quoted(copy.dir.string()));
  BOOST_TEST(r.status == 1);
  BOOST_TEST(contains(r.out, name + ": extent " + std::to_string(extent) + " "));
  BOOST_TEST(contains(r.out, "checksum"));
  // Exactly one extent is at fault.
  BOOST_TEST(std::count(r.out.begin(), r.out.end(), '\n') == 2);  // the fault and the summary
}

BOOST_AUTO_TEST_CASE(missing_data_file_is_named) {
  CheckpointCopy copy;
  const std::string name = data_file_of(copy.dir);
  fs::remove(copy.dir / name);
  const Result r = run("verify " + quoted(copy.dir.string()));
  BOOST_TEST(r.status == 1);
  BOOST_TEST(contains(r.out, name + ": "));
  BOOST_TEST(contains(r.out, "missing"));
}

BOOST_AUTO_TEST_CASE(leftovers_are_notes_and_exit_0) {
  CheckpointCopy copy;
  const std::string leftover = "__0_0123456789abcdef_0.safetensors";
  {
    std::ofstream out(copy.dir / leftover, std::ios::binary);
    out << "half a data file";
  }
  const Result r = run("verify " + quoted(copy.dir.string()));
  BOOST_TEST(r.status == 0, r.out);
  BOOST_TEST(contains(r.out, "note: " + (copy.dir / leftover).string()), r.out);
  BOOST_TEST(contains(r.out, "ok: 1 file, "), r.out);
}

BOOST_AUTO_TEST_CASE(non_checkpoint_directory_is_a_fault) {
  TempDir empty;
  const Result r = run("verify " + quoted(empty.path().string()));
  BOOST_TEST(r.status == 1);
  BOOST_TEST(contains(r.out, "metadata.json"));
}

BOOST_AUTO_TEST_SUITE_END()
