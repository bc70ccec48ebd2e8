"""The long-lived, non-blocking checkpointer a training loop keeps for its run."""

import concurrent.futures
import os

from . import _core
from .errors import as_error
from .items import LoadTarget, SaveItems, read_structure

__all__ = ["Checkpointer", "SaveHandle"]


class SaveHandle:
    """The two completions of one save, as concurrent.futures.Futures (so
    asyncio.wrap_future works): `staged` once every source byte has been read
    (the tensors may be mutated again), `committed` once data and metadata are
    durable and the checkpoint visible. Both raise ringckpt.Error on failure."""

    __slots__ = ("staged", "committed", "_core_handle")

    def __init__(self, staged, committed, core_handle):
        self.staged = staged
        self.committed = committed
        self._core_handle = core_handle

    def cancel(self) -> None:
        """Stops the save unless it has committed; then both futures raise
        ringckpt.Error with code "cancelled". Future.cancel() cannot stop a save:
        the futures are running from the start."""
        self._core_handle.cancel()


def _default_coordinator():
    """The ranks of torch.distributed when it is initialized, else None."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from .distributed import TorchCoordinator
        return TorchCoordinator()
    return None


def _running_future():
    future = concurrent.futures.Future()
    future.set_running_or_notify_cancel()
    return future


def _settle(future, error) -> None:
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class Checkpointer:
    """Owns the staging ring (ring_bytes of pre-faulted, registered memory),
    io_uring and ringckpt's threads; create one per run. Saves run one after
    another in the order asked. mode: "lazy" (async_save returns once the save
    is queued; staging copies while the caller computes), "bounded" (the same,
    memory capped at the ring however large the state dict) or "snapshot"
    (async_save returns once everything is copied; it must fit the ring).

    close() (or leaving a `with` block, garbage collection, interpreter exit)
    cancels saves not yet committed and waits for ringckpt's threads.

    The futures are settled, and their done-callbacks run, on ringckpt's one
    completion thread: a done-callback must not block on another of
    ringckpt's futures (it would wait for its own thread); hand such work to a
    thread of your own. A source tensor must not be mutated, resized or have
    its .data rebound before `staged` resolves (in snapshot mode: before
    async_save returns)."""

    def __init__(self, ring_bytes: int = 256 << 20, *, extent_size: int = 8 << 20,
                 queue_depth: int = 16, staging_threads: int = 2, direct_io: bool = True,
                 register_buffers: bool = True, max_file_bytes: int = 0, mode: str = "lazy",
                 coordinator="auto"):
        if isinstance(coordinator, str) and coordinator == "auto":
            coordinator = _default_coordinator()
        # On N ranks every save and load is a collective: a rank that fails
        # before it can start one still takes part, refusing it (see
        # _core.Checkpointer's refusal), so that no other rank waits for it.
        self._collective = coordinator is not None
        self._core = _core.Checkpointer(
            ring_bytes=ring_bytes, extent_size=extent_size, queue_depth=queue_depth,
            staging_threads=staging_threads, direct_io=direct_io,
            register_buffers=register_buffers, max_file_bytes=max_file_bytes, mode=mode,
            coordinator=coordinator)

    def async_save(self, state_dict, path, *, mode=None, overwrite: bool = False,
                   allow_pickle: bool = False) -> SaveHandle:
        """Plans (lazy, bounded: in the background) and returns; a snapshot save
        returns once every byte is copied (its `staged` future resolves
        moments later, on the completion thread). ringckpt keeps a reference
        to every tensor until `staged` resolves, so dropping the state dict
        early is safe; mutating a tensor before then is not."""
        try:
            save_items = SaveItems(state_dict, allow_pickle)
        except Exception as e:
            self._refuse_save(e, path, mode, overwrite)
            raise
        staged, committed = _running_future(), _running_future()
        sources = [save_items.sources]  # emptied once staged: the tensors may go
        # The save keeps its Checkpointer, as an executor's futures keep theirs:
        # Checkpointer().async_save(...) on a temporary runs to the end.
        owner = [self]

        def on_staged(error):
            sources.clear()
            _settle(staged, error)

        def on_committed(error):
            sources.clear()  # a save failing before staging fires this alone
            _settle(committed, error)
            owner.clear()

        core_handle = self._core.async_save(save_items.items, os.fspath(path), on_staged,
                                            on_committed, mode=mode, overwrite=overwrite)
        return SaveHandle(staged, committed, core_handle)

    def save(self, state_dict, path, *, mode=None, overwrite: bool = False,
             allow_pickle: bool = False) -> None:
        """Saves and returns once the checkpoint is durable and visible."""
        try:
            save_items = SaveItems(state_dict, allow_pickle)
        except Exception as e:
            self._refuse_save(e, path, mode, overwrite)
            raise
        self._core.save(save_items.items, os.fspath(path), mode=mode, overwrite=overwrite)

    def load(self, state_dict, path, *, allow_pickle: bool = False) -> None:
        """Fills every tensor of `state_dict` in place and puts the loaded
        non-tensor values into its containers, through the same ring; every
        extent is verified before its bytes are used."""
        path = os.fspath(path)
        structure = read_structure(self._core.load, path)
        try:
            target = LoadTarget(state_dict, path, structure, allow_pickle)
        except Exception as e:
            if self._collective:
                self._core.load(_core.StateItems(), path, refusal=as_error(e))
            raise
        target.run(self._core.load, path, collective=self._collective)

    def _refuse_save(self, exception, path, mode, overwrite) -> None:
        """On N ranks: runs this rank's part of the save as a refusal, so that
        it fails on every rank naming this one (the save's own futures are
        not needed: the caller gets `exception`)."""
        if self._collective:
            self._core.async_save(_core.StateItems(), os.fspath(path), None, None, mode=mode,
                                  overwrite=overwrite, refusal=as_error(exception))

    def plan_cache(self) -> dict:
        """How this rank's saves were planned: {"cold": n, "cached": n}; a save
        whose plan is unchanged since the previous one is cached (its plan is
        not sent again)."""
        return self._core.plan_cache()

    def report(self) -> dict:
        """What the I/O path did: direct_io, registered_buffers, notes."""
        return self._core.report()

    def close(self) -> None:
        self._core.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
