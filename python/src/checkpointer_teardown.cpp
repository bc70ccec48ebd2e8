#include "checkpointer_teardown.hpp"

#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_set>

#include "gil_release.hpp"
#include "py_checkpointer.hpp"

namespace ringckpt::python {

namespace {

// Depth of CallbackScopes on this thread.
thread_local int t_callback_depth = 0;

// Detached destructions not yet finished; guarded by g_detached_mutex.
std::mutex g_detached_mutex;
std::condition_variable g_detached_done;
int g_detached_pending = 0;

// The open PyCheckpointers. Guarded by g_registry_mutex; a pointer is removed
// (under the GIL) before its object is destroyed, so every pointer read under
// the GIL is valid.
std::mutex g_registry_mutex;
std::unordered_set<PyCheckpointer*>& registry() {
  // Never destroyed: the atexit function may run after static destructors
  // have begun in an embedding program.
  static auto* set = new std::unordered_set<PyCheckpointer*>();
  return *set;
}

bool holds_gil() noexcept { return Py_IsInitialized() && PyGILState_Check(); }

}  // namespace

CallbackScope::CallbackScope() noexcept { ++t_callback_depth; }
CallbackScope::~CallbackScope() { --t_callback_depth; }

void destroy_checkpointer(Checkpointer* checkpointer) noexcept {
  if (checkpointer == nullptr) return;
  if (t_callback_depth > 0) {
    {
      std::lock_guard lock(g_detached_mutex);
      ++g_detached_pending;
    }
    try {
      std::thread([checkpointer] {
        delete checkpointer;
        std::lock_guard lock(g_detached_mutex);
        --g_detached_pending;
        g_detached_done.notify_all();
      }).detach();
    } catch (...) {
      // No thread: destroying it here would wait for this very thread, so it
      // is leaked (its saves still finish or fail on their own threads).
      std::fputs("ringckpt: could not start a thread to close a Checkpointer; leaked\n", stderr);
      std::lock_guard lock(g_detached_mutex);
      --g_detached_pending;
    }
    return;
  }
  if (holds_gil()) {
    GilRelease release;
    delete checkpointer;
  } else {
    delete checkpointer;
  }
}

void register_checkpointer(PyCheckpointer* checkpointer) {
  std::lock_guard lock(g_registry_mutex);
  registry().insert(checkpointer);
}

void unregister_checkpointer(PyCheckpointer* checkpointer) noexcept {
  std::lock_guard lock(g_registry_mutex);
  registry().erase(checkpointer);
}

void close_all_checkpointers() {
  for (;;) {
    std::shared_ptr<Checkpointer> open;
    {
      std::lock_guard lock(g_registry_mutex);
      if (registry().empty()) break;
      auto it = registry().begin();
      open = (*it)->take();
      registry().erase(it);
    }
    // The last reference (unless a blocking save or load on another thread
    // still holds one): destroy_checkpointer releases the GIL.
    open.reset();
  }
  GilRelease release;
  std::unique_lock lock(g_detached_mutex);
  g_detached_done.wait(lock, [] { return g_detached_pending == 0; });
}

void forget_all_checkpointers() noexcept {
  std::lock_guard lock(g_registry_mutex);
  for (PyCheckpointer* open : registry()) {
    // Leaked on purpose: its threads are not in this process.
    (void)new std::shared_ptr<Checkpointer>(open->take());
  }
  registry().clear();
}

void install_atexit_close(py::module_& module) {
  py::cpp_function close_all([] { close_all_checkpointers(); }, py::name("_close_all"));
  module.attr("_close_all") = close_all;
  py::module_::import("atexit").attr("register")(close_all);
  py::cpp_function forget_all([] { forget_all_checkpointers(); }, py::name("_forget_all"));
  module.attr("_forget_all") = forget_all;
  py::module_::import("os").attr("register_at_fork")(py::arg("after_in_child") = forget_all);
}

}  // namespace ringckpt::python
