"""One-shot save and load, as torch.save / torch.load and DCP's save / load."""

import functools
import os

from . import _core, state_dict as structure_map, values
from .errors import Error
from .items import STRUCTURE_KEY, LoadTarget, SaveItems, allocate, read_structure
from .items import element_size, to_torch_dtype

__all__ = ["save", "load", "load_state_dict", "verify", "inspect"]


def save(state_dict, path, *, overwrite: bool = False, allow_pickle: bool = False,
         **io) -> None:
    """Saves `state_dict` (nested dicts and lists of tensors and plain values)
    into the directory `path` and returns once it is durable and visible.
    `io`: ring_bytes, extent_size, queue_depth, staging_threads, direct_io,
    register_buffers, max_file_bytes. Non-tensor values other than None, bool,
    int, float, str, bytes and tuples, lists and dicts of them need
    allow_pickle=True (here and on load)."""
    save_items = SaveItems(state_dict, allow_pickle)
    _core.save(save_items.items, os.fspath(path), overwrite=overwrite, **io)


def load(state_dict, path, *, allow_pickle: bool = False, **io) -> None:
    """Fills every tensor of `state_dict` in place (same shapes as saved; a
    floating dtype other than the saved one is cast) and puts the loaded non-tensor values into its containers, so that
    model.load_state_dict(sd["model"]) / opt.load_state_dict(sd["optim"]) work
    after it. Every extent is verified before its bytes are used; a key the
    checkpoint lacks fails the load before anything is read."""
    path = os.fspath(path)
    core_load = functools.partial(_core.load, **io)
    target = LoadTarget(state_dict, path, read_structure(core_load, path), allow_pickle)
    target.run(core_load, path)


def load_state_dict(path, *, allow_pickle: bool = False, **io):
    """The whole checkpoint as new tensors (allocated from its metadata, filled
    as they load) in the nesting it was saved with. A checkpoint written by the
    C++ API comes back as a flat {name: tensor or bytes} dict."""
    path = os.fspath(path)
    core_load = functools.partial(_core.load, **io)
    metadata = _core.read_metadata(path)
    structure = (read_structure(core_load, path) if STRUCTURE_KEY in metadata["entries"]
                 else None)
    items, leaves = allocate(structure, metadata, path)
    del metadata  # its entries can be large: not kept while the data loads
    core_load(items, path)
    for fqn, leaf in leaves.items():
        if leaf is None:
            raw = items.bytes_of(fqn)
            leaves[fqn] = (values.decode(raw, key=fqn, allow_pickle=allow_pickle)
                           if structure is not None else raw)
    return structure_map.unflatten(leaves, structure) if structure is not None else leaves


def verify(path, **io) -> dict:
    """Re-reads the checkpoint and checks metadata.json, every data file's header
    and the XXH3 of every extent. Never raises for damage: returns {"ok",
    "files", "extents", "bytes", "faults": [{"file", "extent", "offset",
    "length", "message"}], "notes"}. `io` as for save (a smaller ring_bytes
    reads through less memory)."""
    return _core.verify(os.fspath(path), **io)


def inspect(path) -> dict:
    """What a checkpoint holds, without reading tensor data: {"entries": {fqn:
    {"path": typed path, "kind": "tensor", "dtype": torch dtype (its
    safetensors name where torch has none), "shape": tuple, "nbytes"} or
    {"path", "kind": "value", "nbytes"}}, "files",
    "total_bytes"}. `path` is the key sequence that reaches the value
    (("optim", "state", 0, "exp_avg")); the structure map itself is not listed."""
    path = os.fspath(path)
    metadata = _core.read_metadata(path)
    structure = read_structure(_core.load, path) if STRUCTURE_KEY in metadata["entries"] \
        else None
    paths = (structure_map.leaf_paths(structure) if structure is not None
             else {fqn: (fqn,) for fqn in metadata["entries"]})
    entries = {}
    for fqn, typed_path in paths.items():
        entry = metadata["entries"].get(fqn)
        if entry is None:
            raise Error("corrupt", f"{path}: {STRUCTURE_KEY}",
                        f"names {fqn}, which metadata.json does not hold")
        if entry["kind"] == "tensor":
            shape = tuple(entry["shape"])
            numel = 1
            for size in shape:
                numel *= size
            try:
                dtype = to_torch_dtype(entry["dtype"], fqn)
                nbytes = numel * element_size(dtype)
            except Error:  # a dtype torch 1.13 lacks (U16, F8_E4M3, ...): its name
                dtype, nbytes = entry["dtype"], None
            entries[fqn] = {"path": typed_path, "kind": "tensor", "dtype": dtype,
                            "shape": shape, "nbytes": nbytes}
        else:
            entries[fqn] = {"path": typed_path, "kind": "value", "nbytes": entry["length"]}
    return {"entries": entries, "files": metadata["files"],
            "total_bytes": metadata["total_bytes"]}
