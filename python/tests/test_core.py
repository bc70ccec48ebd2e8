"""Tests of ringckpt._core: round trips, metadata, verify, errors, callbacks and
teardown (close, garbage collection, interpreter exit) without deadlock."""

import gc
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from ringckpt import _core
from ringckpt.errors import Error

# Small rings keep each Checkpointer cheap to create (the ring is pre-faulted).
IO = dict(ring_bytes=8 << 20, extent_size=1 << 20)

NUMPY_OF = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
            "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
            "U8": np.uint8, "BOOL": np.bool_}


def random_arrays(seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for name in _core.DTYPES:
        raw = rng.integers(0, 256, size=3 * 5 * NUMPY_OF[name]().itemsize, dtype=np.uint8)
        array = raw.view(NUMPY_OF[name]).reshape(3, 5)
        if name == "BOOL":
            array = (raw[:15] & 1).astype(np.bool_).reshape(3, 5)
        out[name] = array.copy()
    return out


def items_of(arrays, blobs=None):
    items = _core.StateItems()
    items.add_tensors([(f"t.{name}", a.ctypes.data, name, list(a.shape))
                       for name, a in arrays.items()])
    for fqn, value in (blobs or {}).items():
        items.add_bytes(fqn, value)
    return items


def zeros_like(arrays):
    return {name: np.zeros_like(a) for name, a in arrays.items()}


def assert_same(expected, actual):
    for name in expected:
        np.testing.assert_array_equal(expected[name], actual[name], err_msg=name)


def test_dtypes_are_the_ten_names():
    assert _core.DTYPES == ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8",
                            "BOOL")
    assert _core.Error is Error


def test_round_trip_all_dtypes_and_bytes(tmp_path):
    arrays = random_arrays()
    items = items_of(arrays, {"step": b"\x01\x02\x03", "empty": b""})
    assert len(items) == 12
    assert items.nbytes() == sum(a.nbytes for a in arrays.values()) + 3
    assert items.fqns()[:2] == ["t.F64", "t.F32"]
    _core.save(items, str(tmp_path / "ck"), **IO)

    back = zeros_like(arrays)
    loaded = items_of(back, {"step": b"", "empty": b"x"})
    _core.load(loaded, str(tmp_path / "ck"), **IO)
    assert_same(arrays, back)
    assert loaded.bytes_of("step") == b"\x01\x02\x03"
    assert loaded.bytes_of("empty") == b""


@pytest.mark.parametrize("mode", ["lazy", "bounded", "snapshot"])
def test_checkpointer_round_trip_in_each_mode(tmp_path, mode):
    arrays = random_arrays(1)
    with _core.Checkpointer(mode=mode, **IO) as ckpt:
        ckpt.save(items_of(arrays, {"b": b"blob"}), str(tmp_path / "sync"))
        done = threading.Event()
        got = []
        ckpt.async_save(items_of(arrays), str(tmp_path / "async"), got.append,
                        lambda err: (got.append(err), done.set()))
        assert done.wait(30)
        assert got == [None, None]
        for sub in ("sync", "async"):
            back = zeros_like(arrays)
            ckpt.load(items_of(back), str(tmp_path / sub))
            assert_same(arrays, back)
        report = ckpt.report()
        assert set(report) == {"direct_io", "registered_buffers", "notes"}
        assert isinstance(report["notes"], list)


def test_snapshot_planning_error_raises_from_async_save(tmp_path):
    big = np.ones(16 << 20, dtype=np.uint8)  # larger than the 8 MiB ring
    items = _core.StateItems()
    items.add_tensor("big", big.ctypes.data, "U8", [big.size])
    with _core.Checkpointer(**IO) as ckpt:
        with pytest.raises(Error) as raised:
            ckpt.async_save(items, str(tmp_path / "ck"), None, None, mode="snapshot")
        assert raised.value.code == "invalid_argument"
    assert not (tmp_path / "ck" / "metadata.json").exists()


def test_read_metadata_and_verify(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    items = _core.StateItems()
    items.add_tensor("w", a.ctypes.data, "F32", [3, 4])
    items.add_bytes("cfg", b"hello")
    _core.save(items, str(tmp_path / "ck"), **IO)

    meta = _core.read_metadata(str(tmp_path / "ck"))
    assert meta["version"] == 1
    assert meta["entries"]["w"] == {"kind": "tensor", "dtype": "F32", "shape": [3, 4],
                                    "chunks": [{"offsets": [0, 0], "sizes": [3, 4]}]}
    assert meta["entries"]["cfg"] == {"kind": "bytes", "length": 5}
    assert len(meta["files"]) == 1
    f = meta["files"][0]
    assert f["size"] == os.path.getsize(tmp_path / "ck" / f["path"])
    assert f["extent_size"] == 1 << 20 and f["extents"] == 1
    assert meta["total_bytes"] == f["size"]
    assert meta["planner_data"] == {}

    report = _core.verify(str(tmp_path / "ck"))
    assert report["ok"] and report["faults"] == []
    assert report["files"] == 1 and report["extents"] == 1 and report["bytes"] == f["size"]


def test_missing_dir_is_not_found_naming_it(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(Error) as raised:
        _core.load(_core.StateItems(), missing)
    assert raised.value.code == "not_found"
    assert missing in raised.value.where
    with pytest.raises(Error) as raised:
        _core.read_metadata(missing)
    assert raised.value.code == "not_found"


def test_overwrite_refused_then_allowed(tmp_path):
    items = items_of(random_arrays())
    _core.save(items, str(tmp_path / "ck"), **IO)
    with pytest.raises(Error) as raised:
        _core.save(items, str(tmp_path / "ck"), **IO)
    assert raised.value.code == "already_exists"
    _core.save(items, str(tmp_path / "ck"), overwrite=True, **IO)


def test_bad_items_are_invalid_argument_naming_the_fqn():
    a = np.zeros(4, dtype=np.float32)
    items = _core.StateItems()
    with pytest.raises(Error) as raised:
        items.add_tensor("x", a.ctypes.data, "F128", [4])
    assert (raised.value.code, raised.value.where) == ("invalid_argument", "x")
    items.add_tensor("x", a.ctypes.data, "F32", [4])
    with pytest.raises(Error) as raised:
        items.add_tensor("x", a.ctypes.data, "F32", [4])
    assert (raised.value.code, raised.value.where) == ("invalid_argument", "x")
    with pytest.raises(Error) as raised:
        items.add_tensors([("y", a.ctypes.data, "F32", [4]), ("y", a.ctypes.data, "F32", [4])])
    assert raised.value.where == "y"
    assert items.fqns() == ["x"]  # all or nothing
    with pytest.raises(Error) as raised:
        items.add_tensor("z", a.ctypes.data, "F32", [-1])
    assert raised.value.where == "z"
    with pytest.raises(Error) as raised:
        items.add_bytes("", b"")
    assert raised.value.code == "invalid_argument"
    with pytest.raises(Error) as raised:
        items.bytes_of("absent")
    assert (raised.value.code, raised.value.where) == ("not_found", "absent")


def test_bad_options_are_invalid_argument():
    with pytest.raises(Error) as raised:
        _core.Checkpointer(mode="eager")
    assert (raised.value.code, raised.value.where) == ("invalid_argument", "mode")
    with pytest.raises(Error) as raised:
        _core.Checkpointer(ring_bytes=-1)
    assert raised.value.where == "ring_bytes"
    with pytest.raises(Error) as raised:
        _core.Checkpointer(no_such_option=1)
    assert raised.value.where == "no_such_option"


def test_add_tensors_is_fast():
    a = np.zeros(1, dtype=np.float32)
    batch = [(f"layer{i}.weight", a.ctypes.data, "F32", [1]) for i in range(1000)]
    best = float("inf")
    for _ in range(5):
        items = _core.StateItems()
        start = time.perf_counter()
        items.add_tensors(batch)
        best = min(best, time.perf_counter() - start)
    assert len(items) == 1000
    assert best < 1e-3


def test_corrupted_extent_is_caught_and_named(tmp_path):
    arrays = random_arrays()
    _core.save(items_of(arrays), str(tmp_path / "ck"), **IO)
    data_file = _core.read_metadata(str(tmp_path / "ck"))["files"][0]["path"]
    path = tmp_path / "ck" / data_file
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(Error) as raised:
        _core.load(items_of(zeros_like(arrays)), str(tmp_path / "ck"), **IO)
    assert raised.value.code == "corrupt"
    assert data_file in raised.value.where
    report = _core.verify(str(tmp_path / "ck"))
    assert not report["ok"]
    assert any(data_file in fault["file"] for fault in report["faults"])


def test_callbacks_fire_once_on_another_thread_and_items_stay_alive(tmp_path):
    arrays = random_arrays()
    calls = []
    done = threading.Event()

    def on_staged(err):
        calls.append(("staged", err, threading.get_ident()))

    def on_committed(err):
        calls.append(("committed", err, threading.get_ident()))
        done.set()

    with _core.Checkpointer(**IO) as ckpt:
        items = items_of(arrays, {"b": b"kept"})
        ckpt.async_save(items, str(tmp_path / "ck"), on_staged, on_committed)
        del items
        gc.collect()
        assert done.wait(30)
        time.sleep(0.1)
    assert [c[:2] for c in calls] == [("staged", None), ("committed", None)]
    assert all(c[2] != threading.get_ident() for c in calls)
    back = zeros_like(arrays)
    loaded = items_of(back, {"b": b""})
    _core.load(loaded, str(tmp_path / "ck"), **IO)
    assert_same(arrays, back)
    assert loaded.bytes_of("b") == b"kept"


def test_cancel_reports_cancelled_or_commits(tmp_path):
    big = np.ones(64 << 20, dtype=np.uint8)
    items = _core.StateItems()
    items.add_tensor("big", big.ctypes.data, "U8", [big.size])
    got = {}
    done = threading.Event()
    with _core.Checkpointer(**IO) as ckpt:
        handle = ckpt.async_save(items, str(tmp_path / "ck"), lambda e: got.setdefault("s", e),
                                 lambda e: (got.setdefault("c", e), done.set()))
        handle.cancel()
        assert done.wait(30)
    if got["c"] is None:
        assert got["s"] is None
    else:
        assert got["c"].code == "cancelled"
        assert got["s"] is None or got["s"].code == "cancelled"
        assert not (tmp_path / "ck" / "metadata.json").exists()


def test_close_with_save_in_flight_returns(tmp_path):
    big = np.ones(64 << 20, dtype=np.uint8)
    items = _core.StateItems()
    items.add_tensor("big", big.ctypes.data, "U8", [big.size])
    got = []
    ckpt = _core.Checkpointer(**IO)
    ckpt.async_save(items, str(tmp_path / "ck"), got.append, got.append)
    start = time.monotonic()
    ckpt.close()
    ckpt.close()  # idempotent
    assert time.monotonic() - start < 30
    assert len(got) == 2
    assert all(e is None or isinstance(e, Error) for e in got)
    with pytest.raises(Error) as raised:
        ckpt.save(items, str(tmp_path / "again"))
    assert (raised.value.code, raised.value.where) == ("invalid_argument", "Checkpointer")


def test_close_from_inside_a_callback(tmp_path):
    items = items_of(random_arrays())
    ckpt = _core.Checkpointer(**IO)
    done = threading.Event()
    errors = []

    def on_committed(err):
        errors.append(err)
        ckpt.close()
        done.set()

    ckpt.async_save(items, str(tmp_path / "ck"), None, on_committed)
    assert done.wait(30)
    assert errors == [None]
    with pytest.raises(Error):
        ckpt.report()


def test_last_reference_dropped_inside_a_callback(tmp_path):
    # ~Checkpointer on the completion thread would wait for itself: it must be
    # handed to another thread, and the callback must return.
    holder = [_core.Checkpointer(**IO)]
    done = threading.Event()

    def on_committed(err):
        holder.clear()
        gc.collect()
        done.set()

    holder[0].async_save(items_of(random_arrays()), str(tmp_path / "ck"), None, on_committed)
    assert done.wait(30)
    assert _core.verify(str(tmp_path / "ck"))["ok"]
    with _core.Checkpointer(**IO) as again:  # the library is still usable
        again.save(items_of(random_arrays()), str(tmp_path / "ck2"))


def test_raising_callback_is_unraisable_and_save_goes_on(tmp_path):
    seen = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = lambda info: seen.append(info.exc_value)
    try:
        done = threading.Event()
        with _core.Checkpointer(**IO) as ckpt:
            def boom(err):
                raise ValueError("boom")
            ckpt.async_save(items_of(random_arrays()), str(tmp_path / "ck"), boom,
                            lambda err: done.set())
            assert done.wait(30)
    finally:
        sys.unraisablehook = old_hook
    assert any(isinstance(e, ValueError) for e in seen)
    assert _core.verify(str(tmp_path / "ck"))["ok"]


def run_python(code, tmp_path):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(tmp_path)],
                          env=env, timeout=60, capture_output=True, text=True)


def test_interpreter_exit_with_save_in_flight(tmp_path):
    result = run_python("""
        import sys, numpy as np
        from ringckpt import _core
        big = np.ones(256 << 20, dtype=np.uint8)
        items = _core.StateItems()
        items.add_tensor("big", big.ctypes.data, "U8", [big.size])
        ckpt = _core.Checkpointer(ring_bytes=32 << 20, extent_size=4 << 20)
        report = lambda err: print("done:", err is None or err.code, flush=True)
        ckpt.async_save(items, sys.argv[1] + "/ck", report, report)
        print("started", flush=True)
        """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "started" in result.stdout
    # Both callbacks ran (before finalization), with success or cancellation.
    lines = [line for line in result.stdout.splitlines() if line.startswith("done:")]
    assert len(lines) == 2 and all(l in ("done: True", "done: cancelled") for l in lines)


def test_checkpointer_garbage_collected_with_save_in_flight(tmp_path):
    result = run_python("""
        import gc, sys, numpy as np
        from ringckpt import _core
        big = np.ones(128 << 20, dtype=np.uint8)
        items = _core.StateItems()
        items.add_tensor("big", big.ctypes.data, "U8", [big.size])
        got = []
        ckpt = _core.Checkpointer(ring_bytes=32 << 20, extent_size=4 << 20)
        ckpt.async_save(items, sys.argv[1] + "/ck", got.append, got.append)
        del ckpt
        gc.collect()
        assert len(got) == 2, got
        print("collected", flush=True)
        """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "collected" in result.stdout
