#include "state_items.hpp"

#include <pybind11/stl.h>

#include <optional>
#include <set>
#include <utility>

#include "ringckpt/dtype.hpp"
#include "ringckpt/error.hpp"

namespace ringckpt::python {

namespace {

std::optional<DType> python_dtype(std::string_view name) {
  for (const char* known : kPythonDTypes) {
    if (name == known) return dtype_from_name(name);
  }
  return std::nullopt;
}

Error invalid(const std::string& where, std::string message) {
  return Error(ErrorCode::kInvalidArgument, where, std::move(message));
}

// The view of one tensor, every field checked. Throws Error naming fqn.
TensorView make_view(const std::string& fqn, std::uintptr_t data, std::string_view dtype_name,
                     Shape shape) {
  if (fqn.empty()) throw invalid("StateItems", "empty fqn");
  std::optional<DType> dtype = python_dtype(dtype_name);
  if (!dtype) {
    throw invalid(fqn, "unknown dtype '" + std::string(dtype_name) +
                           "' (one of F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)");
  }
  std::uint64_t count = 1;
  for (std::int64_t d : shape) {
    if (d < 0) throw invalid(fqn, "negative dimension " + std::to_string(d));
    if (__builtin_mul_overflow(count, static_cast<std::uint64_t>(d), &count)) {
      throw invalid(fqn, "shape too large");
    }
  }
  if (count > (std::uint64_t{1} << 62) / dtype_size(*dtype)) throw invalid(fqn, "shape too large");
  if (count > 0 && data == 0) throw invalid(fqn, "null data pointer for a non-empty tensor");
  return TensorView{reinterpret_cast<void*>(data), *dtype, std::move(shape)};
}

// A Python str as UTF-8. Throws Error naming `where` if it is not one.
std::string utf8(PyObject* object, const std::string& where, const char* what) {
  Py_ssize_t size = 0;
  const char* text = PyUnicode_Check(object) ? PyUnicode_AsUTF8AndSize(object, &size) : nullptr;
  if (text == nullptr) {
    PyErr_Clear();
    throw invalid(where, std::string(what) + " must be a str");
  }
  return std::string(text, static_cast<std::size_t>(size));
}

// RAII for a new reference from the C API.
struct OwnedRef {
  PyObject* ptr;
  explicit OwnedRef(PyObject* p) : ptr(p) {}
  ~OwnedRef() { Py_XDECREF(ptr); }
  OwnedRef(const OwnedRef&) = delete;
  OwnedRef& operator=(const OwnedRef&) = delete;
};

Shape shape_of(PyObject* object, const std::string& fqn) {
  OwnedRef seq(PySequence_Fast(object, "shape"));
  if (seq.ptr == nullptr) {
    PyErr_Clear();
    throw invalid(fqn, "shape must be a sequence of ints");
  }
  Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.ptr);
  PyObject** dims = PySequence_Fast_ITEMS(seq.ptr);
  Shape shape(static_cast<std::size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (!PyLong_Check(dims[i])) throw invalid(fqn, "shape must be a sequence of ints");
    long long d = PyLong_AsLongLong(dims[i]);
    if (d == -1 && PyErr_Occurred()) {
      PyErr_Clear();
      throw invalid(fqn, "dimension out of range");
    }
    shape[static_cast<std::size_t>(i)] = d;
  }
  return shape;
}

std::uintptr_t pointer_of(PyObject* object, const std::string& fqn) {
  if (!PyLong_Check(object)) throw invalid(fqn, "data_ptr must be an int");
  unsigned long long p = PyLong_AsUnsignedLongLong(object);
  if (PyErr_Occurred()) {
    PyErr_Clear();
    throw invalid(fqn, "data_ptr out of range");
  }
  return static_cast<std::uintptr_t>(p);
}

}  // namespace

void StateItems::add_tensor(std::string fqn, std::uintptr_t data, std::string_view dtype,
                            Shape shape) {
  TensorView view = make_view(fqn, data, dtype, std::move(shape));
  dict_.add(std::move(fqn), std::move(view));
}

void StateItems::add_tensors(py::handle items) {
  OwnedRef seq(PySequence_Fast(items.ptr(), "items"));
  if (seq.ptr == nullptr) {
    PyErr_Clear();
    throw invalid("add_tensors", "expects a sequence of (fqn, data_ptr, dtype, shape) tuples");
  }
  Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.ptr);
  PyObject** entries = PySequence_Fast_ITEMS(seq.ptr);
  std::vector<std::pair<std::string, TensorView>> views;
  views.reserve(static_cast<std::size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* entry = entries[i];
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 4) {
      throw invalid("add_tensors", "item " + std::to_string(i) +
                                       " is not a (fqn, data_ptr, dtype, shape) tuple");
    }
    std::string fqn = utf8(PyTuple_GET_ITEM(entry, 0), "add_tensors", "fqn");
    std::uintptr_t data = pointer_of(PyTuple_GET_ITEM(entry, 1), fqn);
    std::string dtype = utf8(PyTuple_GET_ITEM(entry, 2), fqn, "dtype");
    Shape shape = shape_of(PyTuple_GET_ITEM(entry, 3), fqn);
    views.emplace_back(fqn, make_view(fqn, data, dtype, std::move(shape)));
  }
  // Duplicates (with what is held, or within the call) are refused before
  // anything is added, so that the call is all or nothing.
  std::set<std::string_view> seen;
  for (const auto& [fqn, view] : views) {
    if (dict_.contains(fqn) || !seen.insert(fqn).second) {
      throw invalid(fqn, "key added to the state dict twice");
    }
  }
  for (auto& [fqn, view] : views) dict_.add(std::move(fqn), std::move(view));
}

void StateItems::add_shard(std::string fqn, std::uintptr_t data, std::string_view dtype,
                           Shape shape, Shape offsets, Shape global_shape) {
  TensorView view = make_view(fqn, data, dtype, std::move(shape));
  if (offsets.size() != view.shape.size() || global_shape.size() != view.shape.size()) {
    throw invalid(fqn, "a shard's offsets and global shape need its " +
                           std::to_string(view.shape.size()) + " dimensions");
  }
  StateValue* held = dict_.find(fqn);
  if (held == nullptr) {
    ShardedTensor st;
    st.dtype = view.dtype;
    st.global_shape = std::move(global_shape);
    st.shards.push_back({std::move(view), std::move(offsets)});
    dict_.add(std::move(fqn), std::move(st));
    return;
  }
  auto* st = std::get_if<ShardedTensor>(held);
  if (st == nullptr) throw invalid(fqn, "a shard of a key already added whole");
  if (st->dtype != view.dtype || st->global_shape != global_shape) {
    throw invalid(fqn, "shards of one tensor differ in dtype or global shape");
  }
  st->shards.push_back({std::move(view), std::move(offsets)});
}

void StateItems::add_bytes(std::string fqn, std::string_view value) {
  if (fqn.empty()) throw invalid("StateItems", "empty fqn");
  auto bytes = std::as_bytes(std::span<const char>(value.data(), value.size()));
  dict_.add(std::move(fqn), Bytes(bytes.begin(), bytes.end()));
}

py::bytes StateItems::bytes_of(std::string_view fqn) const {
  const StateValue* value = dict_.find(fqn);
  if (value == nullptr) throw Error(ErrorCode::kNotFound, std::string(fqn), "no such item");
  const Bytes* blob = std::get_if<Bytes>(value);
  if (blob == nullptr) throw invalid(std::string(fqn), "is a tensor, not bytes");
  return py::bytes(reinterpret_cast<const char*>(blob->data()), blob->size());
}

std::vector<std::string> StateItems::fqns() const {
  std::vector<std::string> out;
  out.reserve(dict_.size());
  for (const auto& entry : dict_) out.push_back(entry.fqn);
  return out;
}

void bind_state_items(py::module_& module) {
  py::tuple names(std::size(kPythonDTypes));
  for (std::size_t i = 0; i < std::size(kPythonDTypes); ++i) names[i] = py::str(kPythonDTypes[i]);
  module.attr("DTYPES") = names;

  py::class_<StateItems>(module, "StateItems",
                         "A state dict of raw tensor views (by data pointer) and byte blobs.")
      .def(py::init<>())
      .def("add_tensor", &StateItems::add_tensor, py::arg("fqn"), py::arg("data_ptr"),
           py::arg("dtype"), py::arg("shape"))
      .def("add_tensors", &StateItems::add_tensors, py::arg("items"))
      .def("add_shard", &StateItems::add_shard, py::arg("fqn"), py::arg("data_ptr"),
           py::arg("dtype"), py::arg("shape"), py::arg("offsets"), py::arg("global_shape"))
      .def("add_bytes",
           [](StateItems& self, std::string fqn, py::bytes value) {
             self.add_bytes(std::move(fqn), std::string_view(value));
           },
           py::arg("fqn"), py::arg("value"))
      .def("bytes_of", &StateItems::bytes_of, py::arg("fqn"))
      .def("__len__", &StateItems::size)
      .def("nbytes", &StateItems::nbytes)
      .def("fqns", &StateItems::fqns);
}

}  // namespace ringckpt::python
