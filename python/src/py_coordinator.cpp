#include "py_coordinator.hpp"

#include <pybind11/stl.h>

#include <utility>

#include "ringckpt/error.hpp"

namespace ringckpt::python {

PythonCoordinator::PythonCoordinator(py::object collectives)
    : collectives_(std::move(collectives)) {
  rank_ = collectives_.attr("rank")().cast<int>();
  world_size_ = collectives_.attr("world_size")().cast<int>();
  if (world_size_ < 1 || rank_ < 0 || rank_ >= world_size_) {
    throw Error(ErrorCode::kInvalidArgument, "coordinator",
                "rank " + std::to_string(rank_) + " of world size " +
                    std::to_string(world_size_) + " is not a rank of it");
  }
}

PythonCoordinator::~PythonCoordinator() {
  if (!Py_IsInitialized()) {
    collectives_.release();  // the interpreter is gone: nothing to drop it into
    return;
  }
  py::gil_scoped_acquire gil;
  collectives_ = py::object();
}

template <typename... Args>
py::object PythonCoordinator::call(const char* name, Args&&... args) {
  py::gil_scoped_acquire gil;
  try {
    return collectives_.attr(name)(std::forward<Args>(args)...);
  } catch (py::error_already_set& e) {
    throw Error(ErrorCode::kIo, "rank " + std::to_string(rank_),
                std::string(name) + " failed: " + e.what());
  }
}

std::vector<std::string> PythonCoordinator::gather(std::string payload) {
  py::gil_scoped_acquire gil;
  py::object got = call("gather", py::bytes(payload));
  std::vector<std::string> out;
  if (rank_ != 0) return out;
  for (py::handle item : got) out.push_back(item.cast<std::string>());
  if (out.size() != static_cast<std::size_t>(world_size_)) {
    throw Error(ErrorCode::kIo, "rank 0",
                "gather returned " + std::to_string(out.size()) + " payloads for " +
                    std::to_string(world_size_) + " ranks");
  }
  return out;
}

std::string PythonCoordinator::scatter(std::vector<std::string> payloads) {
  py::gil_scoped_acquire gil;
  py::object arg = py::none();
  if (rank_ == 0) {
    py::list list;
    for (const auto& p : payloads) list.append(py::bytes(p));
    arg = std::move(list);
  }
  return call("scatter", arg).cast<std::string>();
}

std::string PythonCoordinator::broadcast(std::string payload) {
  py::gil_scoped_acquire gil;
  return call("broadcast", py::bytes(payload)).cast<std::string>();
}

std::unique_ptr<Coordinator> PythonCoordinator::duplicate() {
  py::gil_scoped_acquire gil;
  return std::make_unique<PythonCoordinator>(call("duplicate"));
}

}  // namespace ringckpt::python
