"""ringckpt's collectives over torch.distributed: its own gloo group, used on
ringckpt's control thread only (never the caller's), whatever backend the
training job's default group has."""

import datetime

import torch.distributed as dist

__all__ = ["TorchCoordinator"]

# How long a collective of ringckpt's group waits for a rank that never
# comes. A rank that dies fails the others at once ("Connection closed by
# peer"); one that hangs, after this. A timed-out gloo group stays broken.
DEFAULT_TIMEOUT = datetime.timedelta(minutes=10)


class TorchCoordinator:
    """The methods ringckpt's C++ PythonCoordinator calls: payloads are bytes,
    rank 0 of the group is the coordinator."""

    def __init__(self, group=None, timeout=DEFAULT_TIMEOUT):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("ringckpt: torch.distributed is not initialized")
        self._timeout = timeout
        self._group = group
        if group is None:
            self._ranks = list(range(dist.get_world_size()))
        else:
            self._ranks = [dist.get_global_rank(group, r) if hasattr(dist, "get_global_rank")
                           else dist.distributed_c10d._get_global_rank(group, r)
                           for r in range(dist.get_world_size(group))]
        self._root = self._ranks[0]
        self._broken = None  # why a collective failed; the group is unusable after

    def rank(self):
        return dist.get_rank(self._group)

    def world_size(self):
        return dist.get_world_size(self._group)

    def duplicate(self):
        # Collective: every rank of the job calls new_group in the same order
        # (a Checkpointer is made on every rank, at the same point).
        group = dist.new_group(ranks=self._ranks, backend="gloo", timeout=self._timeout)
        return TorchCoordinator(group, self._timeout)

    def _collective(self, name, run):
        """Runs one collective of the group. After a failure the group is
        broken for good (gloo closes its pairs on a timeout), so every later
        collective fails at once, saying why."""
        if self._broken is not None:
            raise RuntimeError(f"ringckpt's group failed in an earlier collective "
                               f"({self._broken}); make a new Checkpointer")
        try:
            return run()
        except Exception as e:
            self._broken = f"{name}: {e}"
            raise RuntimeError(f"a rank of ringckpt's group died, or did not answer within "
                               f"{self._timeout}: {e}") from e

    def gather(self, payload):
        out = [None] * self.world_size() if self.rank() == 0 else None
        self._collective("gather", lambda: dist.gather_object(
            payload, out, dst=self._root, group=self._group))
        return out

    def scatter(self, payloads):
        out = [None]
        self._collective("scatter", lambda: dist.scatter_object_list(
            out, payloads, src=self._root, group=self._group))
        return out[0]

    def broadcast(self, payload):
        box = [payload]
        self._collective("broadcast", lambda: dist.broadcast_object_list(
            box, src=self._root, group=self._group))
        return box[0]
