"""ringckpt for PyTorch: state dicts saved at the speed of the disk without
stopping the training loop, every extent verified on load.

    ck = ringckpt.Checkpointer(ring_bytes=1 << 30)
    h = ck.async_save({"model": model.state_dict(), "optim": opt.state_dict()}, "ckpt/1")
    h.staged.result()      # before opt.step() mutates the tensors
    h.committed.result()   # durable and visible
    state = ringckpt.load_state_dict("ckpt/1")
"""

from .errors import Error
from .api import inspect, load, load_state_dict, save, verify
from .checkpointer import Checkpointer, SaveHandle
from .shard import Shard

__all__ = ["Checkpointer", "Error", "SaveHandle", "Shard", "inspect", "load", "load_state_dict",
           "save", "verify"]
