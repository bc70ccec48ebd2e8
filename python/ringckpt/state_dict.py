"""Nested state dicts as flat, named leaves, and the structure map that restores them.

flatten() walks a state dict as DCP's flatten_state_dict does: mappings are
always entered; lists and tuples only when they hold a tensor somewhere (an
optimizer's param_groups, a list of plain values, stays one leaf). Each leaf is
named by its path's keys joined with dots ("model.layers.0.weight",
"optim.state.0.exp_avg").

The structure map records every container's type and keys and every leaf's
name, as JSON: a leaf is its name (a JSON string); a container is an object
with one member naming its type ("dict", "odict", "list", "tuple") whose value
lists its children ([key, child] pairs for mappings). JSON tells the integer
key 1 from the string key "1", so both come back as they were. Names are unique:
a name already taken (a key with a dot in it colliding with a nested one, an
empty key) gets the first free "#<n>" suffix, and the map keeps the true path.
"""

import collections
import json
from collections.abc import Mapping

import torch

from .errors import Error

__all__ = ["flatten", "unflatten", "fill_in_place", "leaf_paths", "structure_to_bytes",
           "structure_from_bytes"]

_VERSION = 1
_MAX_STRUCTURE_BYTES = 256 << 20
_CONTAINERS = ("dict", "odict", "list", "tuple")


def _holds_tensor(value) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, Mapping):
        return any(_holds_tensor(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_tensor(v) for v in value)
    return False


def _dotted(path) -> str:
    return ".".join(str(key) for key in path)


def flatten(state_dict):
    """(flat, structure): flat is {name: leaf} in traversal order, a leaf being
    a tensor or a plain value; structure restores the nesting (unflatten)."""
    if not isinstance(state_dict, Mapping):
        raise Error("invalid_argument", "state_dict",
                    f"must be a mapping (a dict of tensors and values), not "
                    f"{type(state_dict).__name__}")
    flat = {}

    def leaf(value, name):
        if not name or name in flat:
            base, n = name, 1
            name = f"{base}#{n}"
            while name in flat:
                n += 1
                name = f"{base}#{n}"
        flat[name] = value
        return name

    # `prefix` is the dotted name of `path` plus a trailing dot (empty at the
    # root), carried down so that a leaf's name costs one concatenation.
    def visit(value, path, prefix):
        if isinstance(value, torch.Tensor):  # the common leaf first: Mapping's check is slow
            return leaf(value, prefix[:-1])
        if isinstance(value, Mapping):
            children = []
            for key, child in value.items():
                if type(key) is not str and type(key) is not int:
                    raise Error("invalid_argument", _dotted(path + (repr(key),)),
                                f"has a key of type {type(key).__name__}: state dict keys "
                                "must be str or int")
                children.append([key, visit(child, path + (key,), f"{prefix}{key}.")])
            return {"odict" if isinstance(value, collections.OrderedDict) else "dict": children}
        if isinstance(value, (list, tuple)) and _holds_tensor(value):
            children = [visit(child, path + (i,), f"{prefix}{i}.")
                        for i, child in enumerate(value)]
            return {"list" if isinstance(value, list) else "tuple": children}
        return leaf(value, prefix[:-1])

    root = visit(state_dict, (), "")
    return flat, {"version": _VERSION, "root": root}


def _kind_and_body(node):
    ((kind, body),) = node.items()
    return kind, body


def unflatten(flat: Mapping, structure):
    """The nested object flatten() was given, its leaves taken from `flat`."""
    def build(node):
        if isinstance(node, str):
            return flat[node]
        kind, body = _kind_and_body(node)
        if kind == "dict":
            return {key: build(child) for key, child in body}
        if kind == "odict":
            return collections.OrderedDict((key, build(child)) for key, child in body)
        children = [build(child) for child in body]
        return children if kind == "list" else tuple(children)
    return build(structure["root"])


def leaf_paths(structure) -> dict:
    """{name: typed path}, e.g. "optim.state.0.exp_avg" -> ("optim", "state", 0, "exp_avg")."""
    paths = {}

    def visit(node, path):
        if isinstance(node, str):
            paths[node] = path
            return
        kind, body = _kind_and_body(node)
        if kind in ("dict", "odict"):
            for key, child in body:
                visit(child, path + (key,))
        else:
            for i, child in enumerate(body):
                visit(child, path + (i,))
    visit(structure["root"], ())
    return paths


def fill_in_place(dest, flat_values: Mapping, structure) -> None:
    """Puts each value of flat_values (named as flatten(dest) named its leaves,
    `structure` being that flatten's) into dest's container at its path. A
    tuple on the way is rebuilt, and the new tuple put in its parent."""
    paths = leaf_paths(structure)

    def assign(container, path, value, name):
        key = path[0]
        try:
            current = container[key]
        except (KeyError, IndexError, TypeError):
            raise Error("not_found", name, "has no place in the state dict to load into") \
                from None
        new = value if len(path) == 1 else assign(current, path[1:], value, name)
        if isinstance(container, tuple):
            return container[:key] + (new,) + container[key + 1:]
        if new is not current or len(path) == 1:
            container[key] = new
        return container

    for name, value in flat_values.items():
        assign(dest, paths[name], value, name)


def structure_to_bytes(structure) -> bytes:
    return json.dumps(structure, separators=(",", ":"), ensure_ascii=False).encode()


def structure_from_bytes(data: bytes, where: str):
    """Parses and checks a stored structure map; Error("corrupt", where) if it
    is not one (too large, not JSON, a malformed node, a name used twice)."""
    if len(data) > _MAX_STRUCTURE_BYTES:
        raise Error("corrupt", where, f"the structure map is {len(data)} bytes, over the "
                    f"{_MAX_STRUCTURE_BYTES}-byte limit")
    try:
        structure = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise Error("corrupt", where, f"the structure map is not valid JSON ({e})") from None
    if (not isinstance(structure, dict) or structure.get("version") != _VERSION
            or set(structure) != {"version", "root"}):
        raise Error("corrupt", where, f"the structure map is not a version-{_VERSION} map")
    names = set()

    def check(node, depth):
        if depth > 1000:
            raise Error("corrupt", where, "the structure map nests over 1000 deep")
        if isinstance(node, str):
            if not node or node in names:
                raise Error("corrupt", where, f"the structure map names leaf {node!r} "
                            "twice or empty")
            names.add(node)
            return
        if not isinstance(node, dict) or len(node) != 1:
            raise Error("corrupt", where, "the structure map holds a malformed node")
        kind, body = _kind_and_body(node)
        if kind not in _CONTAINERS or not isinstance(body, list):
            raise Error("corrupt", where, f"the structure map holds an unknown node {kind!r}")
        for child in body:
            if kind in ("dict", "odict"):
                if (not isinstance(child, list) or len(child) != 2
                        or type(child[0]) not in (str, int)):
                    raise Error("corrupt", where, "the structure map holds a malformed key")
                child = child[1]
            check(child, depth + 1)

    check(structure["root"], 0)
    if isinstance(structure["root"], str) or _kind_and_body(structure["root"])[0] not in (
            "dict", "odict"):
        raise Error("corrupt", where, "the structure map's root is not a mapping")
    return structure
