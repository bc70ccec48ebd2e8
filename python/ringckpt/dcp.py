"""PyTorch Distributed Checkpoint (DCP) storage on ringckpt.

    dcp.save_state_dict(sd, storage_writer=ringckpt.dcp.StorageWriter("ckpt"))
    dcp.load_state_dict(sd, storage_reader=ringckpt.dcp.StorageReader("ckpt"))

DCP's planners (its defaults or the caller's) decide what each rank writes and
reads; ringckpt moves the bytes: each rank's items go through its ring and
io_uring into one ringckpt checkpoint, and every extent's XXH3 is verified
before a loaded byte reaches the planner (a damaged extent fails the load with
ringckpt.Error "corrupt").

Layout of a checkpoint directory `path`:
  path/.metadata               DCP's Metadata, pickled as DCP keeps it, with
                               storage_data = {MetadataIndex: (rank dir, entry)}
                               (plain strs: the pickle needs no ringckpt class)
  path/<save id>.rank<i>/      rank i's items, one ringckpt checkpoint; each
                               WriteItem (a whole tensor, one chunk of one, or
                               a BYTE_IO blob) is one entry of its own
<save id> is a fresh uuid per save, so a save never writes into the
directories of the checkpoint it replaces: that one stays complete and
loadable until the new .metadata is renamed over it; its directories are
removed after that. Concurrent saves to one path are not supported.

Works with torch 1.13's interface (init) and the current one (2.4+: reset,
set_up_storage_writer/reader, storage_meta, validate_checkpoint_id); the
version differences live in _compat.py. Like DCP's own reader, the reader
unpickles .metadata: load only checkpoints you trust.
"""

import dataclasses
import io
import os
import pickle
import re
import shutil
import stat
import uuid
import warnings

import torch
import torch.futures

from . import _core, _compat
from .errors import Error
from .items import _checked_tensor, to_torch_dtype

_dcp = _compat.import_dcp()
_WriteItemType, _LoadItemType = _compat.dcp_item_types()

__all__ = ["StorageWriter", "StorageReader", "torch_dcp", "METADATA_FILE", "METADATA_LIMIT"]

METADATA_FILE = ".metadata"
METADATA_LIMIT = 1 << 30  # bytes: a bigger .metadata is refused, not read
_RANK_DIR = re.compile(r"[0-9a-f]{32}\.rank[0-9]+\Z")  # <save id>.rank<i>


def torch_dcp():
    """torch's DCP package, whose save_state_dict / load_state_dict take these
    storages: torch.distributed.checkpoint, or 1.13's
    torch.distributed._shard.checkpoint (imported with _compat's work-around)."""
    return _dcp


def _completed(value) -> torch.futures.Future:
    future = torch.futures.Future()
    future.set_result(value)
    return future


def _io_error(where: str, e: OSError) -> Error:
    return Error("io", where, e.strerror or str(e))


def _is_path_like(checkpoint_id) -> bool:
    """What FileSystemWriter accepts as a checkpoint_id: a path, not a URL."""
    try:
        return "://" not in os.fspath(checkpoint_id)
    except TypeError:
        return False


class _Storage:
    """What the writer and the reader share: the checkpoint directory and
    how ringckpt is called (io options, or a caller's Checkpointer)."""

    def __init__(self, path, checkpointer, io_options):
        self.path = os.fspath(path)
        if checkpointer is not None and checkpointer._collective:
            # Under DCP each rank reads and writes a directory of its own and
            # DCP coordinates the ranks: ringckpt's collectives would wait for
            # ranks that save elsewhere.
            raise Error("invalid_argument", self.path,
                        "checkpointer= must be a Checkpointer made with coordinator=None "
                        "(DCP coordinates the ranks); this one coordinates ranks itself")
        self._checkpointer = checkpointer
        self._io = io_options

    @property
    def checkpoint_id(self) -> str:
        """The checkpoint directory (DCP 2.4+ reads it for logging)."""
        return self.path

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id) -> bool:
        """True for a local path (str or os.PathLike without "://")."""
        return _is_path_like(checkpoint_id)

    def _save(self, items, directory: str) -> None:
        if self._checkpointer is not None:
            self._checkpointer._core.save(items, directory, mode=None, overwrite=False)
        else:
            _core.save(items, directory, **self._io)

    def _load(self, items, directory: str) -> None:
        if self._checkpointer is not None:
            self._checkpointer._core.load(items, directory)
        else:
            _core.load(items, directory, **self._io)


class StorageWriter(_Storage, _dcp.StorageWriter):
    """DCP's StorageWriter writing into the directory `path` through ringckpt.
    `io`: ring_bytes, extent_size, queue_depth, ... (as ringckpt.save), or
    checkpointer=a ringckpt.Checkpointer made with coordinator=None (each rank
    writes its own directory: DCP, not ringckpt, coordinates the ranks)."""

    def __init__(self, path, *, checkpointer=None, **io):
        super().__init__(path, checkpointer, io)
        self._save_id = uuid.uuid4().hex
        self._is_coordinator = False

    # --- torch 2.4+ -------------------------------------------------------
    def reset(self, checkpoint_id=None) -> None:
        """Starts a new save, into `checkpoint_id` when given."""
        if checkpoint_id:
            self.path = os.fspath(checkpoint_id)
        self._save_id = uuid.uuid4().hex

    def set_up_storage_writer(self, is_coordinator: bool) -> None:
        self._is_coordinator = is_coordinator

    def storage_meta(self):
        """DCP's StorageMeta for this save, or None where DCP has none (1.13)."""
        storage_meta = _compat.dcp_storage_meta()
        if storage_meta is None:
            return None
        return storage_meta(checkpoint_id=self.path, save_id=self._save_id)

    # --- torch 1.13 -------------------------------------------------------
    def init(self, is_coordinator: bool) -> None:
        self.set_up_storage_writer(is_coordinator)

    # --- both -------------------------------------------------------------
    def prepare_local_plan(self, plan):
        return plan

    def prepare_global_plan(self, plans):
        """(coordinator) Makes `path` and gives plan i the directory
        <fresh save id>.rank<i> in its storage_data."""
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise _io_error(self.path, e) from None
        self._save_id = uuid.uuid4().hex
        return [dataclasses.replace(plan, storage_data=f"{self._save_id}.rank{i}")
                for i, plan in enumerate(plans)]

    def write_data(self, plan, planner):
        """Writes this rank's items as one ringckpt checkpoint in its rank
        directory; returns a completed Future of its WriteResults."""
        rank_dir = plan.storage_data
        if not isinstance(rank_dir, str) or not _RANK_DIR.match(rank_dir):
            raise Error("invalid_argument", self.path, "write_data got a plan without a rank "
                        "directory: prepare_global_plan of ringckpt.dcp.StorageWriter did "
                        "not make it")
        batch = _WriteBatch(plan.items)
        write_result = _compat.dcp_write_result()
        results = []
        for item in plan.items:
            entry, size = batch.add(item, planner)
            results.append(write_result(index=item.index, size_in_bytes=size,
                                        storage_data=(rank_dir, entry)))
        if results:  # a rank with nothing to write leaves no directory
            self._save(batch.finished(), os.path.join(self.path, rank_dir))
        return _completed(results)

    def finish(self, metadata, results) -> None:
        """(coordinator) Commits the save: .metadata written, fsynced and
        renamed over the previous one; then removes rank directories that it
        does not reference (the replaced save's, a failed save's)."""
        metadata.storage_data = {r.index: r.storage_data for rank in results for r in rank}
        if _compat.dcp_storage_meta() is not None and hasattr(metadata, "storage_meta"):
            metadata.storage_meta = self.storage_meta()
        _commit_metadata(self.path, pickle.dumps(metadata))
        keep = {data[0] for data in metadata.storage_data.values()}
        _remove_unreferenced(self.path, keep)


class _WriteBatch:
    """One rank's WriteItems as a StateItems. Each item is an entry of its own
    (named by its fqn; a further chunk of one fqn gets "<fqn>.chunk<k>"),
    so a rank's checkpoint is complete on its own. `sources` keeps every
    tensor the StateItems points into alive until the save returns."""

    def __init__(self, write_items):
        self.items = _core.StateItems()
        self.sources = []
        self._tensors = []  # (entry, data_ptr, dtype, shape), added in one call
        self._used = {item.index.fqn for item in write_items}
        self._given = set()

    def _entry(self, fqn: str) -> str:
        if fqn not in self._given:
            self._given.add(fqn)
            return fqn
        k = 1
        while f"{fqn}.chunk{k}" in self._used:
            k += 1
        name = f"{fqn}.chunk{k}"
        self._used.add(name)
        return name

    def add(self, item, planner):
        """Adds `item` (its data resolved by `planner`); returns its entry's
        name and its size in bytes."""
        fqn = item.index.fqn
        entry = self._entry(fqn)
        data = planner.resolve_data(item)
        if item.type == _WriteItemType.BYTE_IO:
            raw = data.getvalue() if isinstance(data, io.BytesIO) else bytes(data)
            self.items.add_bytes(entry, raw)
            size = len(raw)
        else:
            tensor = data.detach()
            if not tensor.is_cpu:
                tensor = tensor.cpu()
            if not tensor.is_contiguous():
                tensor = tensor.contiguous()
            dtype = _checked_tensor(fqn, tensor)
            sizes = tuple(item.tensor_data.chunk.sizes)
            if tuple(tensor.shape) != sizes:
                raise Error("mismatch", fqn, f"the planner resolved a tensor of shape "
                            f"{tuple(tensor.shape)} for a chunk of shape {sizes}")
            self.sources.append(tensor)
            self._tensors.append((entry, tensor.data_ptr(), dtype, sizes))
            size = tensor.numel() * tensor.element_size()
        return entry, size

    def finished(self):
        """The StateItems, every item added."""
        if self._tensors:
            self.items.add_tensors(self._tensors)
            self._tensors = []
        return self.items


def _commit_metadata(path: str, data: bytes) -> None:
    """Writes `data` to path/.metadata.tmp (a fresh file: a link or anything
    else there is removed first, never followed), fsyncs it, renames it to
    .metadata and fsyncs the directory."""
    tmp = METADATA_FILE + ".tmp"
    try:
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise _io_error(path, e) from None
    try:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644, dir_fd=dir_fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, METADATA_FILE, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    except OSError as e:
        raise _io_error(os.path.join(path, tmp), e) from None
    finally:
        os.close(dir_fd)


def _remove_unreferenced(path: str, keep) -> None:
    """Removes path's real directories named <save id>.rank<i> that are not in
    `keep`; a symlink is never followed or removed. The save has committed:
    a failure here is a warning, not an error."""
    def warn(_function, target, exc_info):
        warnings.warn(f"ringckpt.dcp: could not remove the stale {target}: {exc_info[1]}",
                      RuntimeWarning, stacklevel=2)
    try:
        with os.scandir(path) as entries:
            stale = [e.path for e in entries if _RANK_DIR.match(e.name) and e.name not in keep
                     and e.is_dir(follow_symlinks=False)]
    except OSError as e:
        warn(None, path, (None, e, None))
        return
    for directory in stale:
        shutil.rmtree(directory, onerror=warn)


def _read_metadata_file(file: str) -> bytes:
    """The bytes of `file`, a regular file of at most METADATA_LIMIT bytes;
    a symlink, FIFO, device or directory is refused without blocking."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Error("not_found", file, "does not exist: no DCP checkpoint was committed "
                    "there") from None
    except OSError as e:
        if os.path.islink(file):
            raise Error("invalid_argument", file, "is a symbolic link: refused") from None
        raise _io_error(file, e) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Error("invalid_argument", file, "is not a regular file: refused")
        if st.st_size > METADATA_LIMIT:
            raise Error("invalid_argument", file, f"holds {st.st_size} bytes, more than "
                        f"the {METADATA_LIMIT} a DCP .metadata may: refused")
        chunks, total = [], 0
        while total <= METADATA_LIMIT:
            chunk = os.read(fd, min(1 << 24, METADATA_LIMIT + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > METADATA_LIMIT:
            raise Error("invalid_argument", file, f"grew past {METADATA_LIMIT} bytes while "
                        "read: refused")
        return b"".join(chunks)
    except OSError as e:
        raise _io_error(file, e) from None
    finally:
        os.close(fd)


class StorageReader(_Storage, _dcp.StorageReader):
    """DCP's StorageReader for a checkpoint that ringckpt.dcp.StorageWriter
    wrote into `path`. `io` and `checkpointer` as for StorageWriter."""

    def __init__(self, path, *, checkpointer=None, **io):
        super().__init__(path, checkpointer, io)
        self._storage_data = None

    # --- torch 2.4+ -------------------------------------------------------
    def reset(self, checkpoint_id=None) -> None:
        """Starts a new load, from `checkpoint_id` when given."""
        if checkpoint_id:
            self.path = os.fspath(checkpoint_id)
        self._storage_data = None

    def set_up_storage_reader(self, metadata, is_coordinator: bool) -> None:
        self._storage_data = metadata.storage_data

    # --- torch 1.13 -------------------------------------------------------
    def init(self, metadata, is_coordinator: bool) -> None:
        self.set_up_storage_reader(metadata, is_coordinator)

    # --- both -------------------------------------------------------------
    def read_metadata(self):
        """DCP's Metadata from path/.metadata (see _read_metadata_file)."""
        file = os.path.join(self.path, METADATA_FILE)
        data = _read_metadata_file(file)
        try:
            metadata = pickle.loads(data)
        except Exception as e:
            raise Error("corrupt", file, f"does not unpickle: {e}") from None
        if not isinstance(metadata, _dcp.Metadata):
            raise Error("corrupt", file, f"holds a {type(metadata).__name__}, not DCP's "
                        "Metadata")
        return metadata

    def prepare_local_plan(self, plan):
        return plan

    def prepare_global_plan(self, plans):
        return plans

    def read_data(self, plan, planner):
        """Loads the plan's items, one ringckpt load per rank directory;
        returns a completed Future."""
        by_dir = {}
        for request in plan.items:
            rank_dir, entry = self._location(request.storage_index)
            by_dir.setdefault(rank_dir, []).append((request, entry))
        for rank_dir, requests in by_dir.items():
            self._read_rank_dir(rank_dir, requests, planner)
        return _completed(None)

    def _location(self, index):
        """(rank dir, entry) holding the item at `index`."""
        file = os.path.join(self.path, METADATA_FILE)
        if self._storage_data is None:
            raise Error("invalid_argument", self.path, "read_data before "
                        "set_up_storage_reader (init): no storage data")
        location = self._storage_data.get(index)
        if location is None:
            raise Error("corrupt", file, f"has no storage data for {index.fqn} "
                        f"(offset {index.offset})")
        if (not isinstance(location, tuple) or len(location) != 2
                or not isinstance(location[0], str) or not _RANK_DIR.match(location[0])
                or not isinstance(location[1], str)):
            raise Error("corrupt", file, f"stores {location!r} for {index.fqn}, not a "
                        "ringckpt rank directory and entry (written by another writer?)")
        return location

    def _read_rank_dir(self, rank_dir: str, requests, planner) -> None:
        directory = os.path.join(self.path, rank_dir)
        stored = _core.read_metadata(directory)["entries"]
        batch = _ReadBatch(directory, stored)
        for request, entry in requests:
            batch.add(request, entry, planner)
        self._load(batch.items, directory)
        batch.deliver(planner)


class _ReadBatch:
    """The ReadItems of one rank directory as one StateItems: a blob's bytes
    loaded for planner.load_bytes; a tensor's box loaded straight into the
    planner's tensor when that is CPU, contiguous and of the stored dtype,
    else into a stand-in copied into it after the load."""

    def __init__(self, directory: str, stored):
        self.items = _core.StateItems()
        self._directory = directory
        self._stored = stored
        self._blobs = []     # (request, entry)
        self._tensors = []   # (request, target, written): written is target or a stand-in
        self._added = set()  # blob entries already asked for

    def _stored_entry(self, entry: str, kind: str):
        info = self._stored.get(entry)
        if info is None or info["kind"] != kind:
            raise Error("corrupt", self._directory, f"has no {kind} entry {entry}")
        return info

    def add(self, request, entry: str, planner) -> None:
        if request.type == _LoadItemType.BYTE_IO:
            self._stored_entry(entry, "bytes")
            if entry not in self._added:
                self._added.add(entry)
                self.items.add_bytes(entry, b"")
            self._blobs.append((request, entry))
            return
        info = self._stored_entry(entry, "tensor")
        fqn = request.dest_index.fqn
        dtype = to_torch_dtype(info["dtype"], f"{self._directory}: {entry}")
        lengths = tuple(request.lengths)
        target = planner.resolve_tensor(request).detach()
        if tuple(target.shape) != lengths:
            raise Error("mismatch", fqn, f"the planner resolved a tensor of shape "
                        f"{tuple(target.shape)} for a read of shape {lengths}")
        written = target
        if not (target.is_cpu and target.is_contiguous() and target.dtype == dtype):
            written = torch.empty(lengths, dtype=dtype)
        self.items.add_shard(entry, written.data_ptr(), info["dtype"], lengths,
                             tuple(request.storage_offsets), tuple(info["shape"]))
        self._tensors.append((request, target, written))

    def deliver(self, planner) -> None:
        """After the load: blobs to load_bytes, stand-ins into their targets,
        every tensor to commit_tensor."""
        for request, entry in self._blobs:
            planner.load_bytes(request, io.BytesIO(self.items.bytes_of(entry)))
        with torch.no_grad():
            for request, target, written in self._tensors:
                if written is not target:
                    target.copy_(written)
                planner.commit_tensor(request, target)
