// test/test_checkpointer_reentry.cpp — handlers that call back into the
// Checkpointer (async_save, cancel, save, load) from staged and committed
// completions, with one staging thread and with several; and failures of
// the pipeline's own steps, which must reach both completions. Every wait is
// bounded: a deadlock fails the test instead of hanging the suite.
#define BOOST_TEST_MODULE checkpointer_reentry
#include <boost/test/unit_test.hpp>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <atomic>
#include <optional>
#include <thread>

#include "io/io_fault_injection.hpp"
#include "ringckpt/ringckpt.hpp"
#include "test_util.hpp"

using namespace ringckpt;
using namespace ringckpt::test;
using namespace std::chrono_literals;
namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace {

// What a handler did when it called back in. Filled on a ringckpt or
// io_context thread, checked on the test thread.
struct Reentry {
  std::string failure;   // empty: every call returned as it should
  SaveHandle nested;     // an async_save begun in the handler
  SaveHandle cancelled;  // one begun and cancelled in the handler
};

// save(), load(), async_save and cancel from inside a handler; never throws.
Reentry reenter(Checkpointer& ckpt, Model& m, const fs::path& base, const fs::path& root,
                const std::string& tag) {
  Reentry r;
  try {
    ckpt.save(m.sd(), root / (tag + "-sync"));
    auto into = m.blank();
    ckpt.load(into->sd(), base);
    if (into->contents() != m.contents()) r.failure = tag + ": load in a handler read other bytes";
    r.nested = ckpt.async_save(m.sd(), root / (tag + "-async"));
    r.cancelled = ckpt.async_save(m.sd(), root / (tag + "-cancelled"));
    r.cancelled.cancel();
    // Blocking on the use_future of another operation: a save, then a wait
    // on a save that has already committed.
    std::future<void> tokened = ckpt.async_save(m.sd(), root / (tag + "-token"), {}, asio::use_future);
    if (tokened.wait_for(60s) != std::future_status::ready) {
      r.failure = tag + ": a use_future save in a handler never completed";
      return r;
    }
    tokened.get();
    SaveHandle done = ckpt.async_save(m.sd(), root / (tag + "-done"));
    if (done.committed.wait_for(60s) != std::future_status::ready) {
      r.failure = tag + ": a save in a handler never committed";
      return r;
    }
    std::future<void> again = done.async_wait_committed(asio::use_future);
    if (again.wait_for(60s) != std::future_status::ready) {
      r.failure = tag + ": use_future on a committed save never completed";
      return r;
    }
    again.get();
  } catch (const std::exception& e) {
    r.failure = tag + ": " + e.what();
  }
  return r;
}

// The saves a handler began end: the nested one commits, the cancelled one
// ends kCancelled (or had committed first).
void check(const Reentry& r, const fs::path& root, const std::string& tag) {
  BOOST_TEST(r.failure.empty(), r.failure);
  BOOST_TEST_REQUIRE(ready_within(r.nested.committed, 60s), tag << ": nested save hung");
  BOOST_CHECK_NO_THROW(r.nested.committed.get());
  BOOST_TEST(verify(root / (tag + "-sync"), small_io()).ok());
  BOOST_TEST(verify(root / (tag + "-async"), small_io()).ok());
  BOOST_TEST(verify(root / (tag + "-token"), small_io()).ok());
  BOOST_TEST(verify(root / (tag + "-done"), small_io()).ok());
  BOOST_TEST_REQUIRE(ready_within(r.cancelled.committed, 60s), tag << ": cancelled save hung");
  try {
    r.cancelled.committed.get();
  } catch (const Error& e) {
    BOOST_TEST((e.code() == ErrorCode::kCancelled), e.what());
  }
}

enum class Kind { plain, use_future, bound };
const char* kind_name(Kind k) {
  switch (k) {
    case Kind::plain: return "plain";
    case Kind::use_future: return "use_future";
    case Kind::bound: return "bind_executor";
  }
  return "?";
}

// A save whose staged (or committed) handler of `kind` calls back in.
void reenter_from_handler(unsigned staging_threads, bool staged, Kind kind) {
  TempDir root;
  CheckpointerOptions o = options(StagingMode::lazy, 1 * MiB);
  o.io.staging_threads = staging_threads;
  Checkpointer ckpt(o);
  auto m = model_of(2 * MiB, 300 + staging_threads);  // larger than the ring
  ckpt.save(m->sd(), root / "base");
  const std::string tag = std::string(staged ? "staged-" : "committed-") + kind_name(kind);
  SaveHandle h = ckpt.async_save(m->sd(), root / "outer");
  auto call = [&] { return reenter(ckpt, *m, root / "base", root.path(), tag); };
  auto wait = [&](auto&& token) {
    return staged ? h.async_wait_staged(std::move(token)) : h.async_wait_committed(std::move(token));
  };
  std::optional<Reentry> got;
  switch (kind) {
    case Kind::plain: {
      std::promise<Reentry> p;
      auto f = p.get_future();
      wait([&](std::exception_ptr) { p.set_value(call()); });
      if (!ready_within(f, 60s)) BOOST_FAIL(tag << ": the handler never returned: deadlock");
      got = f.get();
      break;
    }
    case Kind::use_future: {
      std::future<Reentry> f = wait(asio::use_future([&](std::exception_ptr) { return call(); }));
      if (!ready_within(f, 60s)) BOOST_FAIL(tag << ": the handler never returned: deadlock");
      got = f.get();
      break;
    }
    case Kind::bound: {
      asio::io_context io;
      wait(asio::bind_executor(io, [&](std::exception_ptr) { got = call(); }));
      io.run_for(60s);
      if (!got) BOOST_FAIL(tag << ": the handler never ran or never returned");
      break;
    }
  }
  BOOST_TEST_REQUIRE(ready_within(h.committed, 60s), tag << ": the outer save hung");
  BOOST_CHECK_NO_THROW(h.committed.get());
  check(*got, root.path(), tag);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(from_handlers)

BOOST_AUTO_TEST_CASE(one_staging_thread, *boost::unit_test::timeout(300)) {
  for (bool staged : {true, false}) {
    for (Kind kind : {Kind::plain, Kind::use_future, Kind::bound}) {
      BOOST_TEST_CONTEXT((staged ? "staged " : "committed ") << kind_name(kind)) {
        reenter_from_handler(1, staged, kind);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(default_staging_threads, *boost::unit_test::timeout(300)) {
  const unsigned threads = IoOptions{}.staging_threads;
  for (bool staged : {true, false}) {
    for (Kind kind : {Kind::plain, Kind::use_future, Kind::bound}) {
      BOOST_TEST_CONTEXT((staged ? "staged " : "committed ") << kind_name(kind)) {
        reenter_from_handler(threads, staged, kind);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(a_staged_handler_cancels_its_own_save, *boost::unit_test::timeout(120)) {
  TempDir root;
  Checkpointer ckpt(options(StagingMode::bounded, 1 * MiB));
  auto m = model_of(8 * MiB, 310);
  SaveHandle h = ckpt.async_save(m->sd(), root / "c");
  std::promise<void> ran;
  h.async_wait_staged([&](std::exception_ptr) {
    h.cancel();
    ran.set_value();
  });
  auto f = ran.get_future();
  if (!ready_within(f, 60s)) BOOST_FAIL("the staged handler never returned");
  BOOST_TEST_REQUIRE(ready_within(h.committed, 60s), "the cancelled save hung");
  try {
    h.committed.get();
    BOOST_TEST(verify(root / "c", small_io()).ok());  // it had committed already: whole
  } catch (const Error& e) {
    BOOST_TEST((e.code() == ErrorCode::kCancelled), e.what());
    BOOST_TEST(checkpoint_files(root / "c").empty());
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ------------------------------------------------------------------------
// A failure in any step ends the save through one path: both completions.

namespace {

// Throws from the step named `where` ("plan" or "resolve"); with "vanish",
// removes the checkpoint directory while staging, so that the commit fails.
class FailingPlanner : public DefaultSavePlanner {
 public:
  FailingPlanner(std::string where, fs::path dir) : where_(std::move(where)), dir_(std::move(dir)) {}
  SavePlan create_local_plan() override {
    if (where_ == "plan") throw Error(ErrorCode::kInvalidArgument, "planner", "planning fails");
    return DefaultSavePlanner::create_local_plan();
  }
  ItemData resolve_data(const WriteItem& item) override {
    if (where_ == "resolve") throw Error(ErrorCode::kInvalidArgument, item.index.fqn, "resolve fails");
    if (where_ == "vanish" && !vanished_.exchange(true)) fs::remove_all(dir_);
    return DefaultSavePlanner::resolve_data(item);
  }

 private:
  std::string where_;
  fs::path dir_;
  std::atomic<bool> vanished_{false};
};

// Both completions, and a handler on each, end within the limit; returns the
// committed error.
std::optional<Error> failure_of(SaveHandle& h, bool staged_fails) {
  std::promise<std::exception_ptr> staged_handler, committed_handler;
  h.async_wait_staged([&](std::exception_ptr e) { staged_handler.set_value(e); });
  h.async_wait_committed([&](std::exception_ptr e) { committed_handler.set_value(e); });
  auto s = staged_handler.get_future();
  auto c = committed_handler.get_future();
  if (!ready_within(s, 60s) || !ready_within(c, 60s)) {
    BOOST_ERROR("a completion handler never ran: hung");
    return std::nullopt;
  }
  BOOST_TEST_REQUIRE(ready(h.staged));
  BOOST_TEST_REQUIRE(ready(h.committed));
  const std::exception_ptr staged_error = s.get();
  if (staged_fails) {
    BOOST_TEST(error_in(staged_error).has_value(), "staged did not report the failure");
    BOOST_TEST(error_of([&] { h.staged.get(); }).has_value());
  } else {
    BOOST_TEST(!staged_error);
  }
  auto e = error_in(c.get());
  BOOST_TEST(e.has_value(), "the committed handler got no ringckpt::Error");
  BOOST_TEST(error_of([&] { h.committed.get(); }).has_value());
  return e;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(failures)

BOOST_AUTO_TEST_CASE(resolve_data_throws, *boost::unit_test::timeout(120)) {
  TempDir root;
  // Several staging threads may resolve the same item at once: one that
  // throws must leave the others a failed job, not a hung one.
  CheckpointerOptions co = options(StagingMode::lazy, 4 * MiB);  // snapshot needs it to fit
  co.io.staging_threads = 4;
  Checkpointer ckpt(co);
  auto m = model_of(1 * MiB, 320);
  for (StagingMode mode : {StagingMode::snapshot, StagingMode::bounded, StagingMode::lazy}) {
    BOOST_TEST_CONTEXT("mode " << mode_name(mode)) {
      const fs::path dir = root / mode_name(mode);
      FailingPlanner planner("resolve", dir);
      AsyncSaveOptions o = with_mode(mode);
      o.planner = &planner;
      SaveHandle h = ckpt.async_save(m->sd(), dir, o);
      auto e = failure_of(h, true);
      BOOST_TEST_REQUIRE(e.has_value());
      BOOST_TEST((e->code() == ErrorCode::kInvalidArgument), e->what());
      BOOST_TEST(std::string(e->what()).find("resolve fails") != std::string::npos, e->what());
      BOOST_TEST(checkpoint_files(dir).empty());
    }
  }
  ckpt.async_save(m->sd(), root / "fine").committed.get();  // unharmed
  BOOST_TEST(verify(root / "fine", small_io()).ok());
}

BOOST_AUTO_TEST_CASE(planning_throws, *boost::unit_test::timeout(120)) {
  TempDir root;
  Checkpointer ckpt(options());
  auto m = model_of(256 * KiB, 321);
  // lazy and bounded plan on the control thread: the error reaches both
  // completions.
  for (StagingMode mode : {StagingMode::bounded, StagingMode::lazy}) {
    BOOST_TEST_CONTEXT("mode " << mode_name(mode)) {
      FailingPlanner planner("plan", {});
      AsyncSaveOptions o = with_mode(mode);
      o.planner = &planner;
      SaveHandle h = ckpt.async_save(m->sd(), root / mode_name(mode), o);
      auto e = failure_of(h, true);
      BOOST_TEST_REQUIRE(e.has_value());
      BOOST_TEST(std::string(e->what()).find("planning fails") != std::string::npos, e->what());
    }
  }
  // snapshot plans on the calling thread: async_save throws it, a token gets it.
  FailingPlanner planner("plan", {});
  AsyncSaveOptions o = with_mode(StagingMode::snapshot);
  o.planner = &planner;
  auto e = error_of([&] { ckpt.async_save(m->sd(), root / "snapshot", o); });
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST((e->code() == ErrorCode::kInvalidArgument));
  std::future<void> f = ckpt.async_save(m->sd(), root / "snapshot", o, asio::use_future);
  if (!ready_within(f, 60s)) BOOST_FAIL("the planning error never reached the token");
  BOOST_TEST(error_of([&] { f.get(); }).has_value());
}

BOOST_AUTO_TEST_CASE(commit_fails_because_the_directory_vanished,
                     *boost::unit_test::timeout(120)) {
  TempDir root;
  Checkpointer ckpt(options());
  auto m = model_of(1 * MiB, 322);
  const fs::path dir = root / "vanishing";
  FailingPlanner planner("vanish", dir);
  AsyncSaveOptions o;
  o.planner = &planner;
  SaveHandle h = ckpt.async_save(m->sd(), dir, o);
  auto e = failure_of(h, false);  // staging itself succeeded
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST((e->code() == ErrorCode::kIo || e->code() == ErrorCode::kNotFound), e->what());
  BOOST_TEST(std::string(e->what()).find("vanishing") != std::string::npos, e->what());
  BOOST_TEST(!fs::exists(dir / "metadata.json"));
  ckpt.async_save(m->sd(), root / "fine").committed.get();  // unharmed
  BOOST_TEST(verify(root / "fine", small_io()).ok());
}

// A fault injected into an io_uring completion (a write's, then a read's)
// ends the save through its failure path: both completions report it, the
// data files go, and the Checkpointer saves and loads as before.
BOOST_AUTO_TEST_CASE(a_fault_in_an_io_completion, *boost::unit_test::timeout(120)) {
  TempDir root;
  Checkpointer ckpt(options(StagingMode::lazy, 1 * MiB));
  auto m = model_of(2 * MiB, 323);  // many extents: the third completion is mid-save
  struct Disarm {
    ~Disarm() { detail::inject_io_completion_fault(0); }
  } disarm;
  detail::inject_io_completion_fault(3);
  SaveHandle h = ckpt.async_save(m->sd(), root / "faulty");
  auto e = failure_of(h, true);  // the ring holds half the save: staging cannot have ended
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST(std::string(e->what()).find("io fault injection") != std::string::npos, e->what());
  BOOST_TEST(checkpoint_files(root / "faulty").empty());

  ckpt.async_save(m->sd(), root / "fine").committed.get();
  BOOST_TEST(verify(root / "fine", small_io()).ok());
  auto into = m->blank();
  detail::inject_io_completion_fault(2);
  auto le = error_of([&] { ckpt.load(into->sd(), root / "fine"); });
  BOOST_TEST_REQUIRE(le.has_value(), "a load with a faulty read completion did not fail");
  BOOST_TEST(std::string(le->what()).find("io fault injection") != std::string::npos, le->what());
  detail::inject_io_completion_fault(0);
  ckpt.load(into->sd(), root / "fine");
  BOOST_TEST((into->contents() == m->contents()));
}

BOOST_AUTO_TEST_SUITE_END()
