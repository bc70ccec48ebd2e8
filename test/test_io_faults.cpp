// test_io_faults.cpp — an exception anywhere in the pipeline (an io_uring
// write, read or fdatasync completion, a staging fill) ends the save or read
// job through its failure path: the callbacks fire with the error, created
// files are removed, read_extents throws, and nothing hangs.
#define BOOST_TEST_MODULE io_faults
#include <boost/test/unit_test.hpp>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "io/io_engine.hpp"
#include "io/io_fault_injection.hpp"
#include "plan/layout.hpp"
#include "ringckpt/checkpoint.hpp"
#include "ringckpt/default_planner.hpp"
#include "ringckpt/error.hpp"
#include "save/save_job.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using namespace ringckpt;
using namespace ringckpt::test;
using namespace std::chrono_literals;

namespace {

constexpr auto kLimit = 20s;

// Disarms the injected fault however the test ends.
struct FaultAfter {
  explicit FaultAfter(std::uint64_t nth) { detail::inject_io_completion_fault(nth); }
  ~FaultAfter() { detail::inject_io_completion_fault(0); }
};

// Waits for `f` under kLimit; a hang aborts the suite (a failure) instead of
// blocking it.
template <class T>
T get_within_limit(std::future<T>& f, const char* what) {
  if (f.wait_for(kLimit) != std::future_status::ready) {
    BOOST_ERROR(what << " did not complete within the time limit");
    std::abort();
  }
  return f.get();
}

// Makes one item's bytes throw while staging copies them.
class ThrowingPlanner : public DefaultSavePlanner {
 public:
  ItemData resolve_data(const WriteItem& item) override {
    if (item.index.fqn != "bad") return DefaultSavePlanner::resolve_data(item);
    return ItemData::produced(item.nbytes(), [](std::uint64_t, std::span<std::byte>) {
      throw Error(ErrorCode::kInvalidArgument, "bad", "the producer failed");
    });
  }
};

struct SaveRun {
  std::exception_ptr staged;
  std::exception_ptr written;
  std::size_t extents = 0;     // in the layout
  std::size_t slots = 0;       // of the ring
  bool slots_all_free = false;  // when `written` had fired
};

// Saves `sd` through one SaveJob, on an engine of its own, into dir and
// returns what both callbacks said. The engine is gone (its threads joined)
// before the errors are looked at: the job's last copy of the error is
// released on a staging thread, through a reference count ThreadSanitizer
// cannot see.
SaveRun save_with_job(const fs::path& dir, const StateDict& sd, DefaultSavePlanner& planner,
                      std::uint64_t fault_nth) {
  planner.set_up_planner(sd, true);
  const SavePlan plan = planner.create_local_plan();
  SaveRun run;
  {
    detail::IoEngine engine(small_io());
    SaveLayout layout = plan_layout(plan, "__0_", 0);
    const std::uint64_t e = engine.options().extent_size;
    for (const auto& f : layout.files) run.extents += (f.size + e - 1) / e;
    run.slots = engine.ring().slot_count();
    std::promise<std::exception_ptr> staged, written;
    auto staged_f = staged.get_future();
    auto written_f = written.get_future();
    FaultAfter fault(fault_nth);
    auto job = detail::SaveJob::start(
        engine, std::make_shared<const CheckpointDirectory>(CheckpointDirectory::open(dir)), plan,
        planner, std::move(layout),
        {.staged = [&](std::exception_ptr e) { staged.set_value(e); },
         .written = [&](std::exception_ptr e, WriteResults) { written.set_value(e); }});
    run.staged = get_within_limit(staged_f, "staged");
    run.written = get_within_limit(written_f, "written");
    run.slots_all_free = engine.ring().free_count() == run.slots;
  }
  return run;
}

void expect_error(std::exception_ptr error, ErrorCode code, const std::string& text) {
  BOOST_REQUIRE(error != nullptr);
  try {
    std::rethrow_exception(error);
  } catch (const Error& e) {
    BOOST_TEST((e.code() == code));
    BOOST_TEST(std::string(e.what()).find(text) != std::string::npos, e.what());
  } catch (...) {
    BOOST_ERROR("not a ringckpt::Error");
  }
}

std::size_t data_files_in(const fs::path& dir) {
  std::size_t n = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() == ".safetensors") ++n;
  }
  return n;
}

StateDict two_tensors(const OwnedTensor& a, const OwnedTensor& b) {
  StateDict sd;
  sd.add("a", a.view);
  sd.add("b", b.view);
  return sd;
}

}  // namespace

BOOST_AUTO_TEST_CASE(a_save_runs_clean_without_an_injected_fault) {
  TempDir dir;
  OwnedTensor a(DType::F32, {640, 512}, 1), b(DType::F32, {100, 7}, 2);
  DefaultSavePlanner planner;
  const SaveRun run = save_with_job(dir.path(), two_tensors(a, b), planner, 0);
  BOOST_TEST(!run.staged);
  BOOST_TEST(!run.written);
  BOOST_TEST(data_files_in(dir.path()) == 1u);
  BOOST_TEST(run.extents > run.slots);  // back-pressure is exercised
}

BOOST_AUTO_TEST_CASE(a_throwing_write_completion_fails_the_save_and_removes_its_files) {
  TempDir dir;
  OwnedTensor a(DType::F32, {640, 512}, 1), b(DType::F32, {100, 7}, 2);
  DefaultSavePlanner probe;
  const std::size_t extents = save_with_job(dir.path(), two_tensors(a, b), probe, 0).extents;
  const std::size_t slots = small_io().ring_bytes / small_io().extent_size;
  BOOST_REQUIRE(extents >= slots + 2);
  fs::remove_all(dir.path());
  fs::create_directories(dir.path());
  // Extent slots + k - 1 waits for the slot that write completion k frees: a
  // fault in completions 1 and 2 stops staging too; in the last, it is done.
  for (std::uint64_t nth : {std::size_t{1}, std::size_t{2}, extents}) {
    BOOST_TEST_CONTEXT("fault in write completion " << nth << " of " << extents) {
      DefaultSavePlanner planner;
      const SaveRun run = save_with_job(dir.path(), two_tensors(a, b), planner, nth);
      if (nth <= extents - slots) {
        expect_error(run.staged, ErrorCode::kIo, "injected fault");
      } else {
        BOOST_TEST(!run.staged);
      }
      expect_error(run.written, ErrorCode::kIo, "injected fault");
      BOOST_TEST(data_files_in(dir.path()) == 0u);
      BOOST_TEST(run.slots_all_free);
    }
  }
}

BOOST_AUTO_TEST_CASE(a_throwing_fdatasync_completion_fails_the_save_and_removes_its_files) {
  TempDir dir;
  OwnedTensor a(DType::F32, {640, 512}, 1), b(DType::F32, {100, 7}, 2);
  DefaultSavePlanner probe;
  const std::size_t extents = save_with_job(dir.path(), two_tensors(a, b), probe, 0).extents;
  fs::remove_all(dir.path());
  fs::create_directories(dir.path());
  DefaultSavePlanner planner;
  // Every write completes first; the next completion is the fdatasync's.
  const SaveRun run = save_with_job(dir.path(), two_tensors(a, b), planner, extents + 1);
  BOOST_TEST(!run.staged);  // every byte was staged before the fault
  expect_error(run.written, ErrorCode::kIo, "injected fault");
  BOOST_TEST(data_files_in(dir.path()) == 0u);
}

BOOST_AUTO_TEST_CASE(a_throwing_staging_fill_fails_the_save_and_removes_its_files) {
  TempDir dir;
  OwnedTensor a(DType::F32, {640, 512}, 1), b(DType::F32, {100, 7}, 2);
  StateDict sd = two_tensors(a, b);
  sd.add("bad", b.view);
  ThrowingPlanner planner;
  const SaveRun run = save_with_job(dir.path(), sd, planner, 0);
  expect_error(run.staged, ErrorCode::kInvalidArgument, "the producer failed");
  expect_error(run.written, ErrorCode::kInvalidArgument, "the producer failed");
  BOOST_TEST(data_files_in(dir.path()) == 0u);
  BOOST_TEST(run.slots_all_free);
}

BOOST_AUTO_TEST_CASE(a_throwing_read_completion_makes_the_load_throw) {
  TempDir dir;
  OwnedTensor a(DType::F32, {640, 512}, 1), b(DType::F32, {100, 7}, 2);
  SaveOptions so;
  so.io = small_io();
  save(two_tensors(a, b), dir.path(), so);
  for (std::uint64_t nth : {1, 4}) {
    BOOST_TEST_CONTEXT("fault in read completion " << nth) {
      OwnedTensor a2 = a.blank_like(), b2 = b.blank_like();
      StateDict into = two_tensors(a2, b2);
      LoadOptions lo;
      lo.io = small_io();
      auto result = std::async(std::launch::async, [&]() -> std::exception_ptr {
        FaultAfter fault(nth);
        try {
          load(into, dir.path(), lo);
        } catch (...) {
          return std::current_exception();
        }
        return nullptr;
      });
      expect_error(get_within_limit(result, "load"), ErrorCode::kIo, "injected fault");
    }
  }
  // And with the fault disarmed the same checkpoint loads.
  OwnedTensor a3 = a.blank_like(), b3 = b.blank_like();
  StateDict into = two_tensors(a3, b3);
  LoadOptions lo;
  lo.io = small_io();
  load(into, dir.path(), lo);
  BOOST_TEST((a3.storage == a.storage));
  BOOST_TEST((b3.storage == b.storage));
}
