#include "ringckpt/checkpointer.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <variant>

#include "drivers/checkpoint_protocol.hpp"
#include "drivers/protocol_steps.hpp"
#include "drivers/save_completions.hpp"
#include "drivers/save_protocol.hpp"
#include "format/error_translation.hpp"
#include "format/file_extents.hpp"
#include "format/metadata_json.hpp"
#include "io/io_engine.hpp"
#include "load/shared_engine_reader.hpp"
#include "ringckpt/checkpoint.hpp"
#include "ringckpt/default_planner.hpp"
#include "ringckpt/error.hpp"
#include "save/rank_writer.hpp"
#include "save/shared_engine_writer.hpp"

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
  std::filesystem::path dir;
  Metadata metadata;         // the committed metadata (rank 0's whole; elsewhere empty)
  std::string storage_data;  // this rank's data-file prefix, once planned
  bool cancelled = false;    // guarded by Impl::mu
  bool job_started = false;  // guarded by Impl::mu; false: it failed (if it did) planning
  bool wants_metadata = false;     // a blocking save(): read it back on ranks other than 0
  std::exception_ptr metadata_error;  // why that read failed (the save itself committed)
  std::shared_ptr<detail::SaveJob> job;  // guarded by Impl::mu; set while the job runs
};

// One load, and how it completes: through a handler (async_load) or a
// promise its caller waits on (load, which may be called from a plain
// callback, so never through the completion thread).
struct LoadTask {
  StateDict* state_dict = nullptr;
  std::filesystem::path dir;
  LoadPlanner* planner = nullptr;
  std::optional<PendingHandler> handler;
  std::promise<void> done;  // when there is no handler
};

using Operation = std::variant<std::shared_ptr<SaveTask>, std::shared_ptr<LoadTask>>;

}  // namespace

namespace {

// The committed metadata.json of `task`, read back on a rank other than 0,
// and checked to be of this save: its data files carry this save's
// generation (storage_data is "__{rank}_{generation}_").
Metadata read_committed(const SaveTask& task) {
  Metadata metadata = read_metadata(task.dir);
  const std::size_t at = task.storage_data.find('_', 2);
  if (at == std::string::npos || metadata.files.empty()) return metadata;
  const std::string generation = task.storage_data.substr(at);  // "_{generation}_"
  for (const FileInfo& file : metadata.files) {
    if (file.relative_path.find(generation) != std::string::npos) return metadata;
  }
  throw Error(ErrorCode::kNotFound, (task.dir / kMetadataFile).string(),
              "is not of the save just committed (no data file of generation " +
                  generation.substr(1, generation.size() - 2) + "): replaced since?");
}

}  // namespace

// Threads: the control thread runs every operation (planning, collectives,
// commit, loads), in the order asked; the engine's staging and I/O threads
// run the jobs; the poster's completion thread runs plain callbacks.
// ~Checkpointer joins them all, so they may hold a plain Impl*; only a
// SaveHandle's cancel hook, which may outlive the Checkpointer, holds a
// weak_ptr.
struct Checkpointer::Impl {
  CheckpointerOptions options;
  std::unique_ptr<Coordinator> coordinator;  // used on the control thread only
  std::shared_ptr<detail::IoEngine> engine;
  std::shared_ptr<CompletionPoster> poster = std::make_shared<CompletionPoster>();
  std::weak_ptr<Impl> self;
  boost::asio::thread_pool control{1};
  detail::PlanCache plan_cache;  // used on the control thread only

  mutable std::mutex mu;
  std::deque<Operation> queue;         // guarded by mu; asked, not yet started
  std::shared_ptr<SaveTask> running;   // guarded by mu; the save under way
  bool closing = false;                // guarded by mu
  PlanCacheReport plans;               // guarded by mu

  bool alone() const { return coordinator->world_size() == 1; }
  std::shared_ptr<SaveTask> submit(const StateDict& sd, std::filesystem::path dir,
                                   const AsyncSaveOptions& o, bool wants_metadata = false);
  void enqueue(Operation op);
  void run_next();
  void run(const std::shared_ptr<SaveTask>& task);
  void run(LoadTask& task);
  void finish(LoadTask& task, std::exception_ptr error);
  void drop(Operation& op, const char* why);
  WriteResults write(SaveTask& task, FileSystemWriter& writer, const SavePlan& plan,
                     SavePlanner& planner);
  void cancel(const std::shared_ptr<SaveTask>& task);
  void close();
};

void Checkpointer::Impl::enqueue(Operation op) {
  bool refused = false;
  {
    std::lock_guard lock(mu);
    if (closing) {
      refused = true;
    } else {
      queue.push_back(op);
    }
  }
  if (!refused) {
    boost::asio::post(control, [this] { run_next(); });
    return;
  }
  drop(op, "load asked of a closing Checkpointer");
}

// Ends an operation that will not run: a save as cancelled, a load with
// Error(kCancelled) saying `why`.
void Checkpointer::Impl::drop(Operation& op, const char* why) {
  if (auto* save = std::get_if<std::shared_ptr<SaveTask>>(&op)) {
    (*save)->completions->complete_committed(detail::save_cancelled((*save)->dir));
  } else {
    auto& load = *std::get<std::shared_ptr<LoadTask>>(op);
    finish(load, std::make_exception_ptr(Error(ErrorCode::kCancelled, load.dir.string(), why)));
  }
}

// On the control thread: the oldest operation asked (one post per operation;
// one removed by a cancel leaves a post that finds nothing).
void Checkpointer::Impl::run_next() {
  Operation op;
  {
    std::lock_guard lock(mu);
    if (queue.empty()) return;
    op = std::move(queue.front());
    queue.pop_front();
    if (auto* save = std::get_if<std::shared_ptr<SaveTask>>(&op)) running = *save;
  }
  if (auto* save = std::get_if<std::shared_ptr<SaveTask>>(&op)) {
    run(*save);
  } else {
    run(*std::get<std::shared_ptr<LoadTask>>(op));
  }
}

void Checkpointer::Impl::run(const std::shared_ptr<SaveTask>& task) {
  std::exception_ptr error;
  try {
    std::exception_ptr refuse;
    {
      std::lock_guard lock(mu);
      if (task->cancelled) refuse = detail::save_cancelled(task->dir);
    }
    DefaultSavePlanner own_planner;
    SavePlanner& planner = task->options.planner ? *task->options.planner : own_planner;
    std::unique_ptr<FileSystemWriter> writer =
        SharedEngineWriter::open(task->dir, engine, task->options.overwrite);
    detail::SaveProtocolOptions protocol;
    protocol.cache = options.plan_caching ? &plan_cache : nullptr;
    protocol.reuse = task->options.planner == nullptr;
    protocol.share_metadata = false;
    protocol.refuse = refuse;
    protocol.where = task->dir.string();
    task->metadata = detail::run_save(
        *task->state_dict, *writer, planner, *coordinator,
        [&](const SavePlan& plan, SavePlanner& p) { return write(*task, *writer, plan, p); },
        protocol);
  } catch (...) {
    error = std::current_exception();
  }
  // A blocking save on a rank other than 0 reads the committed metadata back
  // here, before any later save of this Checkpointer can replace it.
  if (!error && task->wants_metadata && !coordinator->is_coordinator()) {
    try {
      task->metadata = read_committed(*task);
    } catch (...) {
      task->metadata_error = std::current_exception();
    }
  }
  {
    std::lock_guard lock(mu);
    plans.cold = plan_cache.cold_plans;
    plans.cached = plan_cache.cached_plans;
    if (running == task) running.reset();
  }
  task->completions->complete_committed(detail::as_error_ptr(error, task->dir.string()));
}

// Step 3 of the protocol for one save: lays this rank's plan out, checks
// that it fits the ring when its mode needs that, and runs its job to the
// end; staged fires from the job.
WriteResults Checkpointer::Impl::write(SaveTask& task, FileSystemWriter& writer,
                                       const SavePlan& plan, SavePlanner& planner) {
  detail::RankWriter& rank_writer = SharedEngineWriter::rank_writer(writer);
  task.storage_data = plan.storage_data;
  const SaveLayout& layout = rank_writer.lay_out(plan, plan.storage_data);
  const std::uint64_t extent = engine->ring().slot_bytes();
  std::uint64_t extents = 0;
  for (const auto& f : layout.files) extents += detail::extent_count(f.size, extent);
  if (extents > engine->ring().slot_count()) {
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
  // Shared with the callback, which may still be inside set_value when this
  // thread wakes and returns.
  auto written = std::make_shared<std::promise<WriteResults>>();
  std::future<WriteResults> done = written->get_future();
  auto completions = task.completions;
  {
    std::lock_guard lock(mu);
    task.job_started = true;  // before the job can fire staged
  }
  std::shared_ptr<detail::SaveJob> job = rank_writer.start(
      plan, planner,
      {.staged = [completions, dir = task.dir.string()](std::exception_ptr error) {
         completions->complete_staged(detail::as_error_ptr(error, dir));
       },
       .written = [written](std::exception_ptr error, WriteResults results) {
         if (error) {
           written->set_exception(error);
         } else {
           written->set_value(std::move(results));
         }
       }});
  bool cancel_now;
  {
    std::lock_guard lock(mu);
    task.job = job;
    cancel_now = task.cancelled;
  }
  if (cancel_now) job->cancel();
  std::exception_ptr error;
  WriteResults results;
  try {
    results = done.get();
  } catch (...) {
    error = std::current_exception();
  }
  bool cancelled;
  {
    std::lock_guard lock(mu);
    task.job.reset();
    cancelled = task.cancelled;  // cancel() may have come after the job's end
  }
  if (error) std::rethrow_exception(error);
  if (cancelled) std::rethrow_exception(detail::save_cancelled(task.dir));
  return results;
}

void Checkpointer::Impl::run(LoadTask& task) {
  std::exception_ptr error;
  try {
    detail::translating_errors(task.dir.string(), [&] {
      std::unique_ptr<FileSystemReader> reader = SharedEngineReader::open(task.dir, engine);
      detail::load_with(*task.state_dict, *reader, task.planner, coordinator.get(),
                        task.dir.string());
    });
  } catch (...) {
    error = detail::as_error_ptr(std::current_exception(), task.dir.string());
  }
  finish(task, error);
}

void Checkpointer::Impl::finish(LoadTask& task, std::exception_ptr error) {
  if (task.handler) {
    poster->post(std::move(task.handler->handler), error);
  } else if (error) {
    task.done.set_exception(error);
  } else {
    task.done.set_value();
  }
}

// Marks the save cancelled and stops its job if it runs. Alone, a save still
// queued ends at once; on N ranks it runs its collectives (as refused), since
// the other ranks run them.
void Checkpointer::Impl::cancel(const std::shared_ptr<SaveTask>& task) {
  std::shared_ptr<detail::SaveJob> job;
  bool was_queued = false;
  {
    std::lock_guard lock(mu);
    task->cancelled = true;
    job = task->job;
    if (alone()) {
      for (auto it = queue.begin(); it != queue.end(); ++it) {
        auto* save = std::get_if<std::shared_ptr<SaveTask>>(&*it);
        if (save && *save == task) {
          queue.erase(it);
          was_queued = true;
          break;
        }
      }
    }
  }
  if (was_queued) task->completions->complete_committed(detail::save_cancelled(task->dir));
  if (job) job->cancel();
}

// Cancels what has not committed, then stops every thread; plain callbacks
// posted by then have run when it returns.
void Checkpointer::Impl::close() {
  std::deque<Operation> dropped;
  std::shared_ptr<detail::SaveJob> job;
  {
    std::lock_guard lock(mu);
    closing = true;
    for (auto& op : queue) {
      if (auto* save = std::get_if<std::shared_ptr<SaveTask>>(&op)) (*save)->cancelled = true;
    }
    if (alone()) dropped.swap(queue);
    if (running) {
      running->cancelled = true;
      job = running->job;
    }
  }
  for (auto& op : dropped) drop(op, "Checkpointer destroyed before the load ran");
  if (job) job->cancel();
  control.join();
  // A staging thread may still be inside a callback of a finished job: let
  // it return before what it reaches is destroyed.
  engine->staging_pool().join();
  poster->close();
}

// Threads that cannot be started, a ring that cannot be allocated: an Error.
Checkpointer::Checkpointer(CheckpointerOptions options) try : impl_(std::make_shared<Impl>()) {
  impl_->self = impl_;
  impl_->options = std::move(options);
  impl_->coordinator = std::make_unique<SingleProcess>();
  impl_->engine = std::make_shared<detail::IoEngine>(impl_->options.io);
} catch (...) {
  detail::rethrow_as_error("Checkpointer");
}

// A collective: every rank makes its engine, then they agree that all did,
// so that a rank that cannot (no memory for its ring, no io_uring) fails
// every rank's constructor, named, rather than their first save.
Checkpointer::Checkpointer(CheckpointerOptions options, Coordinator& coordinator) try
    : impl_(std::make_shared<Impl>()) {
  impl_->self = impl_;
  impl_->options = std::move(options);
  impl_->coordinator = coordinator.duplicate();
  Coordinator& c = *impl_->coordinator;
  detail::all_or_none(c, "Checkpointer", "engine status", [&] {
    impl_->engine = std::make_shared<detail::IoEngine>(impl_->options.io);
  });
} catch (...) {
  detail::rethrow_as_error(coordinator.world_size() == 1
                               ? std::string("Checkpointer")
                               : "Checkpointer on rank " + std::to_string(coordinator.rank()));
}

Checkpointer::~Checkpointer() { impl_->close(); }

std::shared_ptr<SaveTask> Checkpointer::Impl::submit(const StateDict& state_dict,
                                                      std::filesystem::path dir,
                                                      const AsyncSaveOptions& o,
                                                      bool wants_metadata) {
  auto task = std::make_shared<SaveTask>();
  task->wants_metadata = wants_metadata;
  task->completions = std::make_shared<SaveCompletions>(poster);
  task->state_dict = &state_dict;
  task->options = o;
  task->mode = o.mode.value_or(options.default_mode);
  task->dir = std::move(dir);
  std::weak_ptr<SaveTask> weak_task = task;
  task->completions->set_cancel([weak_impl = self, weak_task] {
    std::shared_ptr<Impl> impl = weak_impl.lock();  // none once ~Checkpointer has returned
    std::shared_ptr<SaveTask> t = weak_task.lock();
    if (impl && t) impl->cancel(t);
  });
  enqueue(task);
  return task;
}

SaveHandle Checkpointer::async_save(const StateDict& state_dict, std::filesystem::path dir,
                                    AsyncSaveOptions options) {
  const std::string where = dir.string();
  std::shared_ptr<SaveTask> task = detail::translating_errors(
      where, [&] { return impl_->submit(state_dict, std::move(dir), options); });
  // A snapshot save returns once staged, and throws what failed its planning
  // (on any rank); what fails its job arrives through the handle.
  if (task->mode == StagingMode::snapshot) {
    task->completions->staged().wait();
    bool started;
    {
      std::lock_guard lock(impl_->mu);
      started = task->job_started;
    }
    if (!started) detail::translating_errors(where, [&] { task->completions->committed().get(); });
  }
  return SaveHandle(task->completions);
}

void Checkpointer::start_save(const StateDict& state_dict, std::filesystem::path dir,
                              const AsyncSaveOptions& options, AnyCompletionHandler handler) {
  std::shared_ptr<SaveTask> task;
  const std::string where = dir.string();
  try {
    task = impl_->submit(state_dict, std::move(dir), options);
    if (task->mode == StagingMode::snapshot) task->completions->staged().wait();
  } catch (...) {
    impl_->poster->post(std::move(handler), detail::as_error_ptr(std::current_exception(), where));
    return;
  }
  task->completions->when_committed(std::move(handler));
}


Metadata Checkpointer::save(const StateDict& state_dict, const std::filesystem::path& dir,
                            AsyncSaveOptions options) {
  return detail::translating_errors(dir.string(), [&] {
    std::shared_ptr<SaveTask> task = impl_->submit(state_dict, dir, options, true);
    task->completions->committed().get();
    if (task->metadata_error) std::rethrow_exception(task->metadata_error);
    return task->metadata;
  });
}

void Checkpointer::load(StateDict& state_dict, const std::filesystem::path& dir,
                        LoadPlanner* planner) {
  auto task = std::make_shared<LoadTask>();
  task->state_dict = &state_dict;
  task->dir = dir;
  task->planner = planner;
  std::future<void> loaded = task->done.get_future();
  impl_->enqueue(task);
  loaded.get();
}

void Checkpointer::start_load(StateDict& state_dict, std::filesystem::path dir,
                              LoadPlanner* planner, AnyCompletionHandler handler) {
  auto task = std::make_shared<LoadTask>();
  task->state_dict = &state_dict;
  task->dir = std::move(dir);
  task->planner = planner;
  task->handler.emplace(std::move(handler));
  impl_->enqueue(task);
}

const CheckpointerOptions& Checkpointer::options() const noexcept { return impl_->options; }

IoReport Checkpointer::report() const { return impl_->engine->report(); }

PlanCacheReport Checkpointer::plan_cache() const {
  std::lock_guard lock(impl_->mu);
  return impl_->plans;
}

int Checkpointer::rank() const noexcept { return impl_->coordinator->rank(); }

int Checkpointer::world_size() const noexcept { return impl_->coordinator->world_size(); }

}  // namespace ringckpt
