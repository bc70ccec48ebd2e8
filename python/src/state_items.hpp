// state_items.hpp — the state dict a Python caller hands to save and load:
// views of memory Python owns (tensors, by data pointer) and blobs held here.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ringckpt/tensor.hpp"
#include "shape_caster.hpp"

namespace ringckpt::python {

namespace py = pybind11;

// The ten element types Python callers name (torch and numpy have them all).
inline constexpr const char* kPythonDTypes[] = {"F64", "F32", "F16", "BF16", "I64",
                                                "I32", "I16", "I8",  "U8",   "BOOL"};

// Owns a ringckpt::StateDict. A tensor is a raw view: the memory at data_ptr
// must stay valid (and unmutated, until staged) while a save or load uses it;
// the Python layer above keeps the tensors alive. Blobs are held by value and
// replaced by a load.
//
// Thread safety: none of its own. Every method runs with the GIL held; a save
// or load reads or writes the state dict with the GIL released, so the caller
// must not add items while one runs.
class StateItems {
 public:
  // Each throws Error(kInvalidArgument) naming the fqn (empty, duplicate, bad
  // dtype name, negative dimension, null data for a non-empty tensor).
  void add_tensor(std::string fqn, std::uintptr_t data, std::string_view dtype, Shape shape);
  // Many (fqn, data_ptr, dtype, shape) tuples at once, read with the C API
  // (no per-item pybind11 casts): 1,000 tensors cost well under a millisecond.
  // All or nothing: on an error no item of the call has been added.
  void add_tensors(py::handle items);
  void add_bytes(std::string fqn, std::string_view value);
  // This rank's shard of tensor fqn: `shape` elements at `offsets` of a
  // tensor of `global_shape`. A tensor may get several shards (all of one
  // dtype and global shape); fqn must not also be a whole tensor or bytes.
  void add_shard(std::string fqn, std::uintptr_t data, std::string_view dtype, Shape shape,
                 Shape offsets, Shape global_shape);

  // The blob now held under fqn (after a load, the loaded one).
  // Throws Error(kNotFound) naming fqn if there is none, Error(kInvalidArgument)
  // if fqn is a tensor.
  py::bytes bytes_of(std::string_view fqn) const;

  std::size_t size() const noexcept { return dict_.size(); }
  std::uint64_t nbytes() const noexcept { return dict_.nbytes(); }
  std::vector<std::string> fqns() const;

  StateDict& state_dict() noexcept { return dict_; }
  const StateDict& state_dict() const noexcept { return dict_; }

 private:
  StateDict dict_;
};

void bind_state_items(py::module_& module);

}  // namespace ringckpt::python
