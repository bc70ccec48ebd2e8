"""ringckpt for PyTorch: state dicts saved at the speed of the disk, verified on load."""

from .errors import Error

__all__ = ["Error"]
