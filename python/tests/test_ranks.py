"""ringckpt.Checkpointer over torch.distributed: gloo ranks started with
torch.multiprocessing, one checkpoint from several ranks, resharded on load,
and failures that reach every rank within a time limit."""

import os
import socket
import tempfile
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ringckpt
import ringckpt.distributed
from ringckpt import _compat

LIMIT = 60  # seconds: no rank may wait longer for another


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)


def _model():
    g = torch.Generator().manual_seed(11)
    return {"w": torch.randn(9, 4, generator=g), "c": torch.randn(3, 10, generator=g),
            "b": torch.arange(5.0), "st": torch.randn(7, 3, generator=g), "step": 7}


def _sharded_rows(full, rank, world):
    """A torch ShardedTensor of `full` split by rows (uneven) over the ranks."""
    st = _compat.import_sharded_tensor()
    r0, r1 = _rows(rank, world, full.shape[0])
    shard = st.Shard.from_tensor_and_offsets(full[r0:r1].clone(), [r0, 0], rank)
    return st.init_from_local_shards([shard], *full.shape)


def _rows(rank, world, n):  # uneven: the last rank holds the rest
    size = n // world
    lo = rank * size
    return lo, (n if rank == world - 1 else lo + size)


def _saved_state(rank, world):
    m = _model()
    r0, r1 = _rows(rank, world, 9)
    c0, c1 = _rows(rank, world, 10)
    return {"w": ringckpt.Shard(m["w"][r0:r1], (r0, 0), (9, 4)),
            "c": ringckpt.Shard(m["c"][:, c0:c1], (0, c0), (3, 10)),  # not contiguous
            "b": m["b"], "st": _sharded_rows(m["st"], rank, world), "step": m["step"]}


def _save(rank, world, port, path, steps):
    _init(rank, world, port)
    sd = _saved_state(rank, world)
    with ringckpt.Checkpointer(ring_bytes=8 << 20, extent_size=1 << 20) as ck:
        for _ in range(steps):
            ck.async_save(sd, path, overwrite=True).committed.result(timeout=LIMIT)
        plans = ck.plan_cache()
    assert plans == {"cold": 1, "cached": steps - 1}, plans
    dist.destroy_process_group()


def _load_columns(rank, world, port, path):
    _init(rank, world, port)
    m = _model()
    c0, c1 = _rows(rank, world, 4)
    dest = torch.zeros(9, c1 - c0)
    sd = {"w": ringckpt.Shard(dest, (0, c0), (9, 4)), "b": torch.zeros(5), "step": 0,
          "st": _sharded_rows(torch.zeros(7, 3), rank, world)}
    with ringckpt.Checkpointer(ring_bytes=8 << 20, extent_size=1 << 20) as ck:
        ck.load(sd, path)
    assert torch.equal(dest, m["w"][:, c0:c1])
    r0, r1 = _rows(rank, world, 7)
    assert torch.equal(sd["st"].local_shards()[0].tensor, m["st"][r0:r1])
    assert torch.equal(sd["b"], m["b"]) and sd["step"] == 7
    dist.destroy_process_group()


def test_three_ranks_save_shards_two_load_them_one_loads_whole_tensors():
    path = tempfile.mkdtemp() + "/ckpt"
    mp.spawn(_save, args=(3, _free_port(), path, 5), nprocs=3)  # 5 async saves, plan reused
    mp.spawn(_load_columns, args=(2, _free_port(), path), nprocs=2)
    whole = ringckpt.load_state_dict(path)
    m = _model()
    for key in ("w", "c", "b", "st"):
        assert torch.equal(whole[key], m[key]), key
    assert whole["step"] == 7
    assert ringckpt.verify(path)["ok"]


def _outcome(run):
    """(seconds, "done" or the ringckpt.Error's text) of run()."""
    t0 = time.monotonic()
    try:
        run()
        message = "done"
    except ringckpt.Error as e:
        message = str(e)
    return time.monotonic() - t0, message


def _failures(rank, world, port, path, out):
    _init(rank, world, port)
    results = []
    with ringckpt.Checkpointer(ring_bytes=8 << 20, extent_size=1 << 20) as ck:
        # Rank 1 cannot even build its items (a value that needs allow_pickle):
        # it raises at once, and still fails the save on rank 0, named.
        sd = {"w": torch.zeros(8, 8)}
        if rank == 1:
            sd["obj"] = object()
        results.append(_outcome(lambda: ck.async_save(sd, path).committed.result(timeout=LIMIT)))
        # The planners disagree (F32 against F64): every rank fails, naming rank 1.
        sd = {"w": torch.zeros(8, 8, dtype=torch.float32 if rank == 0 else torch.float64)}
        results.append(_outcome(lambda: ck.async_save(sd, path).committed.result(timeout=LIMIT)))
        # The same Checkpointer still saves; then rank 1 asks to load a key the
        # checkpoint lacks: every rank's load fails, naming it.
        ck.save({"w": torch.ones(8, 8)}, path)
        sd = {"w": torch.zeros(8, 8)} if rank == 0 else {"absent": torch.zeros(8, 8)}
        results.append(_outcome(lambda: ck.load(sd, path)))
    results.append(_outcome(lambda: _raise_mid_save(rank, path + "-mid")))
    with open(f"{out}/{rank}", "w") as f:
        f.write(repr(results))
    dist.destroy_process_group()


def _raise_mid_save(rank, path):
    """Rank 1's training code raises while its save is in flight: leaving the
    with block closes the Checkpointer, which cancels the save, and the save
    fails on every rank, naming rank 1."""
    handle = None
    try:
        with ringckpt.Checkpointer(ring_bytes=8 << 20, extent_size=1 << 20) as ck:
            handle = ck.async_save({"big": torch.ones(8 << 20)}, path)
            if rank == 1:
                raise RuntimeError("the training step failed")
            handle.committed.result(timeout=LIMIT)
    except RuntimeError:
        handle.committed.result(timeout=LIMIT)  # raises the save's own error


def test_a_rank_that_fails_fails_every_rank():
    path = tempfile.mkdtemp() + "/ckpt"
    out = tempfile.mkdtemp()
    mp.spawn(_failures, args=(2, _free_port(), path, out), nprocs=2)
    for rank in (0, 1):
        pickled, typed, missing, raised = eval(open(f"{out}/{rank}").read())
        for took, message in (pickled, typed, missing, raised):
            assert took < LIMIT, message
        # Rank 1 raises its own error for what it could not start; rank 0's
        # names rank 1.
        for took, message in (pickled, typed, missing, raised) if rank == 0 else (typed,):
            assert "rank 1" in message, message
        assert "cancel" in raised[1], raised
        assert "obj" in pickled[1] and "allow_pickle" in pickled[1], pickled
        assert "F64" in typed[1], typed
        assert "absent" in missing[1], missing
    assert torch.equal(ringckpt.load_state_dict(path)["w"], torch.ones(8, 8))
    assert not os.path.exists(path + "-mid/metadata.json")


class _DiesAfterWriting(ringckpt.distributed.TorchCoordinator):
    """Rank 1's collectives, which kill the process once its data is written:
    in the gather of the write results, before the commit."""

    planned = False

    def duplicate(self):
        inner = super().duplicate()
        inner.__class__ = _DiesAfterWriting
        return inner

    def scatter(self, payloads):
        _DiesAfterWriting.planned = True
        return super().scatter(payloads)

    def gather(self, payload):
        if _DiesAfterWriting.planned:
            os._exit(3)
        return super().gather(payload)


def _dies(rank, world, port, path, out):
    _init(rank, world, port)
    coordinator = (_DiesAfterWriting() if rank == 1 else
                   ringckpt.distributed.TorchCoordinator())
    ck = ringckpt.Checkpointer(ring_bytes=8 << 20, extent_size=1 << 20, coordinator=coordinator)
    took, message = _outcome(lambda: ck.async_save({"w": torch.zeros(64, 64)}, path)
                             .committed.result(timeout=LIMIT))
    with open(f"{out}/{rank}", "w") as f:
        f.write(f"{took}\n{message}")
    ck.close()
    os._exit(0)


def test_a_rank_that_dies_mid_save_fails_the_others_within_the_limit():
    path = tempfile.mkdtemp() + "/ckpt"
    out = tempfile.mkdtemp()
    ctx = mp.get_context("spawn")  # not mp.spawn: it would tear the survivor down itself
    port = _free_port()
    procs = [ctx.Process(target=_dies, args=(r, 2, port, path, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(LIMIT + 30)
    assert [p.exitcode for p in procs] == [0, 3]
    took, message = open(f"{out}/0").read().split("\n", 1)
    assert float(took) < LIMIT
    assert "died" in message, message
    assert not os.path.exists(path + "/metadata.json")


def test_the_readme_torchrun_example_runs_under_torchrun():
    """The README's train.py, started as it says, with 2 ranks instead of 4."""
    import re
    import shutil
    import subprocess
    import sys
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    code = re.search(r"```python\n(# train\.py — torchrun.*?)```", readme, re.S).group(1)
    work = tempfile.mkdtemp()
    with open(f"{work}/train.py", "w") as f:
        f.write(code.replace("    ...  ", "    pass "))
    torchrun = shutil.which("torchrun") or f"{sys.executable} -m torch.distributed.run"
    done = subprocess.run(torchrun.split() + ["--nproc_per_node", "2", "-r", "1", "-t", "1",
                          "--master_port", str(_free_port()), "train.py"],
                          cwd=work, capture_output=True, text=True, timeout=LIMIT * 2)
    assert done.returncode == 0, done.stdout + done.stderr
    whole = ringckpt.load_state_dict(f"{work}/ckpt/step-3")
    assert whole["step"] == 3 and tuple(whole["w"].shape) == (4096, 1024)
    assert torch.equal(whole["bias"], torch.zeros(1024))
