"""Tests of ringckpt.state_dict (flatten/unflatten/fill_in_place/structure bytes)
and ringckpt.values (the tagged encoding of non-tensor values)."""

import collections
import json
import math
import struct
import time

import pytest
import torch

from ringckpt import Error, state_dict, values


def _trained_state():
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32)
    model = torch.nn.TransformerEncoder(layer, num_layers=2)
    opt = torch.optim.Adam(model.parameters(), lr=0.003)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(5, 3, 16)).sum().backward()
        opt.step()
    return model, opt, {"model": model.state_dict(), "optim": opt.state_dict(), "step": 3}


def _assert_same_shape(a, b):
    """Same types, same key types and order; tensors the identical objects."""
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a is b
    elif isinstance(a, dict):
        assert [(type(k), k) for k in a] == [(type(k), k) for k in b]
        for k in a:
            _assert_same_shape(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same_shape(x, y)
    else:
        assert a == b


def _raises(code, where, fn, *args, **kwargs):
    with pytest.raises(Error) as info:
        fn(*args, **kwargs)
    assert info.value.code == code
    if where is not None:
        assert info.value.where == where
    return info.value


# ---- state_dict -----------------------------------------------------------

def test_transformer_and_adam_round_trip():
    _, _, sd = _trained_state()
    flat, structure = state_dict.flatten(sd)
    assert "model.layers.0.self_attn.in_proj_weight" in flat
    assert "model.layers.1.linear2.bias" in flat
    assert "optim.state.0.exp_avg" in flat and "optim.state.0.step" in flat
    assert flat["optim.state.0.exp_avg"] is sd["optim"]["state"][0]["exp_avg"]
    # param_groups is a list without tensors: one leaf, the same object.
    assert flat["optim.param_groups"] is sd["optim"]["param_groups"]
    assert flat["step"] == 3
    assert list(flat)[0].startswith("model.") and list(flat)[-1] == "step"
    back = state_dict.unflatten(flat, structure)
    _assert_same_shape(sd, back)
    assert type(back["model"]) is collections.OrderedDict
    assert list(back["optim"]["state"]) == list(sd["optim"]["state"])
    assert all(type(k) is int for k in back["optim"]["state"])
    paths = state_dict.leaf_paths(structure)
    assert paths["optim.state.0.exp_avg"] == ("optim", "state", 0, "exp_avg")
    assert paths["model.layers.0.norm1.weight"] == ("model", "layers.0.norm1.weight")


def test_structure_bytes_round_trip():
    _, _, sd = _trained_state()
    flat, structure = state_dict.flatten(sd)
    data = state_dict.structure_to_bytes(structure)
    again = state_dict.structure_from_bytes(data, "ckpt/structure.json")
    assert again == structure
    _assert_same_shape(sd, state_dict.unflatten(flat, again))


def test_colliding_dotted_and_empty_keys():
    t1, t2, t3, t4 = (torch.full((1,), float(i)) for i in range(4))
    sd = {"a": {"b": t1}, "a.b": t2, 1: t3, "1": t4, "": 5, "c": {"": 6}}
    flat, structure = state_dict.flatten(sd)
    assert list(flat) == ["a.b", "a.b#1", "1", "1#1", "#1", "c."]
    assert flat["a.b"] is t1 and flat["a.b#1"] is t2
    assert flat["1"] is t3 and flat["1#1"] is t4
    # Deterministic: flattening again names everything the same.
    assert list(state_dict.flatten(sd)[0]) == list(flat)
    back = state_dict.unflatten(flat, state_dict.structure_from_bytes(
        state_dict.structure_to_bytes(structure), "s"))
    _assert_same_shape(sd, back)
    assert back[1] is t3 and back["1"] is t4


def test_collision_with_a_disambiguated_name():
    sd = {"a": {"b": 1}, "a.b": 2, "a.b#1": 3}
    flat, structure = state_dict.flatten(sd)
    assert len(flat) == 3 and sorted(flat.values()) == [1, 2, 3]
    _assert_same_shape(sd, state_dict.unflatten(flat, structure))


def test_empty_dicts_lists_tuples_and_odict():
    t = torch.ones(2)
    sd = collections.OrderedDict(
        state={}, seq=[t, (t, 7), [{"w": t}]], plain=(1, 2), empty_list=[],
        inner=collections.OrderedDict(x={}))
    flat, structure = state_dict.flatten(sd)
    assert flat["plain"] == (1, 2) and flat["empty_list"] == []
    assert flat["seq.1.1"] == 7 and flat["seq.2.0.w"] is t
    back = state_dict.unflatten(flat, structure)
    _assert_same_shape(sd, back)
    assert type(back) is collections.OrderedDict
    assert type(back["seq"][1]) is tuple and type(back["seq"]) is list


def test_bad_keys_and_inputs_refused():
    e = _raises("invalid_argument", "a", state_dict.flatten, {"a": {True: 1}})
    assert "bool" in e.message
    _raises("invalid_argument", "a.b", state_dict.flatten, {"a": {"b": {1.5: 1}}})
    _raises("invalid_argument", "", state_dict.flatten, {(1, 2): 1})
    _raises("invalid_argument", "", state_dict.flatten, [torch.ones(1)])
    cyclic = {}
    cyclic["self"] = cyclic
    _raises("invalid_argument", None, state_dict.flatten, cyclic)


def test_unflatten_missing_and_extra_leaves():
    flat, structure = state_dict.flatten({"a": 1, "b": {"c": 2}})
    _raises("not_found", "b.c", state_dict.unflatten, {"a": 1}, structure)
    _raises("mismatch", "z", state_dict.unflatten, {"a": 1, "b.c": 2, "z": 0}, structure)


def test_fill_in_place_then_load_state_dict():
    model, opt, sd = _trained_state()
    flat, structure = state_dict.flatten(sd)
    fresh = torch.optim.Adam(model.parameters(), lr=0.5, betas=(0.1, 0.2))
    dest = {"model": model.state_dict(), "optim": fresh.state_dict(), "step": 0}
    non_tensors = {k: v for k, v in flat.items() if not isinstance(v, torch.Tensor)}
    state_dict.fill_in_place(dest, non_tensors, structure)
    assert dest["step"] == 3
    assert dest["optim"]["param_groups"] == sd["optim"]["param_groups"]
    fresh.load_state_dict(dest["optim"])
    assert fresh.param_groups[0]["lr"] == 0.003
    assert fresh.param_groups[0]["betas"] == (0.9, 0.999)
    # Tensors in flat are skipped: the full flat works the same.
    state_dict.fill_in_place(dest, flat, structure)


def test_fill_in_place_errors_and_tuples():
    t = torch.zeros(1)
    flat, structure = state_dict.flatten({"a": {"b": 1}, "s": (t, 2)})
    dest = {"a": {"b": 0}, "s": (t, 0)}
    state_dict.fill_in_place(dest, {"a.b": 5, "s.1": 9}, structure)
    assert dest == {"a": {"b": 5}, "s": (t, 9)} and dest["s"][0] is t
    _raises("not_found", "a.b", state_dict.fill_in_place, {"a": {}}, {"a.b": 1}, structure)
    _raises("not_found", "a.b", state_dict.fill_in_place, {}, {"a.b": 1}, structure)
    _raises("not_found", "nope", state_dict.fill_in_place, dest, {"nope": 1}, structure)
    _raises("invalid_argument", "", state_dict.fill_in_place, ({"b": 0},), {"a.b": 1}, structure)
    _raises("not_found", "a.b", state_dict.fill_in_place, {"a": 7}, {"a.b": 1}, structure)


@pytest.mark.parametrize("text", [
    b"", b"{", b"[]", b"\xff", b'{"format":"ringckpt.structure"}',
    b'{"format":"x","version":1,"root":"dict","nodes":[]}',
    b'{"format":"ringckpt.structure","version":1,"root":"list","nodes":[]}',
    b'{"format":"ringckpt.structure","version":1,"root":"dict","nodes":[[0,"a","leaf","a"]]}',
    b'{"format":"ringckpt.structure","version":1,"root":"dict","nodes":[[-1,"a","leaf",""]]}',
    b'{"format":"ringckpt.structure","version":1,"root":"dict",'
    b'"nodes":[[-1,"a","leaf","x"],[-1,"a","leaf","y"]]}',
    b'{"format":"ringckpt.structure","version":1,"root":"dict",'
    b'"nodes":[[-1,"a","leaf","x"],[-1,"b","leaf","x"]]}',
    b'{"format":"ringckpt.structure","version":1,"root":"dict",'
    b'"nodes":[[-1,"a","list"],[0,1,"leaf","x"]]}',
    b'{"format":"ringckpt.structure","version":1,"root":"dict","nodes":[[-1,true,"leaf","x"]]}',
    b'{"format":"ringckpt.structure","version":1,"root":"dict","nodes":[[-1,1.5,"leaf","x"]]}',
    b'{"format":"ringckpt.structure","version":1,"root":"dict","nodes":[[-1,"a","set"]]}',
    b'{"format":"ringckpt.structure","version":1,"root":"dict","nodes":[[-1,"a","leaf",NaN]]}',
    b'{"format":"ringckpt.structure","format":"ringckpt.structure","version":1,'
    b'"root":"dict","nodes":[]}',
    b"[" * 100000,
])
def test_structure_from_bytes_refuses_malformed(text):
    _raises("corrupt", "where.json", state_dict.structure_from_bytes, text, "where.json")


def test_structure_depth_bound():
    deep = {}
    inner = deep
    for _ in range(state_dict.MAX_DEPTH):
        inner["x"] = {}
        inner = inner["x"]
    inner["leaf"] = 1
    flat, structure = state_dict.flatten(deep)   # within the bound: fine
    data = state_dict.structure_to_bytes(structure)
    assert state_dict.structure_from_bytes(data, "s") == structure
    inner["x"] = {"y": 1}   # one level more than the bound
    _raises("invalid_argument", None, state_dict.flatten, deep)
    nodes = [[-1, "x", "dict"]] + [[i, "x", "dict"] for i in range(state_dict.MAX_DEPTH)]
    too_deep = {"format": "ringckpt.structure", "version": 1, "root": "dict", "nodes": nodes}
    _raises("corrupt", "s", state_dict.structure_from_bytes, json.dumps(too_deep).encode(), "s")


# ---- values ---------------------------------------------------------------

SUPPORTED = [
    None, True, False, 0, 1, -1, 2 ** 63 - 1, -2 ** 63, 2 ** 63, -2 ** 200, 10 ** 5000,
    0.0, -0.0, 1.5, 1e-320, 1e308, float("inf"), float("-inf"), "", "x", "ünï\ud800", b"",
    b"x\x00\xff", (), (1, 2), [1, 2], [], {}, {1: 2}, {"1": 2}, {True: 1.0},
    {(1, "a"): [b"x", (None,)], None: {}, 2.5: "f", b"k": 0},
    [(0.9, 0.999), {"params": list(range(10)), "foreach": None}],
]


def _same_exactly(a, b):
    assert type(a) is type(b)
    if type(a) is float:
        assert struct.pack(">d", a) == struct.pack(">d", b)
    elif type(a) in (list, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same_exactly(x, y)
    elif type(a) is dict:
        assert len(a) == len(b)
        for (ka, va), (kb, vb) in zip(a.items(), b.items()):
            _same_exactly(ka, kb)
            _same_exactly(va, vb)
    else:
        assert a == b


@pytest.mark.parametrize("value", SUPPORTED, ids=range(len(SUPPORTED)))
def test_values_round_trip_exact_types(value):
    data = values.encode(value, key="k")
    assert data.startswith(values.MAGIC_JSON)
    _same_exactly(value, values.decode(data, key="k"))


def test_nan_bits_and_distinct_encodings():
    nan = struct.unpack(">d", bytes.fromhex("fff8000000000123"))[0]
    back = values.decode(values.encode(nan, key="k"), key="k")
    assert math.isnan(back) and struct.pack(">d", back).hex() == "fff8000000000123"
    pairs = [((1, 2), [1, 2]), (True, 1), (1.0, 1), (b"x", "x"), ({1: 2}, {"1": 2})]
    for a, b in pairs:
        assert values.encode(a, key="k") != values.encode(b, key="k")


def test_param_groups_encode_fast():
    _, opt, _ = _trained_state()
    groups = opt.state_dict()["param_groups"]
    groups[0]["params"] = list(range(1000))
    start = time.perf_counter()
    for _ in range(20):
        data = values.encode(groups, key="optim.param_groups")
    assert (time.perf_counter() - start) / 20 < 0.003
    assert values.decode(data, key="k") == groups


@pytest.mark.parametrize("value,type_name", [
    (torch.Size([2, 3]), "torch.Size"), (collections.namedtuple("P", "a")(1), "P"),
    ({"betas": [object()]}, "object"), ([torch.ones(1)], "torch.Tensor"),
    (collections.OrderedDict(a=1), "OrderedDict"), ({frozenset(): 1}, "frozenset"),
])
def test_unsupported_types_name_the_key(value, type_name):
    e = _raises("invalid_argument", "optim.param_groups", values.encode, value,
                key="optim.param_groups")
    assert type_name in e.message and "allow_pickle=True" in e.message


def test_too_deep_and_cyclic_values_refused():
    deep = []
    for _ in range(values.MAX_DEPTH):
        deep = [deep]
    _raises("invalid_argument", "k", values.encode, deep, key="k")
    cyclic = []
    cyclic.append(cyclic)
    _raises("invalid_argument", "k", values.encode, cyclic, key="k", allow_pickle=True)
    ok = []
    for _ in range(values.MAX_DEPTH - 1):
        ok = [ok]
    assert values.decode(values.encode(ok, key="k"), key="k") == ok


def test_pickle_path_both_ways():
    value = {"size": torch.Size([2, 3])}
    data = values.encode(value, key="k", allow_pickle=True)
    assert data.startswith(values.MAGIC_PICKLE)
    assert values.decode(data, key="k", allow_pickle=True) == value
    e = _raises("invalid_argument", "k", values.decode, data, key="k")
    assert "pickle" in e.message and "allow_pickle=True" in e.message
    # Plain values stay JSON even when pickle is allowed.
    assert values.encode([1], key="k", allow_pickle=True).startswith(values.MAGIC_JSON)
    _raises("invalid_argument", "k", values.encode, lambda: 0, key="k", allow_pickle=True)
    _raises("corrupt", "k", values.decode, values.MAGIC_PICKLE + b"\x80garbage",
            key="k", allow_pickle=True)


@pytest.mark.parametrize("payload", [
    b"", b"RC", b"XXXX[1]", b"RCJ1", b"RCJ1[1", b"RCJ1\xff", b"RCJ1{}", b'RCJ1{"a":1}',
    b"RCJ1[]", b"RCJ1[1]", b'RCJ1["z",1]', b'RCJ1["d",1]', b'RCJ1["d",["l"],1]',
    b'RCJ1["d",1,2,1,3]', b'RCJ1["b","***"]', b'RCJ1["b",1]', b'RCJ1["i","12"]',
    b'RCJ1["f","7ff8"]', b'RCJ1["f","7ff8",1]', b"RCJ1NaN", b"RCJ1Infinity", b"RCJ1 1 2",
    b"RCJ1" + b'["l",' * 101 + b"1" + b"]" * 101, b"RCJ1" + b"[" * 100000,
])
def test_malformed_payloads_are_corrupt(payload):
    _raises("corrupt", "opt.lr", values.decode, payload, key="opt.lr")


def test_truncated_payloads_are_corrupt():
    data = values.encode({"lr": 0.1, "betas": (0.9, 0.99), "b": b"xyz"}, key="k")
    for end in range(len(data) - 1, -1, -1):
        _raises("corrupt", "k", values.decode, data[:end], key="k")
