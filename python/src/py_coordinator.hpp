// py_coordinator.hpp — a ringckpt::Coordinator whose collectives are a Python
// object's methods (ringckpt.distributed.TorchCoordinator over a gloo group).
//
// The object provides rank(), world_size(), gather(bytes) -> list[bytes] on
// rank 0 (None elsewhere), scatter(list[bytes] | None) -> bytes,
// broadcast(bytes) -> bytes and duplicate() -> another such object. ringckpt
// calls them on its control thread: each call takes the GIL for the call
// alone, and a Python exception raised in one becomes an Error naming this
// rank, which fails the save on every rank still reachable.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>
#include <string>
#include <vector>

#include "ringckpt/coordinator.hpp"

namespace ringckpt::python {

namespace py = pybind11;

class PythonCoordinator final : public Coordinator {
 public:
  // REQUIRES: the GIL is held.
  explicit PythonCoordinator(py::object collectives);
  // Takes the GIL to drop the object (unless the interpreter is gone).
  ~PythonCoordinator() override;

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  std::vector<std::string> gather(std::string payload) override;
  std::string scatter(std::vector<std::string> payloads) override;
  std::string broadcast(std::string payload) override;
  std::unique_ptr<Coordinator> duplicate() override;

 private:
  // Calls method `name` with the GIL taken; a Python exception is rethrown
  // as Error(kIo, "rank N", "<name> failed: ...").
  template <typename... Args>
  py::object call(const char* name, Args&&... args);

  py::object collectives_;  // touched only with the GIL held
  int rank_ = 0;
  int world_size_ = 1;
};

}  // namespace ringckpt::python
