"""ringckpt.dcp: DCP's save_state_dict / load_state_dict (and a replay of the
2.4+ call sequence) with ringckpt's StorageWriter / StorageReader, compared
with DCP's own FileSystemWriter / FileSystemReader; damaged and hostile
checkpoints; overwrites. One gloo group of 2 ranks for the sharded case."""

import datetime
import os
import struct
import tempfile
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ringckpt
import ringckpt.dcp as rdcp
from ringckpt import _core
from ringckpt._compat import import_dcp, import_sharded_tensor

dcp = import_dcp()
LIMIT = 60  # seconds: no rank may wait longer for another
# What DCP's save/load raise: 1.13 wraps a rank's exception in a
# CheckpointException, which derives from BaseException, not Exception.
FAILS = (Exception, dcp.CheckpointException)


def _cause(error):
    """The exception a rank raised, out of DCP's CheckpointException."""
    if isinstance(error, dcp.CheckpointException):
        (failure,) = error.failures.values()
        return failure[0]
    return error


def _source():
    g = torch.Generator().manual_seed(5)
    return {"w": torch.randn(6, 5, generator=g),
            "h": torch.randn(7, generator=g).to(torch.bfloat16),
            "ids": torch.arange(-3, 9, dtype=torch.int64).reshape(3, 4),
            "step": 42,
            "extra": {"lr": [0.1, 0.01], "betas": {"b1": 0.9}}}


def _zeroed(sd):
    return {k: torch.zeros_like(v) if isinstance(v, torch.Tensor) else None
            for k, v in sd.items()}


def _equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def _save(sd, path, **kw):
    return dcp.save_state_dict(sd, storage_writer=rdcp.StorageWriter(path), no_dist=True, **kw)


def _load(sd, path, **kw):
    dcp.load_state_dict(sd, storage_reader=rdcp.StorageReader(path), no_dist=True, **kw)
    return sd


def _rank_dirs(path):
    return sorted(n for n in os.listdir(path) if ".rank" in n)


def test_round_trip_equals_source_and_filesystem_writer():
    src = _source()
    ours, theirs = tempfile.mkdtemp() + "/ours", tempfile.mkdtemp() + "/theirs"
    _save(src, ours)
    dcp.save_state_dict(src, storage_writer=dcp.FileSystemWriter(theirs), no_dist=True)
    a = _load(_zeroed(src), ours)
    b = _zeroed(src)
    dcp.load_state_dict(b, storage_reader=dcp.FileSystemReader(theirs), no_dist=True)
    _equal(a, src)
    _equal(b, src)
    _equal(a, b)
    dirs = _rank_dirs(ours)
    assert len(dirs) == 1 and dirs[0].endswith(".rank0")
    entries = _core.read_metadata(os.path.join(ours, dirs[0]))["entries"]
    assert entries["w"]["dtype"] == "F32" and entries["h"]["dtype"] == "BF16"
    assert entries["ids"]["dtype"] == "I64" and entries["step"]["kind"] == "bytes"
    # An unsupported dtype fails the save, naming the key.
    with pytest.raises(FAILS, match="cplx"):
        _save({"cplx": torch.zeros(2, dtype=torch.complex64)}, tempfile.mkdtemp())


def test_load_into_non_contiguous_destinations_fills_exactly_them():
    src = _source()
    path = tempfile.mkdtemp() + "/c"
    _save(src, path)
    wide = torch.full((6, 9), -1.0)
    column_slice = wide[:, 2:7]                     # (6, 5), strided
    transposed = torch.zeros(4, 3, dtype=torch.int64).t()  # (3, 4), transposed
    as_double = torch.zeros(7, dtype=torch.float64)  # cast on copy
    sd = {"w": column_slice, "ids": transposed, "h": as_double, "step": 0, "extra": None}
    _load(sd, path)
    assert torch.equal(wide[:, 2:7], src["w"])
    assert (wide[:, :2] == -1).all() and (wide[:, 7:] == -1).all()
    assert torch.equal(transposed, src["ids"])
    assert torch.equal(as_double, src["h"].double())
    assert sd["step"] == 42 and sd["extra"] == src["extra"]


def _data_file(path):
    """(file, offset of the first tensor byte) of the only rank dir at path."""
    (rank_dir,) = _rank_dirs(path)
    directory = os.path.join(path, rank_dir)
    meta = _core.read_metadata(directory)
    (entry,) = meta["files"]
    file = os.path.join(directory, entry["path"])
    with open(file, "rb") as f:
        (header,) = struct.unpack("<Q", f.read(8))
    return file, 8 + header


def test_flipped_bit_fails_load_naming_the_fault():
    w = torch.arange(4096, dtype=torch.float32)
    path = tempfile.mkdtemp() + "/c"
    _save({"w": w}, path)
    assert torch.equal(_load({"w": torch.zeros(4096)}, path)["w"], w)  # intact: loads
    file, data = _data_file(path)
    with open(file, "r+b") as f:
        f.seek(data + 1000)
        byte = f.read(1)
        f.seek(data + 1000)
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(FAILS) as caught:
        _load({"w": torch.zeros(4096)}, path)
    error = _cause(caught.value)
    assert isinstance(error, ringckpt.Error) and error.code == "corrupt", repr(error)
    assert "checksum mismatch" in str(error) and file in str(error), str(error)
    assert file in str(caught.value)  # DCP's own message names the file too


class _FailingPlanner(dcp.default_planner.DefaultSavePlanner):
    """Fails the save in write_data, on the item named `fqn`."""

    def __init__(self, fqn):
        super().__init__()
        self.fqn = fqn

    def resolve_data(self, write_item):
        if write_item.index.fqn == self.fqn:
            raise RuntimeError(f"resolve_data refuses {self.fqn}")
        return super().resolve_data(write_item)


def test_overwrite_replaces_and_a_failed_save_keeps_the_previous():
    a = {"w": torch.ones(3, 3), "step": 1}
    b = {"w": torch.full((3, 3), 2.0), "step": 2}
    path = tempfile.mkdtemp() + "/c"
    _save(a, path)
    dirs_a = _rank_dirs(path)
    _save(b, path)
    dirs_b = _rank_dirs(path)
    assert len(dirs_b) == 1 and not set(dirs_a) & set(dirs_b)  # A's dirs are gone
    _equal(_load({"w": torch.zeros(3, 3), "step": 0}, path), b)
    with pytest.raises(FAILS, match="resolve_data refuses w"):
        _save({"w": torch.full((3, 3), 3.0), "step": 3}, path, planner=_FailingPlanner("w"))
    _equal(_load({"w": torch.zeros(3, 3), "step": 0}, path), b)
    assert set(dirs_b) <= set(_rank_dirs(path))
    # The next save removes a failed save's leftover rank dir; a symlink named
    # like one is neither followed nor removed; other names are not touched.
    leftover = os.path.join(path, "f" * 32 + ".rank1")
    os.mkdir(leftover)
    open(os.path.join(leftover, "data"), "w").close()
    victim = tempfile.mkdtemp()
    open(os.path.join(victim, "keep"), "w").close()
    os.symlink(victim, os.path.join(path, "0" * 32 + ".rank7"))
    os.mkdir(os.path.join(path, "notes.rank0"))
    _save(a, path)
    assert not os.path.exists(leftover) and not set(dirs_b) & set(_rank_dirs(path))
    assert os.path.exists(os.path.join(victim, "keep"))
    assert os.path.islink(os.path.join(path, "0" * 32 + ".rank7"))
    assert os.path.isdir(os.path.join(path, "notes.rank0"))
    _equal(_load({"w": torch.zeros(3, 3), "step": 0}, path), a)


def _replay_save(writer, state_dict, checkpoint_id):
    """DCP 2.4+'s save sequence on one rank, with 1.13's DefaultSavePlanner."""
    writer.reset(checkpoint_id)
    storage_meta = writer.storage_meta()
    planner = dcp.default_planner.DefaultSavePlanner()
    planner.init(state_dict, True)
    writer.set_up_storage_writer(True)
    local = writer.prepare_local_plan(planner.create_local_plan())
    plans, metadata = planner.create_global_plan([local])
    plans = writer.prepare_global_plan(plans)
    final = planner.finish_plan(plans[0])
    results = writer.write_data(final, planner).wait()
    writer.finish(metadata, [results])
    return storage_meta


def _replay_load(reader, state_dict, checkpoint_id):
    """DCP 2.4+'s load sequence on one rank, with 1.13's DefaultLoadPlanner."""
    reader.reset(checkpoint_id)
    metadata = reader.read_metadata()
    planner = dcp.default_planner.DefaultLoadPlanner()
    planner.init(state_dict, metadata, True)
    reader.set_up_storage_reader(metadata, True)
    local = reader.prepare_local_plan(planner.create_local_plan())
    plans = reader.prepare_global_plan(planner.create_global_plan([local]))
    reader.read_data(planner.finish_plan(plans[0]), planner).wait()


def test_current_protocol_call_sequence_round_trips():
    src = _source()
    path = tempfile.mkdtemp() + "/c"
    checkpointer = ringckpt.Checkpointer(ring_bytes=8 << 20, extent_size=1 << 20,
                                         coordinator=None)
    writer = rdcp.StorageWriter("/nonexistent/placeholder", checkpointer=checkpointer)
    assert rdcp.StorageWriter.validate_checkpoint_id(path)
    assert rdcp.StorageReader.validate_checkpoint_id(path)
    assert not rdcp.StorageWriter.validate_checkpoint_id("s3://bucket/c")
    storage_meta = _replay_save(writer, src, path)
    assert writer.checkpoint_id == path
    if storage_meta is not None:  # 2.4+: StorageMeta naming the checkpoint
        assert storage_meta.checkpoint_id == path
    reader = rdcp.StorageReader("/nonexistent/placeholder", ring_bytes=4 << 20)
    got = _zeroed(src)
    _replay_load(reader, got, path)
    _equal(got, src)
    reader.reset()  # the deprecated entry points reset with no id: the path stays
    assert reader.checkpoint_id == path
    checkpointer.close()


def test_hostile_metadata_file_is_refused_naming_it(monkeypatch):
    path = tempfile.mkdtemp()
    file = os.path.join(path, ".metadata")
    reader = rdcp.StorageReader(path)
    with pytest.raises(ringckpt.Error, match="does not exist") as caught:
        reader.read_metadata()
    assert caught.value.code == "not_found"
    real = os.path.join(tempfile.mkdtemp(), "real")
    open(real, "wb").close()
    os.symlink(real, file)
    with pytest.raises(ringckpt.Error, match="symbolic link") as caught:
        reader.read_metadata()
    assert file in str(caught.value)
    os.unlink(file)
    os.mkfifo(file)  # opened without O_NONBLOCK this would hang
    with pytest.raises(ringckpt.Error, match="not a regular file") as caught:
        reader.read_metadata()
    assert file in str(caught.value)
    os.unlink(file)
    with open(file, "wb") as f:  # sparse: no disk used
        f.truncate(rdcp.METADATA_LIMIT + 1)
    with pytest.raises(ringckpt.Error, match="more than") as caught:
        reader.read_metadata()
    assert file in str(caught.value)
    with open(file, "wb") as f:
        f.write(b"not a pickle")
    with pytest.raises(ringckpt.Error, match="does not unpickle") as caught:
        reader.read_metadata()
    assert caught.value.code == "corrupt" and file in str(caught.value)


# --- 2 gloo ranks ------------------------------------------------------------

def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows_of(rank):
    """What rank r saves: rows r and r + 2 of a 4x3 tensor, one shard each."""
    return torch.arange(6.0).reshape(2, 3) + 100 * rank


def _whole():
    whole = torch.zeros(4, 3)
    for r in range(2):
        whole[r], whole[r + 2] = _rows_of(r)
    return whole


def _by_rows(st, rank, rows):
    """A 4x3 ShardedTensor of 4 one-row shards: rank r holds rows r and r + 2
    (two chunks of one fqn in one rank directory)."""
    shards = [st.Shard.from_tensor_and_offsets(rows[i:i + 1], [rank + 2 * i, 0], rank)
              for i in range(2)]
    return st.init_from_local_shards(shards, 4, 3)


def _by_columns(st, rank):
    """A zeroed 4x3 ShardedTensor split by columns: rank 0 holds 0-1, rank 1 holds 2."""
    c0, c1 = (0, 2) if rank == 0 else (2, 3)
    shard = st.Shard.from_tensor_and_offsets(torch.zeros(4, c1 - c0), [0, c0], rank)
    return st.init_from_local_shards([shard], 4, 3), (c0, c1)


def _ranks_worker(rank, world, port, ours, theirs):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=LIMIT))
    st = import_sharded_tensor()
    src = {"st": _by_rows(st, rank, _rows_of(rank)), "dense": torch.arange(5.0), "step": 9}
    dcp.save_state_dict(src, storage_writer=rdcp.StorageWriter(ours))
    dcp.save_state_dict(src, storage_writer=dcp.FileSystemWriter(theirs))
    dist.barrier()
    dirs = _rank_dirs(ours)
    assert sorted(d.rsplit(".", 1)[1] for d in dirs) == ["rank0", "rank1"], dirs
    mine = next(d for d in dirs if d.endswith(f".rank{rank}"))
    entries = _core.read_metadata(os.path.join(ours, mine))["entries"]
    # 1.13's planner: every rank writes its own shards, the coordinator the rest.
    expected = {"st", "st.chunk1"} | ({"dense", "step"} if rank == 0 else set())
    assert set(entries) == expected, entries
    readers = (lambda: rdcp.StorageReader(ours), lambda: dcp.FileSystemReader(theirs))
    loaded = []
    for reader in readers:
        sd = {"st": _by_rows(st, rank, torch.zeros(2, 3)), "dense": torch.zeros(5), "step": 0}
        dcp.load_state_dict(sd, storage_reader=reader())
        local = torch.cat([s.tensor for s in sd["st"].local_shards()])
        assert torch.equal(local, _rows_of(rank)), (rank, local)
        assert torch.equal(sd["dense"], torch.arange(5.0)) and sd["step"] == 9
        loaded.append(local)
    assert torch.equal(loaded[0], loaded[1])
    # A Checkpointer that coordinates ranks itself is refused, naming the path.
    with ringckpt.Checkpointer(ring_bytes=4 << 20, extent_size=1 << 20) as coordinated:
        for make in (rdcp.StorageWriter, rdcp.StorageReader):
            with pytest.raises(ringckpt.Error, match="coordinator=None") as refused:
                make(ours, checkpointer=coordinated)
            assert refused.value.code == "invalid_argument" and refused.value.where == ours
    # Resharded: columns out of row chunks (boxes inside chunks of both ranks).
    columns, (c0, c1) = _by_columns(st, rank)
    dcp.load_state_dict({"st": columns}, storage_reader=rdcp.StorageReader(ours))
    assert torch.equal(columns.local_shards()[0].tensor, _whole()[:, c0:c1])
    dist.barrier()
    dist.destroy_process_group()


def test_two_ranks_sharded_tensor_round_trips_like_filesystem_writer():
    ours, theirs = tempfile.mkdtemp() + "/ours", tempfile.mkdtemp() + "/theirs"
    context = mp.spawn(_ranks_worker, args=(2, _free_port(), ours, theirs), nprocs=2,
                       join=False)
    deadline = time.monotonic() + 2 * LIMIT
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the ranks did not finish within the limit")
