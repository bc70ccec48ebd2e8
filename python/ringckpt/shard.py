"""A rank's part of a tensor split across ranks."""

import torch

from . import _compat

__all__ = ["Shard", "local_shards"]


class Shard:
    """`local` holds the elements [offsets, offsets + local.shape) of a tensor
    of `global_shape` that several ranks save together; each rank passes its
    own Shard (or several, in a list) under the same key."""

    __slots__ = ("local", "offsets", "global_shape")

    def __init__(self, local: torch.Tensor, offsets, global_shape):
        self.local = local
        self.offsets = tuple(int(o) for o in offsets)
        self.global_shape = tuple(int(s) for s in global_shape)
        if len(self.offsets) != local.dim() or len(self.global_shape) != local.dim():
            raise ValueError(f"Shard: offsets {self.offsets} and global shape "
                             f"{self.global_shape} need the {local.dim()} dimensions of the "
                             "local tensor")


def local_shards(value):
    """The Shards `value` stands for (a Shard, a list of Shards, a
    torch.distributed ShardedTensor or DTensor), or None if it is not sharded.
    torch's classes are recognised only once the program has imported them
    (see _compat)."""
    if isinstance(value, Shard):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Shard) for v in value):
        return list(value)
    sharded_tensor = _compat.sharded_tensor_class()
    if sharded_tensor is not None and isinstance(value, sharded_tensor):
        size = tuple(value.metadata().size)
        return [Shard(s.tensor, s.metadata.shard_offsets, size) for s in value.local_shards()]
    dtensor = _compat.dtensor_class()
    if dtensor is not None and isinstance(value, dtensor):
        return [Shard(*_compat.dtensor_part(value))]
    return None
