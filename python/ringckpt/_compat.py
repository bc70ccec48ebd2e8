"""The one place where ringckpt meets differences between torch versions.

torch 1.13 (Debian 12's) keeps DCP at torch.distributed._shard.checkpoint, and
on Python 3.11 importing anything under torch.distributed._shard fails: its
ShardedTensorMetadata gives a dataclass field an unhashable default instance,
which Python 3.11 refuses as mutable (fixed upstream by pytorch PR 91795,
after 1.13.1). import_dcp() works around it the way that fix does, for the
duration of the import only.
"""

import copy
import dataclasses
import functools
import importlib
import importlib.util
import sys
import threading
import warnings

__all__ = ["import_dcp", "import_sharded_tensor", "dcp_write_result", "dcp_storage_meta",
           "dcp_item_types", "dcp_nesting_paths", "dcp_load_no_dist", "sharded_tensor_class",
           "dtensor_class", "dtensor_part"]

_CURRENT_DCP = "torch.distributed.checkpoint"
_LEGACY_DCP = "torch.distributed._shard.checkpoint"
_import_lock = threading.Lock()


def _field_with_default_factory(original):
    """dataclasses.field, except that an unhashable default becomes a
    default_factory making a copy of it: what PR 91795 wrote by hand."""
    def field(*, default=dataclasses.MISSING, **kwargs):
        if default is not dataclasses.MISSING and type(default).__hash__ is None:
            return original(default_factory=functools.partial(copy.deepcopy, default),
                            **kwargs)
        return original(default=default, **kwargs)
    return field


def _import_patched(name: str):
    with _import_lock:
        original = dataclasses.field
        dataclasses.field = _field_with_default_factory(original)
        try:
            return importlib.import_module(name)
        finally:
            dataclasses.field = original


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def import_dcp():
    """torch's distributed checkpointing package: torch.distributed.checkpoint
    where it exists, else 1.13's torch.distributed._shard.checkpoint."""
    if _has_module(_CURRENT_DCP):
        return importlib.import_module(_CURRENT_DCP)
    return _import_patched(_LEGACY_DCP)


def import_sharded_tensor():
    """torch.distributed._shard.sharded_tensor (ShardedTensor, Shard,
    init_from_local_shards), imported with the same work-around."""
    return _import_patched("torch.distributed._shard.sharded_tensor")


def _dcp_module(name: str):
    """DCP's submodule `name` (storage, metadata, planner), after import_dcp()."""
    return importlib.import_module(import_dcp().__name__ + "." + name)


def dcp_write_result():
    """DCP's WriteResult: storage.WriteResult in 1.13 and 2.x alike."""
    return _dcp_module("storage").WriteResult


def dcp_storage_meta():
    """DCP's StorageMeta (2.4+: what a writer's storage_meta() returns and
    Metadata.storage_meta holds), or None where DCP has none (1.13)."""
    return getattr(_dcp_module("metadata"), "StorageMeta", None)


def dcp_item_types():
    """(WriteItemType, LoadItemType): planner.py's enums in 1.13 and 2.x."""
    planner = _dcp_module("planner")
    return planner.WriteItemType, planner.LoadItemType


def sharded_tensor_class():
    """torch's ShardedTensor class if the program imported it, else None: a
    value cannot be one otherwise (and importing it here could fail)."""
    module = sys.modules.get("torch.distributed._shard.sharded_tensor")
    return getattr(module, "ShardedTensor", None) if module is not None else None


# Where DTensor lives: torch.distributed.tensor from about 2.5, before that
# torch.distributed._tensor; torch 1.13 has neither.
_DTENSOR_MODULES = ("torch.distributed.tensor", "torch.distributed._tensor")


def dtensor_class():
    """torch's DTensor class if the program imported it, else None."""
    for name in _DTENSOR_MODULES:
        cls = getattr(sys.modules.get(name), "DTensor", None)
        if cls is not None:
            return cls
    return None


def dtensor_part(value):
    """(local tensor, its offsets in the global tensor, the global shape) of a
    DTensor, from torch's own placement arithmetic. Ranks holding the same
    part (a replicated mesh dimension) give equal offsets, and the global plan
    writes it once. (Not exercised here: Debian's torch 1.13 has no DTensor.)"""
    for name in _DTENSOR_MODULES:
        utils = sys.modules.get(name + "._utils")
        if utils is None:
            try:
                utils = importlib.import_module(name + "._utils")
            except ImportError:
                continue
        _, offsets = utils.compute_local_shape_and_global_offset(
            value.shape, value.device_mesh, value.placements)
        return value.to_local(), tuple(offsets), tuple(value.shape)
    raise RuntimeError("ringckpt: a DTensor, but no torch module computes its placement")


def dcp_nesting_paths(metadata):
    """{fqn: key path} of a DCP checkpoint's Metadata: where each flattened
    entry sat in the nested state dict (a str key is a dict's, an int a list
    index). torch 2.x's default planner flattens nested dicts and records the
    paths in planner_data; torch 1.13 does not flatten (planner_data is None):
    then None, and every fqn is a top-level key."""
    paths = getattr(metadata, "planner_data", None)
    if not isinstance(paths, dict):
        return None
    if not all(isinstance(path, tuple) and path for path in paths.values()):
        return None  # a custom planner's own data, not paths
    return paths


def dcp_load_no_dist(dcp, state_dict, storage_reader) -> None:
    """DCP's load of `state_dict` from `storage_reader` in this process alone,
    with no process group: 1.13's load_state_dict(no_dist=True); in 2.x the
    same call still exists, deprecated (its warning is silenced here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        dcp.load_state_dict(state_dict, storage_reader, no_dist=True)
