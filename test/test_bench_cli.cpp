// test_bench_cli.cpp — `ringckpt bench` as a user runs it (binary in
// RINGCKPT_BIN): bad options are refused in one line with exit 2, --json is a
// complete document, every model kind runs and leaves checkpoints that
// verify, and the training-loop simulation passes its own value check.
// Figures are not judged here (speed claims live in the bench's output).
#define BOOST_TEST_MODULE bench_cli
#include <boost/test/unit_test.hpp>

#include <boost/json.hpp>

#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

std::string binary() {
  const char* b = std::getenv("RINGCKPT_BIN");
  BOOST_TEST_REQUIRE(b != nullptr, "RINGCKPT_BIN names the ringckpt binary");
  return b;
}

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

struct Result {
  int status = -1;   // exit status
  std::string out;   // stdout (stderr too when merged)
};

// Runs `ringckpt <args>`; stderr goes with stdout if merge, else to `err_to`.
Result run(const std::string& args, bool merge = false, const std::string& err_to = "/dev/null") {
  const std::string cmd =
      quote(binary()) + " " + args + (merge ? " 2>&1" : " 2>" + quote(err_to)) + " </dev/null";
  Result r;
  FILE* p = ::popen(cmd.c_str(), "r");
  BOOST_TEST_REQUIRE(p != nullptr);
  std::array<char, 4096> buf{};
  std::size_t n = 0;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

// A fresh directory on the disk (/var/tmp: ext4 here), removed afterwards.
class ScratchDir {
 public:
  ScratchDir() {
    std::string tmpl = (fs::path(fs::is_directory("/var/tmp") ? "/var/tmp" : fs::temp_directory_path()) /
                        "ringckpt-bench-test-XXXXXX").string();
    BOOST_TEST_REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void expect_usage_error(const std::string& args, const std::string& mentions) {
  BOOST_TEST_CONTEXT("ringckpt " << args) {
    Result r = run(args, true);
    BOOST_TEST(r.status == 2);
    BOOST_TEST(r.out.rfind("ringckpt bench: ", 0) == 0, "message starts 'ringckpt bench: ': " << r.out);
    BOOST_TEST(r.out.find(mentions) != std::string::npos, "message names " << mentions << ": " << r.out);
    // One line, and nothing ran.
    BOOST_TEST(std::count(r.out.begin(), r.out.end(), '\n') == 1, r.out);
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(bad_options_are_refused_in_one_line) {
  expect_usage_error("bench --repeat 0", "--repeat");
  expect_usage_error("bench --repeat -3", "--repeat");
  expect_usage_error("bench --size abc", "--size");
  expect_usage_error("bench --model nope", "--model");
  expect_usage_error("bench --train 6 --every 0", "--every");
  expect_usage_error("bench --train 6 --step-ms fast", "--step-ms");
  expect_usage_error("bench --every 2", "--train");
  expect_usage_error("bench --extent-size 1000", "--extent-size");
  expect_usage_error("bench --queue-depth 0", "--queue-depth");
  expect_usage_error("bench --no-such-option", "no-such-option");
  expect_usage_error("bench --entries 5", "--plan-ranks");
  expect_usage_error("bench --plan-ranks 0", "--plan-ranks");
  expect_usage_error("bench --train 5 --ranks 2", "pick one");
  expect_usage_error("bench --device-only", "--ranks");
  expect_usage_error("bench --plan-ranks 4 --ranks 2", "pick one");
}

BOOST_AUTO_TEST_CASE(plan_ranks_json_holds_the_planning_figures) {
  Result r = run("bench --plan-ranks 16 --entries 40 --repeat 2 --json");
  BOOST_TEST_REQUIRE(r.status == 0);
  json::value doc;
  BOOST_REQUIRE_NO_THROW(doc = json::parse(r.out));
  const json::object& root = doc.as_object();
  BOOST_TEST(root.at("ranks").to_number<int>() == 16);
  BOOST_TEST(root.at("entries").to_number<int>() == 40);
  for (const char* key : {"global_plan_cold_ms", "global_plan_cached_ms",
                          "plan_payload_bytes_per_rank", "plan_payload_bytes_per_rank_cached",
                          "reshard_plan_ms"}) {
    BOOST_TEST_CONTEXT(key) {
      BOOST_TEST_REQUIRE(root.contains(key));
      BOOST_TEST(root.at(key).to_number<double>() > 0.0);
    }
  }
  // A cached save sends a token, far smaller than the plan.
  const double cold = root.at("plan_payload_bytes_per_rank").to_number<double>();
  const double cached = root.at("plan_payload_bytes_per_rank_cached").to_number<double>();
  BOOST_TEST(cached <= 256.0);
  BOOST_TEST(cached < cold);
  BOOST_TEST(root.at("global_plan_cold_samples_ms").as_array().size() == 2u);
}

BOOST_AUTO_TEST_CASE(help_exits_zero) {
  Result r = run("bench --help");
  BOOST_TEST(r.status == 0);
  BOOST_TEST(r.out.find("--repeat") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(json_holds_every_phase) {
  ScratchDir d;
  Result r = run("bench --json --size 16MiB --repeat 1 --dir " + quote(d.path().string()));
  BOOST_TEST_REQUIRE(r.status == 0);
  json::value doc;
  BOOST_REQUIRE_NO_THROW(doc = json::parse(r.out));
  const json::object& root = doc.as_object();
  BOOST_TEST(root.at("ok").as_bool());
  const json::object& machine = root.at("machine").as_object();
  for (const char* key : {"filesystem", "direct_io", "registered_buffers", "extent_size",
                          "queue_depth", "model_bytes", "tensors", "cpus"}) {
    BOOST_TEST(machine.contains(key), key);
  }
  BOOST_TEST(machine.at("extent_size").to_number<double>() == 8.0 * 1024 * 1024);
  const json::object& phases = root.at("phases").as_object();
  for (const char* name : {"device", "naive", "memcpy", "ringckpt-sync", "snapshot-blocked",
                           "snapshot-staging", "snapshot-committed", "lazy-blocked", "lazy-staged",
                           "lazy-committed", "bounded-blocked", "bounded-committed",
                           "bounded-rss-rise", "device-read", "load"}) {
    BOOST_TEST_CONTEXT("phase " << name) {
      BOOST_TEST_REQUIRE(phases.contains(name));
      const json::object& p = phases.at(name).as_object();
      BOOST_TEST(p.at("median").is_number());
      BOOST_TEST(p.at("median").to_number<double>() >= 0.0);
      BOOST_TEST(p.at("min").is_number());
      BOOST_TEST(p.at("max").is_number());
      BOOST_TEST(p.at("samples").as_array().size() == 1u);
      BOOST_TEST(p.contains("ratio"));
      BOOST_TEST(p.contains("baseline"));
    }
  }
  BOOST_TEST(phases.at("ringckpt-sync").at("baseline").as_string() == "device");
  BOOST_TEST(phases.at("ringckpt-sync").at("ratio").is_number());
  BOOST_TEST(phases.at("load").at("baseline").as_string() == "device-read");
  BOOST_TEST(root.at("targets").as_array().size() == 5u);
  BOOST_TEST(root.at("verify").as_array().size() == 4u);
  // Without --keep the bench leaves nothing behind in a --dir it was given.
  BOOST_TEST(fs::is_empty(d.path()));
}

BOOST_AUTO_TEST_CASE(every_model_runs_and_its_checkpoints_verify) {
  for (const char* model : {"transformer", "uniform", "small"}) {
    BOOST_TEST_CONTEXT("--model " << model) {
      ScratchDir d;
      Result r = run(std::string("bench --model ") + model +
                     " --size 16MiB --repeat 1 --keep --dir " + quote(d.path().string()));
      BOOST_TEST(r.status == 0, r.out);
      BOOST_TEST(r.out.find("phase") != std::string::npos, r.out);
      BOOST_TEST(r.out.find("verify bench-sync: ok") != std::string::npos, r.out);
      BOOST_TEST(r.out.find("load round trip: ok") != std::string::npos, r.out);
      for (const char* kind : {"bench-sync", "bench-snapshot", "bench-lazy", "bench-bounded"}) {
        const fs::path ckpt = d.path() / kind;
        BOOST_TEST_REQUIRE(fs::exists(ckpt / "metadata.json"), ckpt);
        Result v = run("verify " + quote(ckpt.string()), true);
        BOOST_TEST(v.status == 0, ckpt << ": " << v.out);
      }
      // Nothing else is left: the raw and naive files go after each run.
      BOOST_TEST(!fs::exists(d.path() / "bench-device.bin"));
      BOOST_TEST(!fs::exists(d.path() / "bench-naive.bin"));
    }
  }
}

BOOST_AUTO_TEST_CASE(refuses_to_overwrite_what_is_there) {
  ScratchDir d;
  fs::create_directories(d.path() / "bench-sync");
  Result r = run("bench --size 16MiB --repeat 1 --dir " + quote(d.path().string()), true);
  BOOST_TEST(r.status == 2);
  BOOST_TEST(r.out.find("already exists") != std::string::npos, r.out);
  BOOST_TEST(fs::is_empty(d.path() / "bench-sync"));
}

BOOST_AUTO_TEST_CASE(training_loop_checkpoints_hold_their_steps) {
  ScratchDir d;
  Result r = run("bench --train 6 --step-ms 5 --every 2 --size 16MiB --dir " +
                 quote(d.path().string()));
  BOOST_TEST(r.status == 0, r.out);
  BOOST_TEST(r.out.find("PASS  every checkpoint loads") != std::string::npos, r.out);
  BOOST_TEST(r.out.find("stall per save p99") != std::string::npos, r.out);

  Result j = run("bench --train 4 --step-ms 1 --every 1 --size 16MiB --json --dir " +
                 quote(d.path().string()));
  BOOST_TEST_REQUIRE(j.status == 0, j.out);
  json::value doc;
  BOOST_REQUIRE_NO_THROW(doc = json::parse(j.out));
  const json::object& t = doc.at("train").as_object();
  BOOST_TEST(t.at("values_ok").as_bool());
  BOOST_TEST(t.at("saves").to_number<int>() == 4);
  BOOST_TEST(t.at("stall_ms").as_array().size() == 4u);
  BOOST_TEST(t.at("stall_p99_ms").is_number());
  BOOST_TEST(t.at("slowdown").is_number());
}
