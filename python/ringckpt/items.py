"""Between torch state dicts and the extension's StateItems.

A save turns a nested state dict into one flat StateItems: each tensor becomes a
view of its memory (fqn, data pointer, dtype, shape), each other value a byte
item in values.py's tagged encoding, and the nesting one more byte item, the
structure map, under STRUCTURE_KEY. A load does the reverse, matching the
caller's leaves to the checkpoint's by their typed paths (("optim", "state", 0,
"exp_avg")), not by their dotted names, so that keys with dots, integer keys and
would-be collisions come back exactly.
"""

import threading
import warnings

import torch

from . import _core, state_dict as structure_map, values
from .errors import Error, as_error
from .shard import local_shards

__all__ = ["STRUCTURE_KEY", "SaveItems", "LoadTarget", "read_structure", "allocate",
           "to_torch_dtype", "element_size"]

# The byte item holding the structure map. A caller's key cannot produce it: a
# dotted name never contains "/" unless a key does, and flatten refuses none, so
# the name is checked against the state dict instead.
STRUCTURE_KEY = "__ringckpt__/structure"

_RINGCKPT_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
    torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32",
    torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}
_TORCH_DTYPES = {name: dtype for dtype, name in _RINGCKPT_DTYPES.items()}

_noted_copy = threading.Event()  # the extra-copy note is given once per process


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def to_torch_dtype(name: str, where: str) -> torch.dtype:
    try:
        return _TORCH_DTYPES[name]
    except KeyError:
        raise Error("mismatch", where, f"dtype {name} has no torch equivalent") from None


def _note_extra_copy(fqn: str, doing: str) -> None:
    if not _noted_copy.is_set():
        _noted_copy.set()
        warnings.warn(f"ringckpt: {fqn} is not contiguous: {doing} it costs an extra copy "
                      "(noted once)", RuntimeWarning, stacklevel=5)


def _checked_tensor(fqn: str, tensor: torch.Tensor) -> str:
    """The ringckpt dtype name of `tensor`; refuses what ringckpt cannot hold."""
    if not tensor.is_cpu:
        raise Error("invalid_argument", fqn,
                    f"is a {tensor.device.type} tensor: GPU staging is not there yet; "
                    "pass CPU tensors (tensor.cpu())")
    if tensor.layout is not torch.strided:
        raise Error("invalid_argument", fqn, f"has layout {tensor.layout}: only dense "
                    "(strided) tensors are saved")
    name = _RINGCKPT_DTYPES.get(tensor.dtype)
    if name is None:
        raise Error("invalid_argument", fqn, f"has dtype {tensor.dtype}, which ringckpt "
                    "does not store (supported: " +
                    ", ".join(str(d) for d in _RINGCKPT_DTYPES) + ")")
    return name


class SaveItems:
    """A state dict as the extension saves it. `items` is the StateItems;
    `sources` holds every tensor whose memory `items` points into (contiguous
    copies included): keep it alive until the save is staged."""

    def __init__(self, state_dict, allow_pickle: bool):
        flat, structure = structure_map.flatten(state_dict)
        if STRUCTURE_KEY in flat:
            raise Error("invalid_argument", STRUCTURE_KEY, "is reserved for ringckpt's "
                        "structure map")
        self.items = _core.StateItems()
        self.sources = []
        views = []
        for fqn, leaf in flat.items():
            shards = local_shards(leaf)  # before the tensor test: a ShardedTensor is one
            if shards is not None:
                for shard in shards:
                    local, dtype = self._source(fqn, shard.local)
                    self.items.add_shard(fqn, local.data_ptr(), dtype, tuple(local.shape),
                                         shard.offsets, shard.global_shape)
            elif isinstance(leaf, torch.Tensor):
                leaf, dtype = self._source(fqn, leaf)
                views.append((fqn, leaf.data_ptr(), dtype, tuple(leaf.shape)))
            else:
                self.items.add_bytes(fqn, values.encode(leaf, key=fqn,
                                                        allow_pickle=allow_pickle))
        self.items.add_tensors(views)
        self.items.add_bytes(STRUCTURE_KEY, _structure_bytes(structure))

    def _source(self, fqn, tensor):
        """(what ringckpt reads for `tensor`: itself or a contiguous copy, kept
        in `sources`; its ringckpt dtype name)."""
        dtype = _checked_tensor(fqn, tensor)
        if not tensor.is_contiguous():
            _note_extra_copy(fqn, "saving")
            tensor = tensor.contiguous()
        self.sources.append(tensor)
        return tensor, dtype


# The last structure map encoded and its bytes: a training loop saves the same
# nesting every time, and comparing the nodes (C loops over lists) costs a
# fraction of encoding them again. Guarded by _last_lock.
_last_lock = threading.Lock()
_last_structure = (None, None)


def _structure_bytes(structure) -> bytes:
    global _last_structure
    with _last_lock:
        cached_structure, cached_bytes = _last_structure
    if structure == cached_structure:
        return cached_bytes
    encoded = structure_map.structure_to_bytes(structure, check=False)
    with _last_lock:
        _last_structure = (structure, encoded)
    return encoded


def read_structure(load, path: str):
    """The structure map stored in the checkpoint at `path`, read through `load`
    (_core.load or a _core.Checkpointer's load); None for a checkpoint written
    without one (by the C++ API)."""
    items = _core.StateItems()
    items.add_bytes(STRUCTURE_KEY, b"")
    try:
        load(items, path)
    except Error as e:
        if e.code == "not_found" and STRUCTURE_KEY in str(e):
            return None
        raise
    return structure_map.structure_from_bytes(items.bytes_of(STRUCTURE_KEY),
                                              f"{path}: {STRUCTURE_KEY}")


class LoadTarget:
    """What one load fills: the caller's tensors in place (through contiguous
    stand-ins where a destination is not contiguous) and its non-tensor values.

    A failed load leaves the caller's state dict as it was, as far as anything
    can be known before the tensors' bytes are read: every caller leaf is
    matched to the checkpoint's leaf at the same typed path, every destination
    checked, and every value loaded and decoded (the pickle policy included)
    before a tensor is touched. (A tensor extent found corrupt mid-load fails
    it with tensors already filled; their values are then unspecified.)"""

    def __init__(self, state_dict, path: str, stored_structure, allow_pickle: bool):
        self._state_dict = state_dict
        self._allow_pickle = allow_pickle
        self._raw_values = stored_structure is None  # C++ checkpoints hold raw bytes
        flat, self._structure = structure_map.flatten(state_dict)
        stored_fqn = _stored_fqns(stored_structure, self._structure)
        self.tensor_items = _core.StateItems()
        self.value_items = _core.StateItems()
        self._values = {}        # caller fqn -> checkpoint fqn, for non-tensor leaves
        self._copy_back = []     # (destination, contiguous stand-in)
        # Every destination, referenced until the load ends: the GIL is released
        # while ringckpt writes through their data pointers.
        self._destinations = []
        views = []
        for fqn, leaf in flat.items():
            source = stored_fqn(fqn)
            if source is None:
                raise Error("not_found", fqn, f"is not in the checkpoint {path}")
            shards = local_shards(leaf)
            if shards is not None:
                for shard in shards:
                    local = self._destination(fqn, shard.local)
                    self.tensor_items.add_shard(source, local.data_ptr(),
                                                _checked_tensor(fqn, local),
                                                tuple(local.shape), shard.offsets,
                                                shard.global_shape)
            elif isinstance(leaf, torch.Tensor):
                dtype = _checked_tensor(fqn, leaf)
                leaf = self._destination(fqn, leaf)
                views.append((source, leaf.data_ptr(), dtype, tuple(leaf.shape)))
            else:
                self.value_items.add_bytes(source, b"")
                self._values[fqn] = source
        self.tensor_items.add_tensors(views)

    def _destination(self, fqn, tensor):
        """What ringckpt writes into for `tensor`: itself, or a contiguous
        stand-in copied back after the load."""
        self._destinations.append(tensor)
        if tensor.is_contiguous():
            return tensor
        if torch._debug_has_internal_overlap(tensor) == 1:
            raise Error("invalid_argument", fqn, "is a view whose elements overlap "
                        "(an expanded tensor): a load cannot fill it")
        _note_extra_copy(fqn, "loading into")
        stand_in = torch.empty(tensor.shape, dtype=tensor.dtype)
        self._copy_back.append((tensor, stand_in))
        return stand_in

    def run(self, load, path: str, *, collective: bool = False) -> None:
        """Loads through `load` (_core.load or a _core.Checkpointer's load): the
        values first, decoded before any tensor is read, then the tensors;
        then copies stand-ins into their destinations and puts the values into
        the caller's containers. `collective`: every rank runs this load, so
        each makes both calls whatever its own state dict holds (each call is
        a collective of all ranks)."""
        loaded = {}
        if self._values or collective:
            load(self.value_items, path)
            try:
                for fqn, source in self._values.items():
                    raw = self.value_items.bytes_of(source)
                    loaded[fqn] = raw if self._raw_values else values.decode(
                        raw, key=fqn, allow_pickle=self._allow_pickle)
            except Exception as e:
                if collective:  # the other ranks go on to the tensors' load
                    load(_core.StateItems(), path, refusal=as_error(e))
                raise
        if len(self.tensor_items) or collective:
            load(self.tensor_items, path)
        with torch.no_grad():
            for destination, stand_in in self._copy_back:
                destination.copy_(stand_in)
        structure_map.fill_in_place(self._state_dict, loaded, self._structure)


def _stored_fqns(stored_structure, caller_structure):
    """caller fqn -> the checkpoint's fqn of the leaf at the same typed path, or None."""
    if stored_structure is None:  # written by the C++ API: names are the only key
        return lambda fqn: fqn
    by_path = {path: fqn for fqn, path in structure_map.leaf_paths(stored_structure).items()}
    caller_paths = structure_map.leaf_paths(caller_structure)
    return lambda fqn: by_path.get(caller_paths[fqn])


def allocate(structure, metadata, path: str):
    """New tensors for every leaf of a checkpoint (allocated, not yet touched)
    and StateItems that load into them: (items, {fqn: tensor or None})."""
    entries = metadata["entries"]
    fqns = (structure_map.leaf_paths(structure).keys() if structure is not None
            else [fqn for fqn in entries if fqn != STRUCTURE_KEY])
    items = _core.StateItems()
    leaves = {}
    views = []
    for fqn in fqns:
        entry = entries.get(fqn)
        if entry is None:
            raise Error("corrupt", f"{path}: {STRUCTURE_KEY}",
                        f"names {fqn}, which metadata.json does not hold")
        if entry["kind"] == "tensor":
            tensor = torch.empty(entry["shape"], dtype=to_torch_dtype(entry["dtype"], fqn))
            views.append((fqn, tensor.data_ptr(), entry["dtype"], tuple(tensor.shape)))
            leaves[fqn] = tensor
        else:
            items.add_bytes(fqn, b"")
            leaves[fqn] = None
    items.add_tensors(views)
    return items, leaves
