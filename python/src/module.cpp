// module.cpp — ringckpt._core: the C++ library as the Python package's core.
#include <pybind11/pybind11.h>

#include "checkpointer_teardown.hpp"
#include "functions.hpp"
#include "py_checkpointer.hpp"
#include "python_errors.hpp"
#include "state_items.hpp"

PYBIND11_MODULE(_core, module) {
  namespace rp = ringckpt::python;
  module.doc() = "ringckpt's C++ core: state items, the Checkpointer, save, load, verify.";
  rp::init_errors(module);
  rp::bind_state_items(module);
  rp::bind_checkpointer(module);
  rp::bind_functions(module);
  rp::install_atexit_close(module);
}
