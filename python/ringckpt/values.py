"""A safe, tagged encoding of the non-tensor values of a state dict.

A value is stored as MAGIC_JSON followed by compact ASCII JSON (json module) of
tagged nodes, so every type comes back exactly:

    None, bool, str          -> JSON null, true/false, string
    int in [-2**63, 2**63)   -> JSON integer
    int outside that range   -> ["i", "<hex>"]       (hex has no digit limit)
    finite float             -> JSON number (repr: round-trips bit-exactly, -0.0 too)
    nan, inf, -inf           -> ["f", "<16 hex digits of the IEEE-754 bits>"]
    bytes                    -> ["b", "<base64>"]
    tuple / list             -> ["t", item, ...] / ["l", item, ...]
    dict                     -> ["d", key, value, key, value, ...]   (order kept)

Every JSON array is tagged and JSON objects never occur, so (1, 2) and [1, 2],
True and 1, 1.0 and 1, b"x" and "x", {1: 2} and {"1": 2} stay apart.

Any other type is refused unless the caller passes allow_pickle=True; then the
whole value is stored as MAGIC_PICKLE followed by pickle bytes. decode never
unpickles without allow_pickle=True: unpickling runs code named by the data.
"""

import base64
import binascii
import json
import math
import pickle
import re
import struct

from .errors import Error

__all__ = ["encode", "decode", "MAX_DEPTH", "MAX_ENCODED_BYTES"]

MAGIC_JSON = b"RCJ1"
MAGIC_PICKLE = b"RCP1"
MAGIC_SIZE = 4

# Containers nest at most this deep (the value itself is depth 1); bounds both
# the encoder's and the decoder's recursion, and turns a cycle into an error.
MAX_DEPTH = 100
# decode refuses payloads larger than this before parsing anything.
MAX_ENCODED_BYTES = 256 << 20

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_BIG_INT_HEX = re.compile(r"-?0x[0-9a-f]+\Z")
_FLOAT_BITS_HEX = re.compile(r"[0-9a-f]{16}\Z")
_PLAIN_TYPES = "None, bool, int, float, str, bytes, tuple, list, dict"


class _Unsupported(Exception):
    """Raised inside the encoder for a value of a type it does not store;
    `location` collects the indexes and keys leading to it while unwinding."""

    def __init__(self, value):
        super().__init__()
        self.type_name = _type_name(value)
        self.location = []


class _TooDeep(Exception):
    pass


class _Malformed(Exception):
    pass


def _type_name(value) -> str:
    cls = type(value)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _float_node(value: float):
    if math.isfinite(value):
        return value
    return ["f", struct.pack(">d", value).hex()]


def _int_node(value: int):
    if _INT64_MIN <= value <= _INT64_MAX:
        return value
    return ["i", hex(value)]


def _node(value, depth: int):
    """The JSON-able tagged node of `value`. REQUIRES: depth >= 1 counts the
    containers enclosing `value`, itself included if it is one."""
    cls = type(value)
    if cls is str or cls is bool or value is None:
        return value
    if cls is int:
        return _int_node(value)
    if cls is float:
        return _float_node(value)
    if cls is list or cls is tuple:
        if depth > MAX_DEPTH:
            raise _TooDeep()
        out = ["l" if cls is list else "t"]
        append = out.append
        index = 0
        try:
            for index, item in enumerate(value):
                # Fast path: small ints and strings need no call.
                item_cls = type(item)
                if item_cls is str or (item_cls is int and _INT64_MIN <= item <= _INT64_MAX):
                    append(item)
                else:
                    append(_node(item, depth + 1))
        except _Unsupported as unsupported:
            unsupported.location.insert(0, f"[{index}]")
            raise
        return out
    if cls is dict:
        if depth > MAX_DEPTH:
            raise _TooDeep()
        out = ["d"]
        append = out.append
        for key, item in value.items():
            try:
                append(_node(key, depth + 1))
            except _Unsupported as unsupported:
                unsupported.location.insert(0, " (a dict key)")
                raise
            try:
                append(_node(item, depth + 1))
            except _Unsupported as unsupported:
                unsupported.location.insert(0, f"[{key!r}]")
                raise
        return out
    if cls is bytes:
        return ["b", base64.b64encode(value).decode("ascii")]
    raise _Unsupported(value)


def encode(value, *, key: str, allow_pickle: bool = False) -> bytes:
    """The bytes that decode() turns back into `value`, with exact types, at
    most MAX_ENCODED_BYTES (what decode accepts: a larger value is refused
    here, not found unloadable later).
    `key` names the value in errors. Raises Error("invalid_argument", key, ...)
    for a type outside the plain ones unless allow_pickle, for nesting deeper
    than MAX_DEPTH (a cycle included), and for a value pickle cannot store."""
    try:
        text = json.dumps(_node(value, 1), separators=(",", ":"), allow_nan=False)
        return _bounded(MAGIC_JSON + text.encode("ascii"), key)
    except _TooDeep:
        raise Error("invalid_argument", key,
                    f"the value nests containers deeper than {MAX_DEPTH} levels "
                    "(or contains itself)") from None
    except _Unsupported as unsupported:
        if not allow_pickle:
            where = "".join(unsupported.location)
            at = f" at {where}" if where else ""
            raise Error("invalid_argument", key,
                        f"{unsupported.type_name}{at} is not a plain value ({_PLAIN_TYPES}); "
                        "pass allow_pickle=True to store it with pickle") from None
    try:
        pickled = MAGIC_PICKLE + pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # pickle raises many types (PicklingError, TypeError, ...)
        raise Error("invalid_argument", key,
                    f"pickle cannot store the {_type_name(value)}: {exc}") from None
    return _bounded(pickled, key)


def _bounded(data: bytes, key: str) -> bytes:
    if len(data) > MAX_ENCODED_BYTES:
        raise Error("invalid_argument", key,
                    f"the value encodes to {len(data)} bytes, over the limit of "
                    f"{MAX_ENCODED_BYTES} a load accepts: store large data as a tensor")
    return data


def _reject_object(pairs):
    raise _Malformed("a JSON object is not a tagged node")


def _reject_constant(name):
    raise _Malformed(f"{name} is not a tagged node")


def _value(node, depth: int):
    """Inverse of _node. Raises _Malformed for anything _node does not produce."""
    cls = type(node)
    if cls is str or cls is bool or node is None or cls is float:
        return node
    if cls is int:
        return node
    if cls is not list:
        raise _Malformed(f"unexpected JSON {cls.__name__}")
    if depth > MAX_DEPTH:
        raise _Malformed(f"containers nest deeper than {MAX_DEPTH} levels")
    if not node or type(node[0]) is not str:
        raise _Malformed("an array without a tag")
    tag = node[0]
    if tag == "l" or tag == "t":
        items = [_value(item, depth + 1) for item in node[1:]]
        return items if tag == "l" else tuple(items)
    if tag == "d":
        if len(node) % 2 != 1:
            raise _Malformed("a dict with a key but no value")
        out = {}
        for i in range(1, len(node), 2):
            key = _value(node[i], depth + 1)
            try:
                present = key in out
            except TypeError:
                raise _Malformed(f"an unhashable {type(key).__name__} as a dict key") from None
            if present:
                raise _Malformed(f"the dict key {key!r} twice")
            out[key] = _value(node[i + 1], depth + 1)
        return out
    if len(node) != 2 or type(node[1]) is not str:
        raise _Malformed(f"the tag {tag!r} with the wrong arguments")
    text = node[1]
    if tag == "b":
        try:
            return base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise _Malformed("bytes that are not base64") from None
    if tag == "i":
        if not _BIG_INT_HEX.match(text):
            raise _Malformed("an int that is not hex")
        return int(text, 16)
    if tag == "f":
        if not _FLOAT_BITS_HEX.match(text):
            raise _Malformed("float bits that are not 16 hex digits")
        return struct.unpack(">d", bytes.fromhex(text))[0]
    raise _Malformed(f"the unknown tag {tag!r}")


def decode(data: bytes, *, key: str, allow_pickle: bool = False) -> object:
    """The value encode() stored in `data`. `key` names it in errors.
    Raises Error("corrupt", key, ...) for a malformed or oversized payload and
    Error("invalid_argument", key, ...) for a pickled one without allow_pickle."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise Error("invalid_argument", key, f"decode takes bytes, not {_type_name(data)}")
    data = bytes(data)
    if len(data) > MAX_ENCODED_BYTES:
        raise Error("corrupt", key,
                    f"the value's {len(data)} bytes exceed the limit of {MAX_ENCODED_BYTES}")
    magic = data[:MAGIC_SIZE]
    if magic == MAGIC_PICKLE:
        if not allow_pickle:
            raise Error("invalid_argument", key,
                        "the value was saved with pickle; loading it would run code from the "
                        "checkpoint: pass allow_pickle=True if you trust it")
        try:
            return pickle.loads(data[MAGIC_SIZE:])
        except Exception as exc:  # a damaged pickle raises many types
            raise Error("corrupt", key, f"the pickled value does not load: {exc}") from None
    if magic != MAGIC_JSON:
        raise Error("corrupt", key, "the value does not start with a known magic")
    try:
        node = json.loads(data[MAGIC_SIZE:].decode("ascii"),
                          object_pairs_hook=_reject_object, parse_constant=_reject_constant)
        return _value(node, 1)
    except _Malformed as exc:
        raise Error("corrupt", key, f"malformed value: {exc}") from None
    except RecursionError:
        raise Error("corrupt", key, "malformed value: nested too deep to parse") from None
    except (UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise Error("corrupt", key, f"malformed value: {exc}") from None
