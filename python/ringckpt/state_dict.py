"""Flattening of nested torch state dicts into {fqn: leaf}, and back.

flatten() walks mappings always, and lists/tuples only when they hold a tensor
somewhere inside; every other object is one leaf. Leaves are named as PyTorch
DCP names them ("model.layers.0.weight", "optim.state.0.exp_avg").

The structure is a JSON document with no nesting beyond a fixed depth:

    {"format": "ringckpt.structure", "version": 1, "root": "dict" | "odict",
     "nodes": [[parent, key, kind], [parent, key, "leaf", fqn], ...]}

`nodes` lists every container and leaf below the root in pre-order (so each
container's children appear in their order). `parent` is the index in `nodes`
of the enclosing container, -1 for the root; `key` is the str or int key in a
mapping, or the position in a list/tuple; kind is "dict", "odict", "list",
"tuple" or "leaf". A leaf's typed path is the keys from the root down to it.
"""

import collections
import json
from collections.abc import Mapping, MutableMapping

import torch

from .errors import Error

__all__ = ["flatten", "unflatten", "fill_in_place", "structure_to_bytes",
           "structure_from_bytes", "leaf_paths", "MAX_DEPTH", "MAX_STRUCTURE_BYTES"]

FORMAT = "ringckpt.structure"
VERSION = 1
# Containers nest at most this deep below the root; also stops cycles.
MAX_DEPTH = 1000
MAX_STRUCTURE_BYTES = 256 << 20

_MAPPING_KINDS = ("dict", "odict")
_SEQUENCE_KINDS = ("list", "tuple")
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_WHERE = "structure"


def _contains_tensor(value) -> bool:
    """Whether a tensor is inside `value` through lists, tuples and mappings."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, torch.Tensor):
            return True
        if depth > MAX_DEPTH:
            raise Error("invalid_argument", "",
                        f"a list nests deeper than {MAX_DEPTH} levels (or contains itself)")
        if isinstance(item, Mapping):
            stack.extend((child, depth + 1) for child in item.values())
        elif type(item) is list or type(item) is tuple:
            stack.extend((child, depth + 1) for child in item)
    return False


def _kind(value) -> str:
    if isinstance(value, torch.Tensor):
        return "leaf"
    if isinstance(value, collections.OrderedDict):
        return "odict"
    if isinstance(value, Mapping):
        return "dict"
    if (type(value) is list or type(value) is tuple) and _contains_tensor(value):
        return type(value).__name__
    return "leaf"


def _unique_fqn(names, used) -> str:
    """".".join(names), or when that is empty or taken, the first free "<it>#<n>"."""
    base = ".".join(names)
    if base and base not in used:
        return base
    suffix = 1
    while f"{base}#{suffix}" in used:
        suffix += 1
    return f"{base}#{suffix}"


def flatten(state_dict):
    """(flat, structure). flat: insertion-ordered {fqn: leaf}, tensors being the
    very objects of `state_dict`. structure: JSON-serializable, restores the
    nesting exactly (see the module doc). Mapping types other than OrderedDict
    come back as dict. Raises Error("invalid_argument", path, ...) for a key
    that is not str or int (bool refused), and for nesting over MAX_DEPTH."""
    root = _kind(state_dict)
    if root not in _MAPPING_KINDS:
        raise Error("invalid_argument", "", "a state dict is a mapping, not a "
                    + type(state_dict).__name__)
    flat = {}
    nodes = []
    # Depth-first, so flat and nodes list everything in pre-order. Frames:
    # (iterator over a container's (key, child), its index in nodes or -1,
    # its path names); len(stack) is the depth of the frame on top.
    stack = [(iter(state_dict.items()), -1, ())]
    while stack:
        items, index, names = stack[-1]
        entry = next(items, None)
        if entry is None:
            stack.pop()
            continue
        key, child = entry
        if type(key) is not str and not (type(key) is int and _INT64_MIN <= key <= _INT64_MAX):
            raise Error("invalid_argument", ".".join(names),
                        f"the key {key!r} is a {type(key).__name__}; state dict keys are "
                        "str or int (in the int64 range)")
        kind = _kind(child)
        child_names = names + (str(key),)
        if kind == "leaf":
            fqn = _unique_fqn(child_names, flat)
            flat[fqn] = child
            nodes.append([index, key, kind, fqn])
            continue
        if len(stack) > MAX_DEPTH:
            raise Error("invalid_argument", ".".join(child_names),
                        f"containers nest deeper than {MAX_DEPTH} levels (or contain themselves)")
        nodes.append([index, key, kind])
        child_items = child.items() if kind in _MAPPING_KINDS else enumerate(child)
        stack.append((iter(child_items), len(nodes) - 1, child_names))
    return flat, {"format": FORMAT, "version": VERSION, "root": root, "nodes": nodes}


def _corrupt(message: str):
    return Error("corrupt", _WHERE, message)


def _checked_nodes(structure):
    """The nodes of `structure`, each checked: parents precede children and are
    containers, keys are unique per mapping and sequential per sequence, fqns
    unique and non-empty, depth bounded. Raises Error("corrupt", ...)."""
    if not isinstance(structure, Mapping) or set(structure) != {"format", "version", "root",
                                                                 "nodes"}:
        raise _corrupt("not a structure document (format, version, root, nodes)")
    if structure["format"] != FORMAT or structure["version"] != VERSION:
        raise _corrupt(f"format {structure['format']!r} version {structure['version']!r} "
                       f"is not {FORMAT!r} version {VERSION}")
    if structure["root"] not in _MAPPING_KINDS:
        raise _corrupt("the root is not a mapping")
    nodes = structure["nodes"]
    if type(nodes) is not list:
        raise _corrupt("nodes is not a list")
    depths = []
    keys_seen = {-1: set()}   # per container index: mapping keys, or child count
    fqns = set()
    for i, node in enumerate(nodes):
        if type(node) is not list or len(node) not in (3, 4):
            raise _corrupt(f"node {i} is not [parent, key, kind(, fqn)]")
        parent, key, kind = node[0], node[1], node[2]
        if type(parent) is not int or not -1 <= parent < i or parent not in keys_seen:
            raise _corrupt(f"node {i} has no container {parent!r} before it")
        parent_kind = structure["root"] if parent < 0 else nodes[parent][2]
        seen = keys_seen[parent]
        if parent_kind in _MAPPING_KINDS:
            if type(key) is not str and not (type(key) is int and _INT64_MIN <= key <= _INT64_MAX):
                raise _corrupt(f"node {i} has a key {key!r} that is not str or int")
            if key in seen:
                raise _corrupt(f"node {i} repeats the key {key!r}")
            seen.add(key)
        else:
            if type(key) is not int or key != len(seen):
                raise _corrupt(f"node {i} is not the next item of its sequence")
            seen.add(key)
        depth = 1 if parent < 0 else depths[parent] + 1
        if depth > MAX_DEPTH and kind != "leaf":
            raise _corrupt(f"containers nest deeper than {MAX_DEPTH} levels")
        depths.append(depth)
        if kind == "leaf":
            if len(node) != 4 or type(node[3]) is not str or not node[3] or node[3] in fqns:
                raise _corrupt(f"node {i} has no fqn, or one used before")
            fqns.add(node[3])
        elif kind in _MAPPING_KINDS or kind in _SEQUENCE_KINDS:
            if len(node) != 3:
                raise _corrupt(f"node {i} is a container with an fqn")
            keys_seen[i] = set()
        else:
            raise _corrupt(f"node {i} has the unknown kind {kind!r}")
    return nodes


def leaf_paths(structure) -> dict:
    """{fqn: typed path}, e.g. "optim.state.0.exp_avg" -> ("optim", "state", 0, "exp_avg")."""
    nodes = _checked_nodes(structure)
    paths = []
    out = {}
    for parent, key, *rest in nodes:
        path = (paths[parent] if parent >= 0 else ()) + (key,)
        paths.append(path)
        if rest[0] == "leaf":
            out[rest[1]] = path
    return out


def unflatten(flat, structure):
    """The nested object flatten() took apart: leaves from `flat`, containers new.
    Raises Error("not_found", fqn, ...) for a leaf missing from flat and
    Error("mismatch", fqn, ...) for an fqn in flat the structure lacks."""
    nodes = _checked_nodes(structure)
    root = collections.OrderedDict() if structure["root"] == "odict" else {}
    containers = []   # per node: its container (tuples built as lists), or None
    for parent, key, kind, *fqn in nodes:
        holder = root if parent < 0 else containers[parent]
        if kind == "leaf":
            if fqn[0] not in flat:
                raise Error("not_found", fqn[0], "the state dict has no value for this leaf")
            value = flat[fqn[0]]
            containers.append(None)
        else:
            value = {"odict": collections.OrderedDict, "dict": dict}.get(kind, list)()
            containers.append(value)
        if isinstance(holder, list):
            holder.append(value)
        else:
            holder[key] = value
    # Children follow parents, so converting in reverse makes inner tuples first.
    for i in range(len(nodes) - 1, -1, -1):
        parent, key, kind = nodes[i][:3]
        if kind == "tuple":
            holder = root if parent < 0 else containers[parent]
            holder[key] = tuple(containers[i])
    known = {node[3] for node in nodes if node[2] == "leaf"}
    for fqn in flat:
        if fqn not in known:
            raise Error("mismatch", fqn, "the structure has no leaf of this name")
    return root


def _slot(container, key, fqn, path):
    """container[key], or Error("not_found") when the slot is absent."""
    if isinstance(container, Mapping):
        if key in container:
            return container[key]
    elif type(container) in (list, tuple) and type(key) is int and 0 <= key < len(container):
        return container[key]
    raise Error("not_found", fqn, f"the destination has nothing at {list(path)!r}")


def fill_in_place(dest, flat, structure) -> None:
    """Sets each non-tensor value of `flat` into the slot of `dest` at its leaf's
    path (tensors are left: the loader filled them in place). A tuple on the way
    is rebuilt and set into its own parent. Raises Error("not_found", fqn, ...)
    for an fqn the structure lacks or a path `dest` lacks."""
    if not isinstance(dest, MutableMapping):
        raise Error("invalid_argument", "", "the destination state dict is not a mutable "
                    f"mapping but a {type(dest).__name__}")
    paths = leaf_paths(structure)
    for fqn, value in flat.items():
        if isinstance(value, torch.Tensor):
            continue
        path = paths.get(fqn)
        if path is None:
            raise Error("not_found", fqn, "the structure has no leaf of this name")
        chain = [dest]
        for depth, key in enumerate(path):
            chain.append(_slot(chain[-1], key, fqn, path[:depth + 1]))
        new = value
        for depth in range(len(path) - 1, -1, -1):
            container, key = chain[depth], path[depth]
            if type(container) is tuple:
                new = container[:key] + (new,) + container[key + 1:]
                continue
            if isinstance(container, Mapping) and not isinstance(container, MutableMapping):
                raise Error("invalid_argument", fqn, "the destination mapping is read-only")
            container[key] = new
            break


def structure_to_bytes(structure, *, check: bool = True) -> bytes:
    """Compact ASCII JSON of a checked structure. check=False skips the check
    for a structure flatten() has just made (a save's hot path)."""
    if check:
        _checked_nodes(structure)
    data = json.dumps(structure, separators=(",", ":"), allow_nan=False).encode("ascii")
    if len(data) > MAX_STRUCTURE_BYTES:
        raise Error("invalid_argument", "state_dict",
                    f"its structure map is {len(data)} bytes, over the limit of "
                    f"{MAX_STRUCTURE_BYTES} a load accepts")
    return data


class _Malformed(Exception):
    pass


def _unique_object(pairs):
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Malformed("a JSON object repeats a name")
    return out


def _reject_constant(name):
    raise _Malformed(f"{name} is not JSON")


def structure_from_bytes(data: bytes, where: str) -> dict:
    """The structure in `data` (from structure_to_bytes), checked strictly.
    Raises Error("corrupt", where, ...) on anything malformed or oversized."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise Error("invalid_argument", where, f"expected bytes, not {type(data).__name__}")
    if len(data) > MAX_STRUCTURE_BYTES:
        raise Error("corrupt", where, f"the structure's {len(data)} bytes exceed "
                    f"the limit of {MAX_STRUCTURE_BYTES}")
    try:
        structure = json.loads(bytes(data).decode("ascii"), object_pairs_hook=_unique_object,
                               parse_constant=_reject_constant)
        _checked_nodes(structure)
    except Error as exc:
        raise Error("corrupt", where, exc.message) from None
    except _Malformed as exc:
        raise Error("corrupt", where, f"malformed structure: {exc}") from None
    except RecursionError:
        raise Error("corrupt", where, "malformed structure: nested too deep") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise Error("corrupt", where, f"malformed structure: {exc}") from None
    return structure
