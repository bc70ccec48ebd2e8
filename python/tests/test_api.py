"""The package as PyTorch programs use it: ringckpt.save / load / load_state_dict,
the Checkpointer's async_save and load, verify and inspect."""

import asyncio
import collections
import functools
import gc
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import ringckpt

# The I/O settings of the module-level calls: a small staging ring, because the
# default one (256 MiB, pre-faulted on every call) costs about a second a call
# here and these tests save kilobytes. test_transformer_and_adam_round_trip_as_new_tensors
# keeps the defaults.
IO = {"ring_bytes": 4 << 20, "extent_size": 1 << 20}

TEN_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64,
              torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool]


def trained_model_and_optimizer(seed):
    torch.manual_seed(seed)
    layer = torch.nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64,
                                             batch_first=True)
    model = torch.nn.TransformerEncoder(layer, num_layers=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(2, 5, 32)).pow(2).mean().backward()
        opt.step()
    return model, opt


def assert_same(a, b):
    """Equal nesting, key types, value types and tensor contents."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys())
        assert [type(k) for k in a] == [type(k) for k in b]
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


@pytest.fixture(scope="module")
def checkpointer():
    with ringckpt.Checkpointer(ring_bytes=64 << 20, extent_size=1 << 20) as ck:
        yield ck


def training_state(seed):
    model, opt = trained_model_and_optimizer(seed)
    return model, opt, {"model": model.state_dict(), "optim": opt.state_dict(), "step": 3}


def test_transformer_and_adam_round_trip_in_place(checkpointer, tmp_path):
    model, opt, state = training_state(seed=1)
    expected = {"model": collections.OrderedDict((k, v.clone()) for k, v in state["model"].items()),
                "optim": opt.state_dict(), "step": 3}
    h = checkpointer.async_save(state, tmp_path / "ckpt")
    h.staged.result(timeout=60)
    h.committed.result(timeout=60)

    model2, opt2, target = training_state(seed=2)
    target["step"] = 0
    assert not torch.equal(target["model"]["layers.0.linear1.weight"],
                           expected["model"]["layers.0.linear1.weight"])
    checkpointer.load(target, tmp_path / "ckpt")
    assert_same(target["model"], expected["model"])
    assert target["step"] == 3
    model2.load_state_dict(target["model"])
    opt2.load_state_dict(target["optim"])
    assert_same(opt2.state_dict(), opt.state_dict())
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_transformer_and_adam_round_trip_as_new_tensors(tmp_path):
    model, opt, state = training_state(seed=3)
    ringckpt.save(state, tmp_path / "ckpt")
    loaded = ringckpt.load_state_dict(tmp_path / "ckpt")
    assert_same(loaded, state)
    assert isinstance(loaded["optim"]["state"], dict)
    assert all(isinstance(k, int) for k in loaded["optim"]["state"])
    model2, opt2 = trained_model_and_optimizer(seed=4)
    model2.load_state_dict(loaded["model"])
    opt2.load_state_dict(loaded["optim"])
    assert_same(opt2.state_dict(), opt.state_dict())


@pytest.mark.parametrize("dtype", TEN_DTYPES, ids=str)
def test_every_dtype_round_trips(tmp_path, dtype):
    source = (torch.randn(7, 5) * 100).to(dtype)
    zero_d = torch.tensor(3).to(dtype)
    ringckpt.save({"t": source, "scalar": zero_d}, tmp_path / "ckpt", **IO)
    target = {"t": torch.zeros(7, 5, dtype=dtype), "scalar": torch.zeros((), dtype=dtype)}
    ringckpt.load(target, tmp_path / "ckpt", **IO)
    assert torch.equal(target["t"], source) and torch.equal(target["scalar"], zero_d)
    assert_same(ringckpt.load_state_dict(tmp_path / "ckpt", **IO), {"t": source, "scalar": zero_d})


def test_non_contiguous_and_0d_sources_and_destinations(checkpointer, tmp_path):
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    state = {"transposed": base.t(), "strided": base[::2, 1::3], "scalar": torch.tensor(2.5),
             "empty": torch.zeros(0, 4)}
    from ringckpt import items
    items._noted_copy.clear()  # the note is given once per process: make this the first
    with pytest.warns(RuntimeWarning, match="not contiguous"):
        checkpointer.save(state, tmp_path / "ckpt")
    dest_base = torch.zeros(6, 10)
    dest = {"transposed": dest_base.t(), "strided": torch.zeros(6, 6)[::2, ::2],
            "scalar": torch.tensor(0.0), "empty": torch.zeros(0, 4)}
    checkpointer.load(dest, tmp_path / "ckpt")
    for key in state:
        assert torch.equal(dest[key], state[key]), key
    assert torch.equal(dest_base, base)  # written through the view
    assert_same(ringckpt.load_state_dict(tmp_path / "ckpt", **IO),
                {k: v.contiguous() for k, v in state.items()})


def test_state_dict_dropped_right_after_async_save(checkpointer, tmp_path):
    tensors = {f"t{i}": torch.full((256, 1024), float(i)) for i in range(16)}
    expected = {k: v.clone() for k, v in tensors.items()}
    h = checkpointer.async_save(tensors, tmp_path / "ckpt")
    del tensors
    gc.collect()
    scribble = [torch.full((256, 1024), -1.0) for _ in range(16)]  # reuses freed memory
    h.committed.result(timeout=60)
    del scribble
    assert_same(ringckpt.load_state_dict(tmp_path / "ckpt", **IO), expected)


def test_futures_work_with_asyncio(checkpointer, tmp_path):
    async def save_and_wait():
        h = checkpointer.async_save({"w": torch.ones(4)}, tmp_path / "ckpt")
        await asyncio.wrap_future(h.staged)
        await asyncio.wrap_future(h.committed)
    asyncio.run(asyncio.wait_for(save_and_wait(), timeout=60))
    assert ringckpt.verify(tmp_path / "ckpt")["ok"]


def test_awkward_keys_come_back_exactly(tmp_path):
    state = {"a.b": torch.ones(2), "a": {"b": torch.zeros(2), 1: torch.full((2,), 5.0)},
             "1": torch.full((2,), 7.0), 1: "one", "": {"x": [torch.ones(1), torch.zeros(1)]},
             "tup": (torch.ones(3), 4), "empty": {}, "none": None}
    ringckpt.save(state, tmp_path / "ckpt", **IO)
    assert_same(ringckpt.load_state_dict(tmp_path / "ckpt", **IO), state)
    dest = {"a.b": torch.empty(2), "a": {"b": torch.empty(2), 1: torch.empty(2)},
            "1": torch.empty(2), 1: None, "": {"x": [torch.empty(1), torch.empty(1)]},
            "tup": (torch.empty(3), 0), "empty": {}, "none": 1}
    ringckpt.load(dest, tmp_path / "ckpt", **IO)
    assert dest[1] == "one" and dest["none"] is None and torch.equal(dest["a.b"], state["a.b"])
    assert torch.equal(dest["a"]["b"], state["a"]["b"]) and torch.equal(dest["1"], state["1"])


def test_inspect_gives_typed_paths_and_verify_reports(tmp_path):
    _, _, state = training_state(seed=5)
    ringckpt.save(state, tmp_path / "ckpt", **IO)
    info = ringckpt.inspect(tmp_path / "ckpt")
    entry = info["entries"]["optim.state.0.exp_avg"]
    assert entry["path"] == ("optim", "state", 0, "exp_avg")
    assert entry["kind"] == "tensor" and entry["dtype"] == torch.float32
    assert entry["shape"] == tuple(state["optim"]["state"][0]["exp_avg"].shape)
    assert info["entries"]["optim.param_groups"]["kind"] == "value"
    assert all(not fqn.startswith("__ringckpt__") for fqn in info["entries"])
    tensor_bytes = sum(e["nbytes"] for e in info["entries"].values() if e["kind"] == "tensor")
    assert tensor_bytes == sum(t.numel() * t.element_size() for t in _tensors(state))
    report = ringckpt.verify(tmp_path / "ckpt", **IO)
    assert report["ok"] and report["faults"] == [] and report["extents"] >= 1
    # The options reach the reader: a queue no I/O fits through is a fault.
    report = ringckpt.verify(tmp_path / "ckpt", queue_depth=0)
    assert not report["ok"] and "queue_depth" in report["faults"][0]["message"]
    with pytest.raises(ringckpt.Error) as refused:
        ringckpt.verify(tmp_path / "ckpt", ring=1)
    assert (refused.value.code, refused.value.where) == ("invalid_argument", "ring")


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def test_missing_key_fails_before_anything_is_loaded(tmp_path):
    ringckpt.save({"w": torch.ones(4), "lr": 0.1}, tmp_path / "ckpt", **IO)
    for extra in ({"absent": torch.zeros(2)}, {"absent_value": 5}):
        dest = {"w": torch.zeros(4), "lr": 0.0, **extra}
        with pytest.raises(ringckpt.Error) as e:
            ringckpt.load(dest, tmp_path / "ckpt", **IO)
        assert e.value.code == "not_found" and e.value.where in ("absent", "absent_value")
        assert torch.equal(dest["w"], torch.zeros(4)) and dest["lr"] == 0.0


def test_shape_and_dtype_mismatch_name_the_key(tmp_path):
    ringckpt.save({"layer.weight": torch.ones(4, 3)}, tmp_path / "ckpt", **IO)
    for wrong in (torch.zeros(3, 4), torch.zeros(4, 3, dtype=torch.int32)):
        with pytest.raises(ringckpt.Error) as e:
            ringckpt.load({"layer.weight": wrong}, tmp_path / "ckpt", **IO)
        assert e.value.code == "mismatch" and "layer.weight" in str(e.value)
    # Between floating dtypes the load casts, as DCP's copy_ does.
    wider = torch.zeros(4, 3, dtype=torch.float64)
    ringckpt.load({"layer.weight": wider}, tmp_path / "ckpt", **IO)
    assert torch.equal(wider, torch.ones(4, 3, dtype=torch.float64))


def test_corrupted_extent_is_caught_naming_the_file(checkpointer, tmp_path):
    checkpointer.save({"w": torch.arange(100000, dtype=torch.float32)}, tmp_path / "ckpt")
    data_files = [f for f in os.listdir(tmp_path / "ckpt") if f != "metadata.json"]
    assert data_files
    victim = tmp_path / "ckpt" / data_files[0]
    raw = bytearray(victim.read_bytes())
    raw[-1000] ^= 0x10
    victim.write_bytes(bytes(raw))
    for load in (functools.partial(ringckpt.load, **IO), checkpointer.load):
        with pytest.raises(ringckpt.Error) as e:
            load({"w": torch.zeros(100000)}, tmp_path / "ckpt")
        assert e.value.code == "corrupt" and data_files[0] in str(e.value)
    with pytest.raises(ringckpt.Error) as e:
        ringckpt.load_state_dict(tmp_path / "ckpt", **IO)
    assert e.value.code == "corrupt"
    report = ringckpt.verify(tmp_path / "ckpt")
    assert not report["ok"] and data_files[0] in report["faults"][0]["file"]


class Opaque:
    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Opaque) and other.value == self.value


def test_pickled_values_only_with_allow_pickle(checkpointer, tmp_path):
    state = {"w": torch.ones(2), "cfg": Opaque(7)}
    with pytest.raises(ringckpt.Error) as e:
        ringckpt.save(state, tmp_path / "refused", **IO)
    assert e.value.code == "invalid_argument" and e.value.where == "cfg"
    assert not (tmp_path / "refused" / "metadata.json").exists()
    with pytest.raises(ringckpt.Error) as e:
        checkpointer.async_save(state, tmp_path / "refused2")
    assert e.value.where == "cfg"

    checkpointer.save(state, tmp_path / "ckpt", allow_pickle=True)
    with pytest.raises(ringckpt.Error) as e:
        ringckpt.load_state_dict(tmp_path / "ckpt", **IO)
    assert e.value.where == "cfg" and "allow_pickle" in str(e.value)
    assert ringckpt.load_state_dict(tmp_path / "ckpt", allow_pickle=True, **IO)["cfg"] == Opaque(7)


def test_tensors_off_the_cpu_are_refused_clearly(tmp_path):
    with pytest.raises(ringckpt.Error) as e:
        ringckpt.save({"gpu_like": torch.empty(4, device="meta")}, tmp_path / "ckpt", **IO)
    assert e.value.where == "gpu_like" and "GPU staging" in str(e.value)


def test_overwrite_and_cancel_through_the_checkpointer(checkpointer, tmp_path):
    checkpointer.save({"w": torch.ones(8)}, tmp_path / "ckpt")
    with pytest.raises(ringckpt.Error) as e:
        checkpointer.save({"w": torch.zeros(8)}, tmp_path / "ckpt")
    assert e.value.code == "already_exists"
    h = checkpointer.async_save({"w": torch.zeros(8)}, tmp_path / "ckpt", overwrite=True)
    h.cancel()
    try:
        h.committed.result(timeout=60)
        expected = torch.zeros(8)  # committed before the cancel reached it
    except ringckpt.Error as error:
        assert error.code == "cancelled"
        expected = torch.ones(8)
    assert torch.equal(ringckpt.load_state_dict(tmp_path / "ckpt", **IO)["w"], expected)


TEARDOWN = textwrap.dedent("""
    import gc, sys, torch, ringckpt
    ck = ringckpt.Checkpointer(ring_bytes=32 << 20, extent_size=4 << 20)
    state = {f"t{i}": torch.randn(1024, 1024) for i in range(16)}  # twice the ring
    h = ck.async_save(state, sys.argv[1])
    if sys.argv[2] == "drop":
        del ck
        gc.collect()
        try:
            h.committed.result(timeout=60)
        except ringckpt.Error as e:
            assert e.code == "cancelled", e
        print("dropped")
    # "exit": the interpreter exits with the save in flight
""")


@pytest.mark.parametrize("how", ["drop", "exit"])
def test_teardown_with_a_save_in_flight(tmp_path, how):
    env = dict(os.environ)
    done = subprocess.run([sys.executable, "-c", TEARDOWN, str(tmp_path / "ckpt"), how],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    if how == "drop":
        assert "dropped" in done.stdout
    if (tmp_path / "ckpt" / "metadata.json").exists():  # it committed: then it is whole
        assert ringckpt.verify(tmp_path / "ckpt")["ok"]


def test_a_failed_load_leaves_the_destination_as_it_was(checkpointer, tmp_path):
    checkpointer.save({"w": torch.ones(4), "cfg": Opaque(1)}, tmp_path / "ckpt",
                      allow_pickle=True)
    for load in (functools.partial(ringckpt.load, **IO), checkpointer.load):
        dest = {"w": torch.zeros(4), "cfg": None}
        with pytest.raises(ringckpt.Error) as e:
            load(dest, tmp_path / "ckpt")  # the value is pickled: refused before any tensor
        assert e.value.where == "cfg"
        assert torch.equal(dest["w"], torch.zeros(4)) and dest["cfg"] is None
    ringckpt.save({"w": torch.ones(4), "b": torch.ones(3)}, tmp_path / "ckpt2", **IO)
    dest = {"w": torch.zeros(4), "b": torch.zeros(1).expand(3)}
    with pytest.raises(ringckpt.Error) as e:
        ringckpt.load(dest, tmp_path / "ckpt2", **IO)
    assert e.value.where == "b" and "overlap" in str(e.value)
    assert torch.equal(dest["w"], torch.zeros(4))


def test_a_checkpoint_written_without_a_structure_map_loads_with_raw_values(tmp_path):
    from ringckpt import _core
    w = torch.arange(4, dtype=torch.float32)
    items = _core.StateItems()
    items.add_tensor("w", w.data_ptr(), "F32", (4,))
    items.add_bytes("note", b"\x00raw")
    _core.save(items, str(tmp_path / "ckpt"), **IO)
    loaded = ringckpt.load_state_dict(tmp_path / "ckpt", **IO)  # flat, in metadata.json's order
    assert sorted(loaded) == ["note", "w"]
    assert torch.equal(loaded["w"], w) and loaded["note"] == b"\x00raw"
    dest = {"w": torch.zeros(4), "note": b""}
    ringckpt.load(dest, tmp_path / "ckpt", **IO)
    assert torch.equal(dest["w"], w) and dest["note"] == b"\x00raw"


def test_a_value_too_large_to_load_is_refused_at_save(tmp_path, monkeypatch):
    from ringckpt import values
    monkeypatch.setattr(values, "MAX_ENCODED_BYTES", 1000)
    with pytest.raises(ringckpt.Error) as e:
        ringckpt.save({"w": torch.ones(1), "blob": b"x" * 2000}, tmp_path / "ckpt", **IO)
    assert e.value.code == "invalid_argument" and e.value.where == "blob"
    assert not (tmp_path / "ckpt" / "metadata.json").exists()


def test_a_save_on_a_temporary_checkpointer_runs_to_the_end(tmp_path):
    h = ringckpt.Checkpointer(ring_bytes=16 << 20, extent_size=1 << 20).async_save(
        {"w": torch.ones(1 << 20)}, tmp_path / "ckpt")
    gc.collect()
    h.committed.result(timeout=60)
    assert torch.equal(ringckpt.load_state_dict(tmp_path / "ckpt", **IO)["w"], torch.ones(1 << 20))


EXIT_DURING_BLOCKING_CALL = textwrap.dedent("""
    import sys, threading, time, torch, ringckpt
    ck = ringckpt.Checkpointer(ring_bytes=32 << 20, extent_size=4 << 20)
    state = {f"t{i}": torch.randn(1024, 1024) for i in range(16)}  # twice the ring
    started = threading.Event()
    def saving():
        started.set()
        for i in range(100):
            ck.save(state, f"{sys.argv[1]}/{i}")
    threading.Thread(target=saving, daemon=True).start()
    started.wait()
    time.sleep(0.05)
    print("exiting")
""")

FORKED_CHILD_EXITS = textwrap.dedent("""
    import os, sys, torch, ringckpt
    ck = ringckpt.Checkpointer(ring_bytes=16 << 20, extent_size=1 << 20)
    ck.save({"w": torch.ones(4)}, sys.argv[1] + "/parent")
    pid = os.fork()
    if pid == 0:
        try:
            ck.save({"w": torch.ones(4)}, sys.argv[1] + "/child")
        except ringckpt.Error as e:
            assert "closed" in str(e), e
        sys.exit(0)  # atexit runs in the child: it must not join the parent's threads
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status))
""")


def test_exit_while_a_daemon_thread_saves_and_a_forked_child_exit(tmp_path):
    done = subprocess.run([sys.executable, "-c", EXIT_DURING_BLOCKING_CALL, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "exiting" in done.stdout, (done.returncode, done.stderr)
    done = subprocess.run([sys.executable, "-c", FORKED_CHILD_EXITS, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "child 0" in done.stdout, (done.stdout, done.stderr)
