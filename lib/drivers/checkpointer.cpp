#include "ringckpt/checkpointer.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include <condition_variable>
#include <deque>
#include <mutex>

#include "drivers/checkpoint_protocol.hpp"
#include "drivers/save_completions.hpp"
#include "format/error_translation.hpp"
#include "format/file_extents.hpp"
#include "io/io_engine.hpp"
#include "load/shared_engine_reader.hpp"
#include "ringckpt/checkpoint.hpp"
#include "ringckpt/default_planner.hpp"
#include "ringckpt/error.hpp"
#include "save/rank_writer.hpp"

namespace ringckpt {

// ------------------------------------------------------------- SaveHandle

SaveHandle::SaveHandle(std::shared_ptr<SaveCompletions> state)
    : staged(state->staged()), committed(state->committed()), state_(std::move(state)) {}

void SaveHandle::cancel() {
  if (state_) state_->cancel();
}

void SaveHandle::when_staged(const std::shared_ptr<SaveCompletions>& state,
                             AnyCompletionHandler handler) {
  state->when_staged(std::move(handler));
}

void SaveHandle::when_committed(const std::shared_ptr<SaveCompletions>& state,
                                AnyCompletionHandler handler) {
  state->when_committed(std::move(handler));
}

// ----------------------------------------------------------- Checkpointer

namespace {

// Everything one save needs until it has committed or failed.
struct SaveTask {
  std::shared_ptr<SaveCompletions> completions;
  const StateDict* state_dict = nullptr;
  AsyncSaveOptions options;
  StagingMode mode = StagingMode::lazy;
  bool planned = false;
  bool cancelled = false;  // guarded by Impl::mu; asked before the job started
  std::filesystem::path dir;
  std::unique_ptr<DefaultSavePlanner> own_planner;
  SavePlanner* planner = nullptr;
  std::unique_ptr<detail::RankWriter> writer;
  SavePlan plan;
  Metadata metadata;
  std::shared_ptr<detail::SaveJob> job;  // guarded by Impl::mu; set once started
};

}  // namespace

// Threads: the control thread plans lazy and bounded saves, starts jobs and
// commits; the load thread runs async_load; the engine's staging and I/O
// threads run the jobs; the poster's completion thread runs plain callbacks.
// ~Checkpointer joins them all, so they may hold a plain Impl*; only a
// SaveHandle's cancel hook, which may outlive the Checkpointer, holds a
// weak_ptr.
struct Checkpointer::Impl {
  CheckpointerOptions options;
  std::shared_ptr<detail::IoEngine> engine;
  std::shared_ptr<CompletionPoster> poster = std::make_shared<CompletionPoster>();
  std::weak_ptr<Impl> self;
  boost::asio::thread_pool control{1};
  boost::asio::thread_pool loads{1};

  std::mutex mu;
  std::condition_variable idle;
  std::deque<std::shared_ptr<SaveTask>> queue;  // guarded by mu; waiting to start
  std::shared_ptr<SaveTask> running;            // guarded by mu
  bool closing = false;                         // guarded by mu

  std::shared_ptr<SaveTask> submit(const StateDict& sd, std::filesystem::path dir,
                                   const AsyncSaveOptions& o);
  void plan(SaveTask& task);
  void enqueue(const std::shared_ptr<SaveTask>& task);
  void start(std::shared_ptr<SaveTask> task);
  void run(const std::shared_ptr<SaveTask>& task);
  void on_written(const std::shared_ptr<SaveTask>& task, std::exception_ptr error,
                  WriteResults results);
  void end(const std::shared_ptr<SaveTask>& task, std::exception_ptr error);
  void cancel(const std::shared_ptr<SaveTask>& task);
  void close();
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
  task.writer = std::make_unique<detail::RankWriter>(task.dir, engine, task.options.overwrite);
  planner.set_up_planner(*task.state_dict, true);
  task.writer->set_up(true);
  std::vector<SavePlan> local;
  local.push_back(planner.create_local_plan());
  auto [plans, metadata] = planner.create_global_plan(std::move(local));
  plans.at(0).storage_data = data_prefix(0, new_save_generation());
  task.plan = planner.finish_plan(std::move(plans.at(0)));
  task.metadata = std::move(metadata);
  task.planned = true;

  const SaveLayout& layout = task.writer->lay_out(task.plan, task.plan.storage_data);
  const std::uint64_t extent = engine->ring().slot_bytes();
  std::uint64_t extents = 0;
  for (const auto& f : layout.files) extents += detail::extent_count(f.size, extent);
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

void Checkpointer::Impl::enqueue(const std::shared_ptr<SaveTask>& task) {
  std::weak_ptr<SaveTask> weak_task = task;
  task->completions->set_cancel([weak_impl = self, weak_task] {
    std::shared_ptr<Impl> impl = weak_impl.lock();  // none once ~Checkpointer has returned
    std::shared_ptr<SaveTask> t = weak_task.lock();
    if (impl && t) impl->cancel(t);
  });
  bool refused = false;
  {
    std::lock_guard lock(mu);
    if (closing) {
      refused = true;
    } else if (running) {
      queue.push_back(task);
      return;
    } else {
      running = task;
    }
  }
  if (refused) {
    task->completions->complete_committed(detail::save_cancelled(task->dir));
    return;
  }
  start(task);
}

// Plans (unless done already) and starts the job on the control thread, so
// that a lazy or bounded async_save returns without planning.
void Checkpointer::Impl::start(std::shared_ptr<SaveTask> task) {
  boost::asio::post(control, [this, task = std::move(task)] { run(task); });
}

void Checkpointer::Impl::run(const std::shared_ptr<SaveTask>& task) {
  std::shared_ptr<detail::SaveJob> job;
  try {
    {
      std::lock_guard lock(mu);
      if (task->cancelled) std::rethrow_exception(detail::save_cancelled(task->dir));
    }
    if (!task->planned) plan(*task);
    auto completions = task->completions;
    job = task->writer->start(
        task->plan, *task->planner,
        {.staged = [completions, dir = task->dir.string()](std::exception_ptr error) {
           completions->complete_staged(detail::as_error_ptr(error, dir));
         },
         .written = [this, task](std::exception_ptr error, WriteResults results) {
           // Commit off the staging and I/O threads.
           try {
             boost::asio::post(control, [this, task, error, r = std::move(results)]() mutable {
               on_written(task, error, std::move(r));
             });
           } catch (...) {
             end(task, std::current_exception());
           }
         }});
  } catch (...) {
    end(task, std::current_exception());
    return;
  }
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
  if (!error) {
    std::lock_guard lock(mu);
    // cancel() came after the job's end.
    if (task->cancelled) error = detail::save_cancelled(task->dir);
  }
  if (!error) {
    try {
      std::vector<WriteResults> all{std::move(results)};
      task->writer->commit(task->metadata, all);
      add_results(task->metadata, all);
    } catch (...) {
      error = std::current_exception();
    }
  }
  if (error) task->writer->abort();
  end(task, error);
}

// The one way a save ends: its completions fire (outside mu), and the next
// queued save starts.
void Checkpointer::Impl::end(const std::shared_ptr<SaveTask>& task, std::exception_ptr error) {
  task->completions->complete_committed(detail::as_error_ptr(error, task->dir.string()));
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
  bool was_queued = false;
  {
    std::lock_guard lock(mu);
    for (auto it = queue.begin(); it != queue.end(); ++it) {
      if (*it == task) {
        queue.erase(it);
        was_queued = true;
        break;
      }
    }
    if (running == task) {
      job = task->job;
      task->cancelled = true;  // seen by run() if the job has not started yet
    }
  }
  if (was_queued) task->completions->complete_committed(detail::save_cancelled(task->dir));
  if (job) job->cancel();
}

// Cancels what has not committed, then stops every thread; plain callbacks
// posted by then have run when it returns.
void Checkpointer::Impl::close() {
  std::deque<std::shared_ptr<SaveTask>> queued;
  std::shared_ptr<detail::SaveJob> job;
  {
    std::lock_guard lock(mu);
    closing = true;
    queued.swap(queue);
    if (running) {
      job = running->job;
      running->cancelled = true;
    }
  }
  for (auto& t : queued) t->completions->complete_committed(detail::save_cancelled(t->dir));
  if (job) job->cancel();
  {
    std::unique_lock lock(mu);
    idle.wait(lock, [&] { return !running; });
  }
  control.join();
  loads.join();
  // A staging thread may still be inside post(control, ...) (signalling its
  // condition variable after the handler already ran): let it return before
  // control is destroyed.
  engine->staging_pool().join();
  poster->close();
}

// Threads that cannot be started, a ring that cannot be allocated: an Error.
Checkpointer::Checkpointer(CheckpointerOptions options) try : impl_(std::make_shared<Impl>()) {
  impl_->self = impl_;
  impl_->options = std::move(options);
  impl_->engine = std::make_shared<detail::IoEngine>(impl_->options.io);
} catch (...) {
  detail::rethrow_as_error("Checkpointer");
}

Checkpointer::~Checkpointer() { impl_->close(); }

std::shared_ptr<SaveTask> Checkpointer::Impl::submit(const StateDict& state_dict,
                                                      std::filesystem::path dir,
                                                      const AsyncSaveOptions& o) {
  auto task = std::make_shared<SaveTask>();
  task->completions = std::make_shared<SaveCompletions>(poster);
  task->state_dict = &state_dict;
  task->options = o;
  task->mode = o.mode.value_or(options.default_mode);
  task->dir = std::move(dir);
  // A snapshot save blocks its caller anyway: plan here, so that a state dict
  // that does not fit the ring is refused at once.
  if (task->mode == StagingMode::snapshot) {
    detail::translating_errors(task->dir.string(), [&] { plan(*task); });
  }
  enqueue(task);
  if (task->mode == StagingMode::snapshot) task->completions->staged().wait();
  return task;
}

SaveHandle Checkpointer::async_save(const StateDict& state_dict, std::filesystem::path dir,
                                    AsyncSaveOptions options) {
  const std::string where = dir.string();
  return detail::translating_errors(where, [&] {
    return SaveHandle(impl_->submit(state_dict, std::move(dir), options)->completions);
  });
}

void Checkpointer::start_save(const StateDict& state_dict, std::filesystem::path dir,
                              const AsyncSaveOptions& options, AnyCompletionHandler handler) {
  std::shared_ptr<SaveTask> task;
  const std::string where = dir.string();
  try {
    task = impl_->submit(state_dict, std::move(dir), options);
  } catch (...) {
    // Snapshot planning (already an Error naming the directory), or out of memory.
    impl_->poster->post(std::move(handler), detail::as_error_ptr(std::current_exception(), where));
    return;
  }
  task->completions->when_committed(std::move(handler));
}

Metadata Checkpointer::save(const StateDict& state_dict, const std::filesystem::path& dir,
                            AsyncSaveOptions options) {
  return detail::translating_errors(dir.string(), [&] {
    std::shared_ptr<SaveTask> task = impl_->submit(state_dict, dir, options);
    task->completions->committed().get();
    return task->metadata;  // with storage_data and files, as committed
  });
}

void Checkpointer::load(StateDict& state_dict, const std::filesystem::path& dir,
                        LoadPlanner* planner) {
  detail::translating_errors(dir.string(), [&] {
    std::unique_ptr<FileSystemReader> reader = SharedEngineReader::open(dir, impl_->engine);
    detail::load_with(state_dict, *reader, planner, nullptr);
  });
}

void Checkpointer::start_load(StateDict& state_dict, std::filesystem::path dir,
                              LoadPlanner* planner, AnyCompletionHandler handler) {
  Impl& m = *impl_;
  PendingHandler pending(std::move(handler));
  std::unique_lock lock(m.mu);
  if (m.closing) {
    lock.unlock();
    m.poster->post(std::move(pending.handler),
                   std::make_exception_ptr(Error(ErrorCode::kCancelled, dir.string(),
                                                 "load asked of a closing Checkpointer")));
    return;
  }
  // Posted under mu, so that close() (which sets closing under mu first) joins
  // the load thread only after it.
  boost::asio::post(m.loads, [this, &state_dict, dir = std::move(dir), planner,
                              p = std::move(pending)]() mutable {
    std::exception_ptr error;
    try {
      load(state_dict, dir, planner);
    } catch (...) {
      error = detail::as_error_ptr(std::current_exception(), dir.string());
    }
    impl_->poster->post(std::move(p.handler), error);
  });
}

const CheckpointerOptions& Checkpointer::options() const noexcept { return impl_->options; }

IoReport Checkpointer::report() const { return impl_->engine->report(); }

}  // namespace ringckpt
