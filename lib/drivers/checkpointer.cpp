#include "ringckpt/checkpointer.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include <condition_variable>
#include <deque>
#include <mutex>

#include "io/io_engine.hpp"
#include "plan/layout.hpp"
#include "ringckpt/checkpoint.hpp"
#include "ringckpt/default_planner.hpp"
#include "ringckpt/error.hpp"
#include "ringckpt/filesystem.hpp"
#include "save/save_job.hpp"

namespace ringckpt {

// ------------------------------------------------------------- SaveHandle

struct SaveHandle::State {
  std::promise<void> staged_promise;
  std::promise<void> committed_promise;
  std::shared_future<void> staged = staged_promise.get_future().share();
  std::shared_future<void> committed = committed_promise.get_future().share();

  std::mutex mu;
  bool staged_done = false;       // guarded by mu
  bool committed_done = false;    // guarded by mu
  std::exception_ptr staged_error;
  std::exception_ptr committed_error;
  std::vector<AnyCompletionHandler> staged_waiters;     // guarded by mu
  std::vector<AnyCompletionHandler> committed_waiters;  // guarded by mu
  std::function<void()> cancel;                         // guarded by mu

  // Each completes once; later calls are ignored.
  void complete_staged(std::exception_ptr error);
  void complete_committed(std::exception_ptr error);
};

namespace {

// Runs the handler through its associated executor; a handler without one
// (a plain callback) runs on the ringckpt thread that completed the save.
void deliver(AnyCompletionHandler handler, std::exception_ptr error) {
  boost::asio::dispatch(boost::asio::append(std::move(handler), error));
}

std::exception_ptr cancelled(const std::filesystem::path& dir) {
  return std::make_exception_ptr(
      Error(ErrorCode::kCancelled, dir.string(), "save cancelled before it committed"));
}

}  // namespace

void SaveHandle::State::complete_staged(std::exception_ptr error) {
  std::vector<AnyCompletionHandler> waiters;
  {
    std::lock_guard lock(mu);
    if (staged_done) return;
    staged_done = true;
    staged_error = error;
    waiters.swap(staged_waiters);
  }
  if (error) {
    staged_promise.set_exception(error);
  } else {
    staged_promise.set_value();
  }
  for (auto& w : waiters) deliver(std::move(w), error);
}

void SaveHandle::State::complete_committed(std::exception_ptr error) {
  complete_staged(error);  // a save that ends before staging ends both
  std::vector<AnyCompletionHandler> waiters;
  {
    std::lock_guard lock(mu);
    if (committed_done) return;
    committed_done = true;
    committed_error = error;
    waiters.swap(committed_waiters);
    cancel = nullptr;
  }
  if (error) {
    committed_promise.set_exception(error);
  } else {
    committed_promise.set_value();
  }
  for (auto& w : waiters) deliver(std::move(w), error);
}

SaveHandle::SaveHandle(std::shared_ptr<State> state)
    : staged(state->staged), committed(state->committed), state_(std::move(state)) {}

void SaveHandle::cancel() {
  if (!state_) return;
  std::function<void()> fn;
  {
    std::lock_guard lock(state_->mu);
    fn = state_->cancel;
  }
  if (fn) fn();
}

void SaveHandle::when_staged(const std::shared_ptr<State>& state, AnyCompletionHandler handler) {
  std::unique_lock lock(state->mu);
  if (!state->staged_done) {
    state->staged_waiters.push_back(std::move(handler));
    return;
  }
  std::exception_ptr error = state->staged_error;
  lock.unlock();
  deliver(std::move(handler), error);
}

void SaveHandle::when_committed(const std::shared_ptr<State>& state,
                                AnyCompletionHandler handler) {
  std::unique_lock lock(state->mu);
  if (!state->committed_done) {
    state->committed_waiters.push_back(std::move(handler));
    return;
  }
  std::exception_ptr error = state->committed_error;
  lock.unlock();
  deliver(std::move(handler), error);
}

// ----------------------------------------------------------- Checkpointer

namespace {

// Everything one save needs until it has committed or failed.
struct SaveTask {
  std::shared_ptr<SaveHandle::State> state;
  const StateDict* state_dict = nullptr;
  AsyncSaveOptions options;
  StagingMode mode = StagingMode::lazy;
  bool planned = false;
  bool cancelled = false;  // guarded by Impl::mu; asked before the job started
  std::filesystem::path dir;
  std::unique_ptr<DefaultSavePlanner> own_planner;
  SavePlanner* planner = nullptr;
  std::unique_ptr<FileSystemWriter> writer;
  SavePlan plan;
  Metadata metadata;
  SaveLayout layout;
  std::shared_ptr<detail::SaveJob> job;  // set once started
};

}  // namespace

struct Checkpointer::Impl {
  CheckpointerOptions options;
  std::shared_ptr<detail::IoEngine> engine;
  boost::asio::thread_pool control{1};  // loads and commits, off the staging threads

  std::mutex mu;
  std::condition_variable idle;
  std::deque<std::shared_ptr<SaveTask>> queue;  // guarded by mu; waiting to start
  std::shared_ptr<SaveTask> running;            // guarded by mu
  bool closing = false;                         // guarded by mu

  std::shared_ptr<SaveTask> submit(const StateDict& sd, std::filesystem::path dir,
                                   const AsyncSaveOptions& o);
  void plan(SaveTask& task);
  void enqueue(std::shared_ptr<SaveTask> task);
  void start(std::shared_ptr<SaveTask> task);
  void run(const std::shared_ptr<SaveTask>& task);
  void on_written(const std::shared_ptr<SaveTask>& task, std::exception_ptr error,
                  WriteResults results);
  void finished(const std::shared_ptr<SaveTask>& task);
  void cancel(const std::shared_ptr<SaveTask>& task);
};

// Runs the planner protocol for one rank and lays the files out; checks that
// the save fits the ring when its mode needs that.
void Checkpointer::Impl::plan(SaveTask& task) {
  if (task.options.planner) {
    task.planner = task.options.planner;
  } else {
    task.own_planner = std::make_unique<DefaultSavePlanner>();
    task.planner = task.own_planner.get();
  }
  SavePlanner& planner = *task.planner;
  task.writer = std::make_unique<FileSystemWriter>(task.dir, engine, task.options.overwrite);
  planner.set_up_planner(*task.state_dict, true);
  task.writer->set_up_storage_writer(true, 0);
  std::vector<SavePlan> local;
  local.push_back(task.writer->prepare_local_plan(planner.create_local_plan()));
  auto [plans, metadata] = planner.create_global_plan(std::move(local));
  plans = task.writer->prepare_global_plan(std::move(plans));
  task.plan = planner.finish_plan(std::move(plans.at(0)));
  task.metadata = std::move(metadata);
  task.layout = plan_layout(task.plan, task.plan.storage_data, options.io.max_file_bytes);
  task.planned = true;

  const std::uint64_t extent = engine->ring().slot_bytes();
  std::uint64_t extents = 0;
  for (const auto& f : task.layout.files) extents += (f.size + extent - 1) / extent;
  if (extents <= engine->ring().slot_count()) return;
  if (task.mode == StagingMode::snapshot) {
    throw Error(ErrorCode::kInvalidArgument, task.dir.string(),
                "snapshot staging needs a ring of " + std::to_string(extents * extent) +
                    " bytes for this state dict, the ring holds " +
                    std::to_string(engine->ring().total_bytes()) +
                    ": raise IoOptions::ring_bytes or stage bounded");
  }
  if (task.mode == StagingMode::lazy) {
    engine->note("lazy save larger than the staging ring: it stages as the disk drains the "
                 "ring (bounded); raise IoOptions::ring_bytes for memory-speed staging");
  }
}

void Checkpointer::Impl::enqueue(std::shared_ptr<SaveTask> task) {
  std::weak_ptr<SaveTask> weak = task;
  {
    std::lock_guard lock(task->state->mu);
    task->state->cancel = [this, weak] {
      if (auto t = weak.lock()) cancel(t);
    };
  }
  {
    std::lock_guard lock(mu);
    if (closing) {
      task->state->complete_committed(cancelled(task->dir));
      return;
    }
    if (running) {
      queue.push_back(std::move(task));
      return;
    }
    running = task;
  }
  start(std::move(task));
}

// Plans (unless done already) and starts the job on the control thread, so
// that a lazy or bounded async_save returns without planning.
void Checkpointer::Impl::start(std::shared_ptr<SaveTask> task) {
  boost::asio::post(control, [this, task = std::move(task)] { run(task); });
}

void Checkpointer::Impl::run(const std::shared_ptr<SaveTask>& task) {
  try {
    {
      std::lock_guard lock(mu);
      if (task->cancelled) std::rethrow_exception(cancelled(task->dir));
    }
    if (!task->planned) plan(*task);
  } catch (...) {
    task->state->complete_committed(std::current_exception());
    finished(task);
    return;
  }
  auto state = task->state;
  auto job = detail::SaveJob::start(
      *engine, task->dir, task->plan, *task->planner, task->layout,
      {.staged = [state](std::exception_ptr error) { state->complete_staged(error); },
       .written = [this, task](std::exception_ptr error, WriteResults results) {
         // Commit off the staging and I/O threads.
         boost::asio::post(control, [this, task, error, r = std::move(results)]() mutable {
           on_written(task, error, std::move(r));
         });
       }});
  bool cancel_now;
  {
    std::lock_guard lock(mu);
    task->job = job;
    cancel_now = task->cancelled;
  }
  if (cancel_now) job->cancel();
}

void Checkpointer::Impl::on_written(const std::shared_ptr<SaveTask>& task,
                                    std::exception_ptr error, WriteResults results) {
  const bool wrote = !error;
  if (!error) {
    std::lock_guard lock(mu);
    if (task->cancelled) error = cancelled(task->dir);  // cancel() came after the job's end
  }
  if (!error) {
    try {
      std::vector<WriteResults> all{std::move(results)};
      task->writer->finish(task->metadata, all);
      add_results(task->metadata, all);
    } catch (...) {
      error = std::current_exception();
    }
  }
  if (error && wrote) {
    // The job wrote these files; FileSystemWriter::abort() knows only those
    // of its own write_data, so it would leave them.
    for (const auto& f : task->layout.files) {
      std::error_code ignored;
      std::filesystem::remove(task->dir / f.relative_path, ignored);
    }
  }
  task->state->complete_committed(error);
  finished(task);
}

void Checkpointer::Impl::finished(const std::shared_ptr<SaveTask>& task) {
  std::shared_ptr<SaveTask> next;
  {
    std::lock_guard lock(mu);
    if (running == task) running.reset();
    if (!running && !queue.empty()) {
      next = running = std::move(queue.front());
      queue.pop_front();
    }
    idle.notify_all();
  }
  if (next) start(std::move(next));
}

void Checkpointer::Impl::cancel(const std::shared_ptr<SaveTask>& task) {
  std::shared_ptr<detail::SaveJob> job;
  {
    std::lock_guard lock(mu);
    for (auto it = queue.begin(); it != queue.end(); ++it) {
      if (*it == task) {
        queue.erase(it);
        task->state->complete_committed(cancelled(task->dir));
        idle.notify_all();
        return;
      }
    }
    if (running == task) {
      job = task->job;
      task->cancelled = true;  // seen by run() if the job has not started yet
    }
  }
  if (job) job->cancel();
}

Checkpointer::Checkpointer(CheckpointerOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
  impl_->engine = std::make_shared<detail::IoEngine>(impl_->options.io);
}

Checkpointer::~Checkpointer() {
  std::deque<std::shared_ptr<SaveTask>> queued;
  std::shared_ptr<detail::SaveJob> job;
  {
    std::lock_guard lock(impl_->mu);
    impl_->closing = true;
    queued.swap(impl_->queue);
    if (impl_->running) {
      job = impl_->running->job;
      impl_->running->cancelled = true;
    }
  }
  for (auto& t : queued) t->state->complete_committed(cancelled(t->dir));
  if (job) job->cancel();
  {
    std::unique_lock lock(impl_->mu);
    impl_->idle.wait(lock, [&] { return !impl_->running; });
  }
  impl_->control.join();
  // A staging thread may still be inside post(control, ...) (signalling its
  // condition variable after the handler already ran): let it return before
  // control is destroyed.
  impl_->engine->staging_pool().join();
}

std::shared_ptr<SaveTask> Checkpointer::Impl::submit(const StateDict& state_dict,
                                                      std::filesystem::path dir,
                                                      const AsyncSaveOptions& o) {
  auto task = std::make_shared<SaveTask>();
  task->state = std::make_shared<SaveHandle::State>();
  task->state_dict = &state_dict;
  task->options = o;
  task->mode = o.mode.value_or(options.default_mode);
  task->dir = std::move(dir);
  // A snapshot save blocks its caller anyway: plan here, so that a state dict
  // that does not fit the ring is refused at once.
  if (task->mode == StagingMode::snapshot) plan(*task);
  enqueue(task);
  if (task->mode == StagingMode::snapshot) task->state->staged.wait();
  return task;
}

SaveHandle Checkpointer::async_save(const StateDict& state_dict, std::filesystem::path dir,
                                    AsyncSaveOptions options) {
  return SaveHandle(impl_->submit(state_dict, std::move(dir), options)->state);
}

Metadata Checkpointer::save(const StateDict& state_dict, const std::filesystem::path& dir,
                            AsyncSaveOptions options) {
  std::shared_ptr<SaveTask> task = impl_->submit(state_dict, dir, options);
  task->state->committed.get();
  return task->metadata;  // with storage_data and files, as committed
}

void Checkpointer::load(StateDict& state_dict, const std::filesystem::path& dir,
                        LoadPlanner* planner) {
  FileSystemReader reader(dir, impl_->engine);
  ringckpt::load(state_dict, reader, planner);
}

void Checkpointer::start_load(StateDict& state_dict, std::filesystem::path dir,
                              LoadPlanner* planner, AnyCompletionHandler handler) {
  boost::asio::post(impl_->control, [this, &state_dict, dir = std::move(dir), planner,
                                     h = std::move(handler)]() mutable {
    std::exception_ptr error;
    try {
      load(state_dict, dir, planner);
    } catch (...) {
      error = std::current_exception();
    }
    deliver(std::move(h), error);
  });
}

const CheckpointerOptions& Checkpointer::options() const noexcept { return impl_->options; }

IoReport Checkpointer::report() const { return impl_->engine->report(); }

}  // namespace ringckpt
