#include "functions.hpp"

#include <string>

#include "gil_release.hpp"
#include "io_options_args.hpp"
#include "metadata_dict.hpp"
#include "ringckpt/checkpoint.hpp"
#include "ringckpt/verify.hpp"
#include "state_items.hpp"

namespace ringckpt::python {

void bind_functions(py::module_& module) {
  module.def(
      "save",
      [](StateItems& items, const std::string& dir, bool overwrite, const py::kwargs& io) {
        SaveOptions options;
        options.io = io_options_from(io);
        options.overwrite = overwrite;
        GilRelease release;
        ringckpt::save(items.state_dict(), dir, options);
      },
      py::arg("items"), py::arg("dir"), py::kw_only(), py::arg("overwrite") = false,
      "save(items, dir, *, overwrite=False, **io_options): write a checkpoint; blocks.");

  module.def(
      "load",
      [](StateItems& items, const std::string& dir, const py::kwargs& io) {
        LoadOptions options;
        options.io = io_options_from(io);
        GilRelease release;
        ringckpt::load(items.state_dict(), dir, options);
      },
      py::arg("items"), py::arg("dir"),
      "load(items, dir, **io_options): fill every item from the checkpoint, verified.");

  module.def(
      "read_metadata",
      [](const std::string& dir) {
        Metadata metadata;
        {
          GilRelease release;
          metadata = ringckpt::read_metadata(dir);
        }
        return metadata_dict(metadata);
      },
      py::arg("dir"), "read_metadata(dir) -> dict: metadata.json of a checkpoint, checked.");

  module.def(
      "verify",
      [](const std::string& dir, const py::kwargs& io) {
        const IoOptions options = io_options_from(io);
        VerifyReport report;
        {
          GilRelease release;
          report = ringckpt::verify(dir, options);
        }
        return verify_report_dict(report);
      },
      py::arg("dir"),
      "verify(dir, **io_options) -> dict: every extent of every file re-read and checked.");
}

}  // namespace ringckpt::python
