// test_slot_engine.cpp — the SlotEngine against a fake slot source and a
// queue of started extents that the test completes by hand: order,
// back-pressure, cancel, failure, and `done` exactly once. Every wait has a
// time limit, so a hang fails instead of blocking.
#define BOOST_TEST_MODULE slot_engine
#include <boost/asio/thread_pool.hpp>
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <latch>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "io/io_fault_injection.hpp"
#include "io/slot_engine.hpp"
#include "io/slot_source.hpp"
#include "ringckpt/error.hpp"

using namespace ringckpt;
using ringckpt::detail::SlotEngine;
using namespace std::chrono_literals;

namespace {

constexpr auto kLimit = 5s;

// Polls `pred` until it holds or kLimit passes.
bool eventually(const std::function<bool()>& pred) {
  const auto deadline = std::chrono::steady_clock::now() + kLimit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// Lends `count` slots like StagingRing (waiters served first come, first
// served, on the releasing thread) and checks that no slot is lent twice or
// returned unlent.
class FakeSlots final : public SlotSource {
 public:
  explicit FakeSlots(unsigned count) : count_(count), lent_(count, false) {
    for (unsigned s = count; s-- > 0;) free_.push_back(s);
  }
  std::size_t slot_count() const noexcept override { return count_; }
  void async_acquire(Handler handler) override {
    unsigned slot;
    {
      std::lock_guard lock(mu_);
      ++acquires_;
      if (free_.empty()) {
        waiters_.push_back(std::move(handler));
        return;
      }
      slot = free_.back();
      free_.pop_back();
      lend(slot);
    }
    handler(slot);
  }
  void release(unsigned slot) override {
    Handler next;
    {
      std::lock_guard lock(mu_);
      if (slot >= count_ || !lent_[slot]) {
        ++bad_releases_;
        return;
      }
      lent_[slot] = false;
      --held_;
      if (waiters_.empty()) {
        free_.push_back(slot);
        return;
      }
      next = std::move(waiters_.front());
      waiters_.pop_front();
      lend(slot);
    }
    next(slot);
  }
  std::size_t free_count() const { std::lock_guard lock(mu_); return free_.size(); }
  std::size_t max_held() const { std::lock_guard lock(mu_); return max_held_; }
  std::size_t acquires() const { std::lock_guard lock(mu_); return acquires_; }
  std::size_t bad_releases() const { std::lock_guard lock(mu_); return bad_releases_; }

 private:
  void lend(unsigned slot) {  // REQUIRES: mu_ held
    lent_[slot] = true;
    max_held_ = std::max(max_held_, ++held_);
  }
  const unsigned count_;
  mutable std::mutex mu_;
  std::vector<unsigned> free_;     // guarded by mu_
  std::vector<bool> lent_;         // guarded by mu_
  std::deque<Handler> waiters_;    // guarded by mu_
  std::size_t held_ = 0, max_held_ = 0, acquires_ = 0, bad_releases_ = 0;  // guarded by mu_
};

// One job on the engine: started extents wait in a queue until the test
// ends them (the fake I/O queue). `on_start` may replace the default hook.
struct Job {
  struct Started {
    std::size_t e;
    unsigned slot;
  };

  FakeSlots slots;
  boost::asio::thread_pool pool;
  std::shared_ptr<SlotEngine> engine;
  std::function<void(std::size_t, unsigned)> on_start;  // set before start()

  std::mutex mu;
  std::vector<std::size_t> start_order;  // guarded by mu
  std::deque<Started> queue;             // guarded by mu
  std::size_t in_flight = 0, max_in_flight = 0;  // guarded by mu
  std::atomic<int> done_calls{0};
  std::atomic<int> stopping_calls{0};
  std::optional<std::exception_ptr> result;  // guarded by mu; set by the first done

  Job(unsigned slot_count, std::size_t threads) : slots(slot_count), pool(threads) {
    engine = std::make_shared<SlotEngine>(
        slots, pool.get_executor(),
        SlotEngine::Hooks{
            .start = [this](std::size_t e, unsigned slot) {
              {
                std::lock_guard lock(mu);
                start_order.push_back(e);
                max_in_flight = std::max(max_in_flight, ++in_flight);
              }
              if (on_start) {
                on_start(e, slot);
              } else {
                std::lock_guard lock(mu);
                queue.push_back({e, slot});
              }
            },
            .stopping = [this] { ++stopping_calls; },
            .done = [this](std::exception_ptr error) {
              ++done_calls;
              std::lock_guard lock(mu);
              if (!result) result = error;
            }});
  }
  ~Job() { pool.join(); }

  void start(std::size_t extents) { engine->start(extents, engine); }
  std::size_t started() { std::lock_guard lock(mu); return start_order.size(); }
  std::size_t queued() { std::lock_guard lock(mu); return queue.size(); }
  bool finished() { std::lock_guard lock(mu); return result.has_value(); }
  // Ends the oldest queued extent; false if none is queued.
  bool end_one(std::exception_ptr error = nullptr) {
    Started s;
    {
      std::lock_guard lock(mu);
      if (queue.empty()) return false;
      s = queue.front();
      queue.pop_front();
      --in_flight;
    }
    engine->end_extent(s.e, s.slot, error);
    return true;
  }
  // Ends queued extents as they come until `done` has run.
  void drain() {
    BOOST_REQUIRE_MESSAGE(eventually([&] {
                            while (end_one()) {}
                            return finished();
                          }),
                          "the job did not finish within the time limit");
  }
  std::exception_ptr error() { std::lock_guard lock(mu); return *result; }
};

ErrorCode code_of(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const Error& e) {
    return e.code();
  } catch (...) {
  }
  BOOST_ERROR("the error is not a ringckpt::Error");
  return static_cast<ErrorCode>(-1);
}

}  // namespace

BOOST_AUTO_TEST_CASE(extents_get_slots_in_order_each_exactly_once) {
  Job job(3, 1);  // one thread: the start hooks run in the order handed out
  job.start(40);
  job.drain();
  BOOST_TEST(!job.error());
  std::vector<std::size_t> expected(40);
  for (std::size_t i = 0; i < expected.size(); ++i) expected[i] = i;
  BOOST_TEST(job.start_order == expected, boost::test_tools::per_element());
  BOOST_TEST(job.done_calls.load() == 1);
  BOOST_TEST(job.stopping_calls.load() == 0);
  BOOST_TEST(job.slots.free_count() == 3u);
  BOOST_TEST(job.slots.bad_releases() == 0u);
}

BOOST_AUTO_TEST_CASE(never_more_extents_in_flight_than_slots) {
  Job job(4, 2);
  job.start(50);
  BOOST_REQUIRE(eventually([&] { return job.queued() == 4; }));
  std::this_thread::sleep_for(30ms);  // room for a fifth start, which must not come
  BOOST_TEST(job.started() == 4u);
  BOOST_REQUIRE(job.end_one());
  BOOST_REQUIRE(eventually([&] { return job.started() == 5; }));
  job.drain();
  BOOST_TEST(!job.error());
  BOOST_TEST(job.started() == 50u);
  BOOST_TEST(job.max_in_flight <= 4u);
  BOOST_TEST(job.slots.max_held() <= 4u);
  BOOST_TEST(job.slots.free_count() == 4u);
  BOOST_TEST(job.done_calls.load() == 1);
}

BOOST_AUTO_TEST_CASE(cancel_in_the_middle_drains_and_returns_every_slot) {
  Job job(2, 2);
  job.start(100);
  for (int i = 0; i < 10; ++i) {
    BOOST_REQUIRE(eventually([&] { return job.queued() > 0; }));
    job.end_one();
  }
  // Extents 10 and 11 hold both slots; the engine waits for a third.
  BOOST_REQUIRE(eventually([&] { return job.started() == 12 && job.queued() == 2; }));
  job.engine->fail(std::make_exception_ptr(Error(ErrorCode::kCancelled, "test", "cancelled")));
  BOOST_TEST(job.engine->stopping());
  BOOST_TEST(!job.finished());  // two extents are still in flight
  job.drain();
  BOOST_TEST((code_of(job.error()) == ErrorCode::kCancelled));
  BOOST_TEST(job.started() == 12u);
  BOOST_TEST(job.done_calls.load() == 1);
  BOOST_TEST(job.stopping_calls.load() == 1);
  BOOST_TEST(job.slots.free_count() == 2u);
  BOOST_TEST(job.slots.bad_releases() == 0u);
}

BOOST_AUTO_TEST_CASE(a_throwing_start_stops_later_extents_and_done_has_its_error) {
  Job job(3, 2);
  job.on_start = [&](std::size_t e, unsigned slot) {
    if (e == 7) throw Error(ErrorCode::kIo, "extent 7", "cannot stage");
    std::lock_guard lock(job.mu);
    job.queue.push_back({e, slot});
  };
  job.start(30);
  // End an extent only while every slot is busy, so that one extent at a time
  // begins: 8 and later would begin only after 7 has failed.
  while (!job.engine->stopping()) {
    BOOST_REQUIRE(eventually([&] { return job.queued() == 3 || job.engine->stopping(); }));
    if (!job.engine->stopping()) job.end_one();
  }
  job.drain();
  BOOST_TEST((code_of(job.error()) == ErrorCode::kIo));
  std::set<std::size_t> started(job.start_order.begin(), job.start_order.end());
  BOOST_TEST(started.size() == job.start_order.size());
  BOOST_TEST(*started.rbegin() == 7u);  // nothing after the failure began
  BOOST_TEST(job.done_calls.load() == 1);
  BOOST_TEST(job.slots.free_count() == 3u);
  BOOST_TEST(job.slots.bad_releases() == 0u);
}

BOOST_AUTO_TEST_CASE(a_throwing_io_completion_fails_the_job_through_the_engine) {
  Job job(2, 2);
  std::mutex mu;
  std::deque<std::function<void(std::int64_t)>> completions;  // guarded by mu
  job.on_start = [&](std::size_t e, unsigned slot) {
    auto done = job.engine->io_completion(e, slot, [&job, e, slot](std::int64_t) {
      job.engine->end_extent(e, slot);
    });
    std::lock_guard lock(mu);
    completions.push_back(std::move(done));
  };
  detail::inject_io_completion_fault(5);
  job.start(20);
  BOOST_REQUIRE(eventually([&] {
    std::function<void(std::int64_t)> next;
    {
      std::lock_guard lock(mu);
      if (!completions.empty()) {
        next = std::move(completions.front());
        completions.pop_front();
      }
    }
    if (next) next(4096);  // the I/O thread; must not throw out
    return job.finished();
  }));
  detail::inject_io_completion_fault(0);
  BOOST_TEST((code_of(job.error()) == ErrorCode::kIo));
  BOOST_TEST(job.started() <= 6u);  // the fifth and at most one more in flight
  BOOST_TEST(job.done_calls.load() == 1);
  BOOST_TEST(job.slots.free_count() == 2u);
}

BOOST_AUTO_TEST_CASE(an_extent_ended_twice_returns_its_slot_once) {
  Job job(2, 1);
  job.start(2);
  BOOST_REQUIRE(eventually([&] { return job.queued() == 2; }));
  const Job::Started first = job.queue.front();
  job.end_one();
  job.engine->end_extent(first.e, first.slot);  // again: ignored
  job.drain();
  BOOST_TEST(!job.error());
  BOOST_TEST(job.slots.bad_releases() == 0u);
  BOOST_TEST(job.done_calls.load() == 1);
}

BOOST_AUTO_TEST_CASE(done_runs_once_when_cancel_and_failure_race) {
  for (int round = 0; round < 30; ++round) {
    BOOST_TEST_CONTEXT("round " << round) {
      Job job(4, 2);
      job.start(1000);
      BOOST_REQUIRE(eventually([&] { return job.queued() == 4; }));
      std::latch go(3);
      std::thread canceller([&] {
        go.arrive_and_wait();
        job.engine->fail(std::make_exception_ptr(Error(ErrorCode::kCancelled, "t", "cancel")));
      });
      std::thread failer([&] {
        go.arrive_and_wait();
        job.end_one(std::make_exception_ptr(Error(ErrorCode::kIo, "t", "write failed")));
      });
      go.arrive_and_wait();
      job.end_one();
      canceller.join();
      failer.join();
      job.drain();
      std::this_thread::sleep_for(2ms);  // a second `done` would land by now
      job.pool.join();
      BOOST_TEST(job.done_calls.load() == 1);
      BOOST_TEST(job.stopping_calls.load() == 1);
      const ErrorCode code = code_of(job.error());
      BOOST_TEST((code == ErrorCode::kCancelled || code == ErrorCode::kIo));
      BOOST_TEST(job.slots.free_count() == 4u);
      BOOST_TEST(job.slots.bad_releases() == 0u);
    }
  }
}

BOOST_AUTO_TEST_CASE(an_empty_job_completes_at_once) {
  Job job(2, 1);
  job.start(0);
  job.drain();
  BOOST_TEST(!job.error());
  BOOST_TEST(job.started() == 0u);
  BOOST_TEST(job.slots.acquires() == 0u);
  BOOST_TEST(job.done_calls.load() == 1);
}

BOOST_AUTO_TEST_CASE(a_failure_before_start_completes_with_it_and_starts_nothing) {
  Job job(2, 1);
  job.engine->fail(std::make_exception_ptr(Error(ErrorCode::kNotFound, "file", "missing")));
  std::this_thread::sleep_for(5ms);
  BOOST_TEST(!job.finished());  // done waits for start()
  job.start(10);
  job.drain();
  BOOST_TEST((code_of(job.error()) == ErrorCode::kNotFound));
  BOOST_TEST(job.started() == 0u);
  BOOST_TEST(job.done_calls.load() == 1);
}
