// test/test_checkpointer_completions.cpp — completion tokens, and the
// completion contract of checkpointer.hpp.
#define BOOST_TEST_MODULE checkpointer_completions
#include <boost/test/unit_test.hpp>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include <atomic>
#include <mutex>
#include <set>
#include <thread>

#include "ringckpt/ringckpt.hpp"
#include "test_util.hpp"

using namespace ringckpt;
using namespace ringckpt::test;
using namespace std::chrono_literals;
namespace asio = boost::asio;
namespace fs = std::filesystem;

// ------------------------------------------------------------------------
// Completion tokens.

BOOST_AUTO_TEST_SUITE(tokens)

BOOST_AUTO_TEST_CASE(use_future) {
  TempDir root;
  Checkpointer ckpt(options());
  auto m = model_of(512 * KiB, 101);
  SaveHandle h = ckpt.async_save(m->sd(), root / "c");
  std::future<void> staged = h.async_wait_staged(asio::use_future);
  std::future<void> committed = h.async_wait_committed(asio::use_future);
  BOOST_CHECK_NO_THROW(staged.get());
  BOOST_CHECK_NO_THROW(committed.get());
  // After the fact, too.
  BOOST_CHECK_NO_THROW(h.async_wait_committed(asio::use_future).get());

  const fs::path bad = root / "bad";
  const auto blocked = block_data_file(bad);
  SaveHandle f = ckpt.async_save(m->sd(), bad);
  std::future<void> failed = f.async_wait_committed(asio::use_future);
  auto e = error_of([&] { failed.get(); });
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST((e->code() == ErrorCode::kIo));
}

BOOST_AUTO_TEST_CASE(plain_callback_invoked_once) {
  TempDir root;
  auto m = model_of(512 * KiB, 102);
  std::atomic<int> staged_calls{0}, committed_calls{0}, late_calls{0}, failed_calls{0};
  std::exception_ptr staged_error, committed_error, late_error, failed_error;
  {
    Checkpointer ckpt(options());
    SaveHandle h = ckpt.async_save(m->sd(), root / "c");
    std::promise<void> done;
    h.async_wait_staged([&](std::exception_ptr e) {
      staged_error = e;
      ++staged_calls;
    });
    h.async_wait_committed([&](std::exception_ptr e) {
      committed_error = e;
      ++committed_calls;
      done.set_value();
    });
    done.get_future().wait();
    h.async_wait_committed([&](std::exception_ptr e) {  // already complete: at once
      late_error = e;
      ++late_calls;
    });

    const fs::path bad = root / "bad";
    const auto blocked = block_data_file(bad);
    std::promise<void> failed;
    ckpt.async_save(m->sd(), bad).async_wait_committed([&](std::exception_ptr e) {
      failed_error = e;
      ++failed_calls;
      failed.set_value();
    });
    failed.get_future().wait();
  }  // ~Checkpointer: every thread has stopped, no call can still come
  BOOST_TEST(staged_calls.load() == 1);
  BOOST_TEST(committed_calls.load() == 1);
  BOOST_TEST(late_calls.load() == 1);
  BOOST_TEST(failed_calls.load() == 1);
  BOOST_TEST(!staged_error);
  BOOST_TEST(!committed_error);
  BOOST_TEST(!late_error);
  auto e = error_in(failed_error);
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST((e->code() == ErrorCode::kIo));
}

BOOST_AUTO_TEST_CASE(async_save_with_a_callback_token) {
  TempDir root;
  auto m = model_of(512 * KiB, 103);
  std::atomic<int> ok_calls{0}, bad_calls{0};
  std::exception_ptr ok_error, bad_error;
  {
    Checkpointer ckpt(options());
    std::promise<void> p1, p2;
    ckpt.async_save(m->sd(), root / "c", {}, [&](std::exception_ptr e) {
      ok_error = e;
      ++ok_calls;
      p1.set_value();
    });
    const fs::path bad = root / "bad";
    const auto blocked = block_data_file(bad);
    ckpt.async_save(m->sd(), bad, {}, [&](std::exception_ptr e) {
      bad_error = e;
      ++bad_calls;
      p2.set_value();
    });
    p1.get_future().wait();
    p2.get_future().wait();
    BOOST_TEST((load_contents(ckpt, *m, root / "c") == m->contents()));
  }
  BOOST_TEST(ok_calls.load() == 1);
  BOOST_TEST(bad_calls.load() == 1);
  BOOST_TEST(!ok_error);
  auto e = error_in(bad_error);
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST((e->code() == ErrorCode::kIo));
  BOOST_TEST(checkpoint_files(root / "bad").empty());
}

BOOST_AUTO_TEST_CASE(use_awaitable_in_a_coroutine) {
  TempDir root;
  auto m = model_of(512 * KiB, 104);
  Checkpointer ckpt(options());
  const fs::path bad = root / "bad";
  const auto blocked = block_data_file(bad);

  asio::io_context io;
  int resumed = 0, caught = 0, finished = 0;
  std::optional<ErrorCode> caught_code;
  std::exception_ptr escaped;
  std::thread::id main_thread = std::this_thread::get_id(), resumed_on;
  SaveHandle h = ckpt.async_save(m->sd(), root / "c");
  SaveHandle f = ckpt.async_save(m->sd(), bad);
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        co_await h.async_wait_staged(asio::use_awaitable);
        co_await h.async_wait_committed(asio::use_awaitable);
        ++resumed;
        resumed_on = std::this_thread::get_id();
        try {
          co_await f.async_wait_committed(asio::use_awaitable);
        } catch (const Error& e) {
          ++caught;
          caught_code = e.code();
        }
        // And async_save itself, through the token.
        co_await ckpt.async_save(m->sd(), root / "d", {}, asio::use_awaitable);
        ++finished;
      },
      [&](std::exception_ptr e) { escaped = e; });

  // io.run() returns when the io_context runs out of work: an asynchronous
  // operation must count as work on its handler's executor until it
  // completes, so one run() has to see the coroutine through.
  io.run();
  const bool done_in_one_run = finished == 1;
  BOOST_TEST(done_in_one_run,
             "io_context::run() returned while the coroutine still awaited a save: the "
             "pending wait keeps no outstanding work on the handler's executor");
  // Drain anyway, so that the coroutine does not outlive the test.
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (finished == 0 && !escaped && std::chrono::steady_clock::now() < deadline) {
    io.restart();
    io.run_for(10ms);
  }
  BOOST_TEST(resumed == 1);
  BOOST_TEST(caught == 1);
  BOOST_TEST((caught_code == ErrorCode::kIo));
  BOOST_TEST(finished == 1);
  BOOST_TEST((resumed_on == main_thread), "the coroutine resumes on its io_context");
  BOOST_TEST(!escaped);
  BOOST_TEST((load_contents(ckpt, *m, root / "d") == m->contents()));
}

BOOST_AUTO_TEST_CASE(async_load_with_use_future) {
  TempDir root;
  Checkpointer ckpt(options());
  auto m = model_of(1536 * KiB, 105);
  ckpt.save(m->sd(), root / "c");
  auto into = m->blank();
  std::future<void> f = ckpt.async_load(into->sd(), root / "c", nullptr, asio::use_future);
  BOOST_CHECK_NO_THROW(f.get());
  BOOST_TEST((into->contents() == m->contents()));

  // A missing checkpoint fails through the token.
  auto other = m->blank();
  std::future<void> g = ckpt.async_load(other->sd(), root / "missing", nullptr, asio::use_future);
  auto e = error_of([&] { g.get(); });
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST((e->code() == ErrorCode::kNotFound));

  // And with a callback, once.
  std::atomic<int> calls{0};
  std::promise<std::exception_ptr> p;
  auto third = m->blank();
  ckpt.async_load(third->sd(), root / "c", nullptr, [&](std::exception_ptr e) {
    ++calls;
    p.set_value(e);
  });
  BOOST_TEST(!p.get_future().get());
  BOOST_TEST((third->contents() == m->contents()));
  BOOST_TEST(calls.load() == 1);
}

BOOST_AUTO_TEST_SUITE_END()


// ------------------------------------------------------------------------
// The completion contract (checkpointer.hpp): where and when handlers run.

namespace {

// Records the threads planning (the control thread, in lazy mode) and
// resolve_data (the staging threads) run on.
class ThreadRecordingPlanner : public DefaultSavePlanner {
 public:
  SavePlan create_local_plan() override {
    {
      std::lock_guard lock(mu);
      planning = std::this_thread::get_id();
    }
    return DefaultSavePlanner::create_local_plan();
  }
  ItemData resolve_data(const WriteItem& item) override {
    {
      std::lock_guard lock(mu);
      staging.insert(std::this_thread::get_id());
    }
    return DefaultSavePlanner::resolve_data(item);
  }
  std::mutex mu;
  std::thread::id planning;          // guarded by mu
  std::set<std::thread::id> staging;  // guarded by mu
};

}  // namespace

BOOST_AUTO_TEST_SUITE(contract)

BOOST_AUTO_TEST_CASE(handler_of_a_completed_save_is_posted_not_run_inline,
                     *boost::unit_test::timeout(120)) {
  TempDir root;
  Checkpointer ckpt(options());
  auto m = model_of(256 * KiB, 201);
  SaveHandle h = ckpt.async_save(m->sd(), root / "c");
  BOOST_TEST_REQUIRE(ready_within(h.committed, 30s), "the save did not commit: hung");

  // A plain callback: posted to the completion thread (run inside the call,
  // it would run on this one).
  std::promise<std::thread::id> ran_on;
  h.async_wait_committed([&](std::exception_ptr) { ran_on.set_value(std::this_thread::get_id()); });
  auto on = ran_on.get_future();
  if (!ready_within(on, 30s)) BOOST_FAIL("the callback of a committed save never ran");
  BOOST_TEST((on.get() != std::this_thread::get_id()), "the handler ran inside the call");

  // A handler bound to an io_context that this thread runs: it runs only
  // once the io_context does, not inside the initiating call.
  asio::io_context io;
  bool ran = false;
  h.async_wait_staged(asio::bind_executor(io, [&](std::exception_ptr) { ran = true; }));
  BOOST_TEST(!ran, "the bound handler ran inside async_wait_staged");
  io.run_for(30s);
  BOOST_TEST(ran);
}

BOOST_AUTO_TEST_CASE(plain_callbacks_run_on_neither_caller_control_nor_staging_threads,
                     *boost::unit_test::timeout(120)) {
  TempDir root;
  Checkpointer ckpt(options(StagingMode::lazy, 1 * MiB));
  auto m = model_of(2 * MiB, 202);  // larger than the ring: staged fires late
  ThreadRecordingPlanner planner;
  AsyncSaveOptions o;
  o.planner = &planner;
  SaveHandle h = ckpt.async_save(m->sd(), root / "c", o);
  std::promise<std::thread::id> staged_on, committed_on;
  h.async_wait_staged([&](std::exception_ptr) { staged_on.set_value(std::this_thread::get_id()); });
  h.async_wait_committed(
      [&](std::exception_ptr) { committed_on.set_value(std::this_thread::get_id()); });
  auto s = staged_on.get_future();
  auto c = committed_on.get_future();
  if (!ready_within(s, 30s) || !ready_within(c, 30s)) BOOST_FAIL("a callback never ran: hung");
  const std::thread::id staged_thread = s.get(), committed_thread = c.get();
  std::lock_guard lock(planner.mu);
  BOOST_TEST_REQUIRE(!planner.staging.empty());
  for (std::thread::id t : {staged_thread, committed_thread}) {
    BOOST_TEST((t != std::this_thread::get_id()), "a callback ran on the calling thread");
    BOOST_TEST((t != planner.planning), "a callback ran on the control thread");
    BOOST_TEST(!planner.staging.contains(t), "a callback ran on a staging thread");
  }
}

BOOST_AUTO_TEST_CASE(a_deferred_token_defers_the_save, *boost::unit_test::timeout(120)) {
  TempDir root;
  Checkpointer ckpt(options());
  auto m = model_of(256 * KiB, 203);
  const fs::path dir = root / "deferred";
  auto op = ckpt.async_save(m->sd(), dir, {}, asio::deferred);
  std::this_thread::sleep_for(200ms);
  BOOST_TEST(!fs::exists(dir), "the save began before the deferred operation was invoked");
  std::future<void> f = std::move(op)(asio::use_future);
  if (!ready_within(f, 30s)) BOOST_FAIL("the deferred save never completed");
  BOOST_CHECK_NO_THROW(f.get());
  BOOST_TEST(verify(dir, small_io()).ok());
  BOOST_TEST((load_contents(ckpt, *m, dir) == m->contents()));
}

BOOST_AUTO_TEST_CASE(a_pending_handler_keeps_its_io_context_running,
                     *boost::unit_test::timeout(120)) {
  TempDir root;
  Checkpointer ckpt(options(StagingMode::bounded, 1 * MiB));
  auto m = model_of(4 * MiB, 204);
  asio::io_context io;
  std::atomic<int> ran{0};
  SaveHandle h = ckpt.async_save(m->sd(), root / "c");
  h.async_wait_committed(asio::bind_executor(io, [&](std::exception_ptr e) {
    BOOST_TEST(!e);
    ++ran;
  }));
  ckpt.async_save(m->sd(), root / "d", {}, asio::bind_executor(io, [&](std::exception_ptr e) {
    BOOST_TEST(!e);
    ++ran;
  }));
  // run() returns once it runs out of work: only after both handlers ran.
  io.run_for(60s);
  BOOST_TEST(ran.load() == 2, "io_context::run returned while a handler was pending");
}

BOOST_AUTO_TEST_CASE(snapshot_planning_error_reaches_the_token, *boost::unit_test::timeout(120)) {
  TempDir root;
  Checkpointer ckpt(options(StagingMode::snapshot, 1 * MiB));
  auto m = model_of(8 * MiB, 205);  // does not fit the ring
  std::promise<std::exception_ptr> got;
  std::thread::id ran_on;
  BOOST_CHECK_NO_THROW(ckpt.async_save(m->sd(), root / "c", {}, [&](std::exception_ptr e) {
    ran_on = std::this_thread::get_id();
    got.set_value(e);  // publishes ran_on
  }));
  auto f = got.get_future();
  if (!ready_within(f, 30s)) BOOST_FAIL("the planning error never reached the handler");
  auto e = error_in(f.get());
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST((e->code() == ErrorCode::kInvalidArgument));
  BOOST_TEST((ran_on != std::this_thread::get_id()), "the handler ran inside async_save");
  // Bound to an io_context this thread runs: not before it runs it.
  asio::io_context io;
  bool ran = false;
  ckpt.async_save(m->sd(), root / "c", {}, asio::bind_executor(io, [&](std::exception_ptr e) {
    BOOST_TEST(error_in(e).has_value());
    ran = true;
  }));
  BOOST_TEST(!ran, "the bound handler ran inside async_save");
  io.run_for(30s);
  BOOST_TEST(ran);
}

// ~Checkpointer with saves queued and handlers of every kind pending: each
// fires once, with success or kCancelled; none is lost, nothing crashes.
BOOST_AUTO_TEST_CASE(destroyed_with_saves_queued_and_handlers_pending,
                     *boost::unit_test::timeout(180)) {
  TempDir root;
  auto big = model_of(32 * MiB, 206);
  auto small = model_of(256 * KiB, 207);
  auto ckpt = std::make_unique<Checkpointer>(options(StagingMode::bounded, 1 * MiB));
  asio::io_context io;
  std::mutex mu;
  std::vector<std::exception_ptr> outcomes;  // guarded by mu
  auto record = [&](std::exception_ptr e) {
    std::lock_guard lock(mu);
    outcomes.push_back(e);
  };
  std::vector<SaveHandle> handles;
  std::vector<std::future<void>> futures;
  int expected = 0;
  for (int i = 0; i < 4; ++i) {
    auto& m = i == 0 ? big : small;
    SaveHandle h = ckpt->async_save(m->sd(), root / ("s" + std::to_string(i)));
    h.async_wait_staged(record);
    h.async_wait_committed(record);
    h.async_wait_committed(asio::bind_executor(io, record));
    futures.push_back(h.async_wait_committed(asio::use_future));
    ckpt->async_save(m->sd(), root / ("t" + std::to_string(i)), {}, record);
    handles.push_back(h);
    expected += 4;
  }
  // A thread cancels while the Checkpointer goes away: no use after free.
  std::atomic<bool> stop{false};
  std::thread canceller([&] {
    while (!stop) {
      for (auto& h : handles) h.cancel();
      std::this_thread::yield();
    }
  });
  destroy_within(std::move(ckpt), 60s);
  io.run_for(30s);  // the bound handlers were posted to io
  stop = true;
  canceller.join();
  for (auto& h : handles) h.cancel();  // after ~Checkpointer: a no-op
  for (auto& f : futures) {
    BOOST_TEST_REQUIRE(ready_within(f, 1s), "a use_future handler was lost");
    try {
      f.get();
    } catch (const Error& e) {
      BOOST_TEST((e.code() == ErrorCode::kCancelled), e.what());
    }
  }
  std::lock_guard lock(mu);
  BOOST_TEST(outcomes.size() == static_cast<std::size_t>(expected), "handlers lost or repeated");
  for (const auto& o : outcomes) {
    if (!o) continue;
    auto e = error_in(o);
    BOOST_TEST_REQUIRE(e.has_value());
    BOOST_TEST((e->code() == ErrorCode::kCancelled), e->what());
  }
}

BOOST_AUTO_TEST_CASE(saves_and_loads_run_in_the_order_asked, *boost::unit_test::timeout(120)) {
  // A save asked after a load runs after it, on the same control thread (so
  // that on N ranks their collectives never interleave): while the load's
  // planner blocks, the save does not start; once it returns, both complete,
  // the load first.
  TempDir root;
  Checkpointer ckpt(options());
  auto m = model_of(256 * KiB, 208);
  ckpt.save(m->sd(), root / "base");
  struct BlockingPlanner : DefaultLoadPlanner {
    std::shared_future<void> gate;
    LoadPlan create_local_plan() override {
      gate.wait();
      return DefaultLoadPlanner::create_local_plan();
    }
  } planner;
  std::promise<void> open;
  planner.gate = open.get_future().share();
  std::mutex mu;
  std::vector<std::string> order;  // guarded by mu
  auto into = m->blank();
  std::promise<std::exception_ptr> loaded;
  ckpt.async_load(into->sd(), root / "base", &planner, [&](std::exception_ptr e) {
    std::lock_guard lock(mu);
    order.push_back("load");
    loaded.set_value(e);
  });
  SaveHandle h = ckpt.async_save(m->sd(), root / "next");
  h.async_wait_staged([&](std::exception_ptr) {
    std::lock_guard lock(mu);
    order.push_back("save staged");
  });
  BOOST_TEST(!ready(h.staged, 300ms), "a save started before the load asked earlier");
  open.set_value();
  BOOST_TEST_REQUIRE(ready_within(h.committed, 30s), "the save never committed");
  BOOST_CHECK_NO_THROW(h.committed.get());
  auto done = loaded.get_future();
  BOOST_TEST_REQUIRE((done.wait_for(30s) == std::future_status::ready), "the load never finished");
  BOOST_TEST(!done.get());
  BOOST_TEST((into->contents() == m->contents()));
  // Plain callbacks run in the order posted: once this one has, so have those above.
  std::promise<void> last;
  h.async_wait_committed([&](std::exception_ptr) { last.set_value(); });
  last.get_future().wait();
  std::lock_guard lock(mu);
  BOOST_TEST((order == std::vector<std::string>{"load", "save staged"}));
}

BOOST_AUTO_TEST_SUITE_END()
