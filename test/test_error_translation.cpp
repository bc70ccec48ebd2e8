#define BOOST_TEST_MODULE error_translation
#include <boost/test/unit_test.hpp>

// Every failure reaches the caller as a ringckpt::Error naming the file,
// directory or rank: std::bad_alloc, a std::filesystem error, a
// std::system_error (thread creation), a Boost.System error, or whatever a
// planner throws; through ringckpt::save / load / read_metadata, the
// Checkpointer's calls, futures and callbacks, and across ranks.

#include <boost/asio/use_future.hpp>
#include <boost/system/system_error.hpp>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <functional>
#include <future>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "format/error_translation.hpp"
#include "ringckpt/ringckpt.hpp"
#include "test_util.hpp"

using namespace ringckpt;
using namespace ringckpt::test;
namespace fs = std::filesystem;
namespace utf = boost::unit_test;
using namespace std::chrono_literals;

namespace {

// The exceptions a library call can meet that are not Errors.
struct Foreign {
  std::string name;
  std::function<void()> raise;
  ErrorCode code;         // what it becomes
  std::string needle;     // in the message
};

std::vector<Foreign> foreign_exceptions() {
  return {
      {"bad_alloc", [] { throw std::bad_alloc(); }, ErrorCode::kIo, "out of memory"},
      {"length_error", [] { std::vector<int>().reserve(std::size_t(-1)); }, ErrorCode::kIo,
       "out of memory"},
      {"filesystem_error",
       [] {
         throw fs::filesystem_error("cannot list", "/nonexistent/x",
                                    std::make_error_code(std::errc::no_such_file_or_directory));
       },
       ErrorCode::kNotFound, "cannot list"},
      {"system_error (thread)",
       [] { throw std::system_error(EAGAIN, std::generic_category(), "thread creation"); },
       ErrorCode::kIo, "thread creation"},
      {"boost system_error",
       [] {
         throw boost::system::system_error(
             boost::system::errc::make_error_code(boost::system::errc::io_error), "json");
       },
       ErrorCode::kIo, "json"},
      {"runtime_error", [] { throw std::runtime_error("planner gave up"); },
       ErrorCode::kInvalidArgument, "planner gave up"},
      {"not an exception", [] { throw 42; }, ErrorCode::kInvalidArgument, "unknown exception"},
  };
}

// A default planner that raises `raise` when asked for its local plan (or,
// with in_staging, when asked for an item's bytes, on a staging thread).
class RaisingPlanner : public DefaultSavePlanner {
 public:
  RaisingPlanner(std::function<void()> raise, bool in_staging)
      : raise_(std::move(raise)), in_staging_(in_staging) {}
  SavePlan create_local_plan() override {
    if (!in_staging_ && raise_) raise_();
    return DefaultSavePlanner::create_local_plan();
  }
  ItemData resolve_data(const WriteItem& item) override {
    if (in_staging_ && raise_) raise_();
    return DefaultSavePlanner::resolve_data(item);
  }

 private:
  std::function<void()> raise_;
  bool in_staging_;
};

// A default load planner that raises when it sets up.
class RaisingLoadPlanner : public DefaultLoadPlanner {
 public:
  explicit RaisingLoadPlanner(std::function<void()> raise) : raise_(std::move(raise)) {}
  void set_up_planner(StateDict& sd, const Metadata& md, bool is_coordinator) override {
    raise_();
    DefaultLoadPlanner::set_up_planner(sd, md, is_coordinator);
  }

 private:
  std::function<void()> raise_;
};

// Checks `e` against what foreign exception `f` must become, naming `where`.
void expect(const std::optional<Error>& e, const Foreign& f, const std::string& where) {
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST_MESSAGE(f.name << " -> [" << to_string(e->code()) << "] " << e->what());
  BOOST_TEST((e->code() == f.code));
  BOOST_TEST(contains(e->what(), where), e->what() << " does not name " << where);
  BOOST_TEST(contains(e->message(), f.needle), e->what() << " does not say " << f.needle);
}

}  // namespace

// The one translation, case by case.
BOOST_AUTO_TEST_CASE(each_foreign_exception_becomes_an_error) {
  for (const Foreign& f : foreign_exceptions()) {
    BOOST_TEST_CONTEXT(f.name) {
      std::exception_ptr p;
      try {
        f.raise();
      } catch (...) {
        p = std::current_exception();
      }
      BOOST_TEST_REQUIRE(static_cast<bool>(p));
      const Error e = detail::as_error(p, "ckpt/x");
      // A filesystem error names its own path, everything else `where`.
      expect(e, f, f.name == "filesystem_error" ? "/nonexistent/x" : "ckpt/x");
      BOOST_CHECK_THROW(detail::translating_errors("w", f.raise), Error);
      BOOST_TEST(!detail::as_error_ptr(nullptr, "w"));
    }
  }
  // An Error passes unchanged.
  const Error original(ErrorCode::kMismatch, "model.w", "shape differs");
  const Error same = detail::as_error(std::make_exception_ptr(original), "elsewhere");
  BOOST_TEST((same.code() == ErrorCode::kMismatch));
  BOOST_TEST(same.where() == "model.w");
  BOOST_TEST(same.message() == "shape differs");
}

// What a planner throws while ringckpt::save (one rank) or ringckpt::load
// runs reaches the caller as an Error naming the checkpoint directory.
BOOST_AUTO_TEST_CASE(save_and_load_deliver_errors_naming_the_directory) {
  TempDir tmp;
  OwnedTensor w(DType::F32, {64}, 5);
  StateDict sd;
  sd.add("model.w", w.view);
  const fs::path good = tmp.path() / "good";
  save(sd, good, save_options());
  int n = 0;
  for (const Foreign& f : foreign_exceptions()) {
    BOOST_TEST_CONTEXT(f.name) {
      const fs::path dir = tmp.path() / std::to_string(n++);
      const std::string where = f.name == "filesystem_error" ? "/nonexistent/x" : dir.string();
      RaisingPlanner planner(f.raise, false);
      expect(error_of([&] { save(sd, dir, save_options(&planner)); }), f, where);
      BOOST_TEST(!fs::exists(dir / kMetadataFile));

      // Over a writer whose files the entry point does not know: the rank.
      RaisingPlanner again(f.raise, false);
      FileSystemWriter writer(dir, small_io());
      const std::string rank_where = f.name == "filesystem_error" ? "/nonexistent/x" : "rank 0";
      expect(error_of([&] { save(sd, writer, &again, nullptr); }), f, rank_where);

      OwnedTensor back = w.blank_like();
      StateDict dest;
      dest.add("model.w", back.view);
      RaisingLoadPlanner loader(f.raise);
      const std::string load_where = f.name == "filesystem_error" ? "/nonexistent/x" : good.string();
      expect(error_of([&] { load(dest, good, load_options(&loader)); }), f, load_where);
    }
  }
}

// The same through the Checkpointer: a planner failing on the control
// thread, and one failing on a staging thread, reach the committed future,
// a callback and the staged future as Errors naming the directory.
BOOST_AUTO_TEST_CASE(checkpointer_completions_deliver_errors, *utf::timeout(120)) {
  TempDir tmp;
  OwnedTensor w(DType::F32, {64}, 5);
  StateDict sd;
  sd.add("model.w", w.view);
  Checkpointer ckpt(options());
  const Foreign oom = foreign_exceptions()[0];
  int n = 0;
  for (bool in_staging : {false, true}) {
    BOOST_TEST_CONTEXT((in_staging ? "staging thread" : "planning")) {
      RaisingPlanner planner(oom.raise, in_staging);
      AsyncSaveOptions o;
      o.planner = &planner;
      const fs::path dir = tmp.path() / ("c" + std::to_string(n++));
      SaveHandle h = ckpt.async_save(sd, dir, o);
      BOOST_TEST_REQUIRE(ready(h.committed, 60s));
      expect(error_of([&] { h.committed.get(); }), oom, dir.string());
      if (in_staging) {
        BOOST_TEST_REQUIRE(ready(h.staged, 60s));
        expect(error_of([&] { h.staged.get(); }), oom, dir.string());
      }
      BOOST_TEST(!fs::exists(dir / kMetadataFile));

      // A completion token: the future it makes holds the Error too.
      RaisingPlanner again(oom.raise, in_staging);
      o.planner = &again;
      const fs::path dir2 = tmp.path() / ("c" + std::to_string(n++));
      std::future<void> f = ckpt.async_save(sd, dir2, o, boost::asio::use_future);
      BOOST_TEST_REQUIRE((f.wait_for(60s) == std::future_status::ready));
      expect(error_of([&] { f.get(); }), oom, dir2.string());

      // A snapshot save plans in the call: it throws the Error itself.
      if (!in_staging) {
        RaisingPlanner third(oom.raise, false);
        o.planner = &third;
        o.mode = StagingMode::snapshot;
        const fs::path dir3 = tmp.path() / ("c" + std::to_string(n++));
        expect(error_of([&] { ckpt.async_save(sd, dir3, o); }), oom, dir3.string());
      }
    }
  }
  // Loads: the blocking call and async_load's future.
  const fs::path good = tmp.path() / "good";
  ckpt.save(sd, good);
  OwnedTensor back = w.blank_like();
  StateDict dest;
  dest.add("model.w", back.view);
  RaisingLoadPlanner loader(oom.raise);
  expect(error_of([&] { ckpt.load(dest, good, &loader); }), oom, good.string());
  std::future<void> f = ckpt.async_load(dest, good, &loader, boost::asio::use_future);
  BOOST_TEST_REQUIRE((f.wait_for(60s) == std::future_status::ready));
  expect(error_of([&] { f.get(); }), oom, good.string());
  // The Checkpointer saves fine afterwards.
  ckpt.save(sd, tmp.path() / "after");
  BOOST_TEST(verify(tmp.path() / "after", small_io()).ok());
}

// Rank 1 runs out of memory planning: every rank throws an Error that names
// rank 1 and says so.
BOOST_AUTO_TEST_CASE(out_of_memory_on_one_rank_reaches_every_rank, *utf::timeout(120)) {
  TempDir tmp;
  std::vector<float> data(4, 1.0f);
  ThreadGroup group(3);
  std::vector<std::optional<Error>> errors(3);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 3; ++r) {
    ranks.emplace_back([&, r] {
      StateDict sd;
      sd.add("model.w", TensorView{data.data(), DType::F32, {4}});
      RaisingPlanner planner(r == 1 ? std::function<void()>([] { throw std::bad_alloc(); })
                                    : std::function<void()>(),
                             false);
      SaveOptions o = save_options(&planner);
      o.coordinator = &group.member(r);
      try {
        save(sd, tmp.path() / "ranks", o);
      } catch (const Error& e) {
        errors[r] = e;
      } catch (...) {
      }
    });
  }
  for (auto& t : ranks) t.join();
  for (int r = 0; r < 3; ++r) {
    BOOST_TEST_CONTEXT("rank " << r) {
      BOOST_TEST_REQUIRE(errors[r].has_value());
      BOOST_TEST(contains(errors[r]->what(), "out of memory"), errors[r]->what());
      BOOST_TEST(contains(errors[r]->what(), "rank 1"), errors[r]->what());
    }
  }
  BOOST_TEST(!fs::exists(tmp.path() / "ranks" / kMetadataFile));
}

// The file system refuses the checkpoint path: its parent is a regular file
// (ENOTDIR), or a name is longer than NAME_MAX (ENAMETOOLONG). save, load,
// read_metadata, verify and the Checkpointer each report an Error naming the
// path. (Tests run as root: permissions would not refuse anything.)
BOOST_AUTO_TEST_CASE(refused_paths_are_errors_naming_them, *utf::timeout(120)) {
  TempDir tmp;
  spit(tmp.path() / "plain", "not a directory");
  const std::vector<fs::path> paths = {tmp.path() / "plain" / "ckpt",
                                       tmp.path() / std::string(300, 'n') / "ckpt"};
  OwnedTensor w(DType::F32, {64}, 5);
  StateDict sd;
  sd.add("model.w", w.view);
  Checkpointer ckpt(options());
  for (const fs::path& dir : paths) {
    BOOST_TEST_CONTEXT(dir.string().substr(0, 60)) {
      const auto named = [&](const std::optional<Error>& e) {
        BOOST_TEST_REQUIRE(e.has_value());
        BOOST_TEST_MESSAGE(e->what());
        BOOST_TEST(contains(e->what(), dir.parent_path().string()), e->what());
      };
      named(error_of([&] { save(sd, dir, save_options()); }));
      OwnedTensor back = w.blank_like();
      StateDict dest;
      dest.add("model.w", back.view);
      named(error_of([&] { load(dest, dir, load_options()); }));
      named(error_of([&] { read_metadata(dir); }));
      SaveHandle h = ckpt.async_save(sd, dir);
      BOOST_TEST_REQUIRE(ready(h.committed, 60s));
      named(error_in([&] {
        try {
          h.committed.get();
        } catch (...) {
          return std::current_exception();
        }
        return std::exception_ptr();
      }()));
      const VerifyReport r = verify(dir, small_io());
      BOOST_TEST(!r.ok());
      BOOST_TEST(any_fault(r, [&](const VerifyFault& f) {
        return contains(f.file, dir.parent_path().string());
      }));
    }
  }
}

// A ring that cannot be allocated or a thread that cannot start is an
// Error from the constructor, not std::bad_alloc or std::system_error.
BOOST_AUTO_TEST_CASE(an_impossible_ring_is_an_error) {
  CheckpointerOptions o = options();
  o.io.ring_bytes = std::size_t{1} << 60;  // an exabyte
  const std::optional<Error> e = error_of([&] { Checkpointer ckpt(o); });
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST_MESSAGE(e->what());
  BOOST_TEST(!e->where().empty());
}
