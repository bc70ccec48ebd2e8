"""Conversion of checkpoints between formats: `python3 -m ringckpt convert SRC DST`.

    torch.save file  -> ringckpt checkpoint   (torch.load, then ringckpt.save)
    DCP checkpoint   -> ringckpt checkpoint   (DCP's load into tensors allocated from
                                               its metadata, then ringckpt.save)
    ringckpt checkpoint -> torch.save file    (ringckpt.load_state_dict, then torch.save
                                               to DST.tmp, fsync, rename)

Tensors are copied bit for bit and the nesting of the state dict is kept.
What SRC is comes from what it holds: a regular file is a torch.save file, a
directory with metadata.json a ringckpt checkpoint, a directory with .metadata
a DCP checkpoint (written by DCP's FileSystemWriter or by ringckpt.dcp).
Large conversions report progress on stderr.
"""

import argparse
import os
import pickle
import re
import sys
import time
import warnings
from collections.abc import Mapping

import torch

from . import _compat, _core, api
from .errors import Error

__all__ = ["convert", "add_subcommand", "run_subcommand", "parse_size",
           "PROGRESS_THRESHOLD"]

# Conversions moving more bytes than this report progress on stderr.
PROGRESS_THRESHOLD = 64 << 20
# Seconds between two progress lines of one phase, at least.
PROGRESS_INTERVAL = 0.5

_TORCH, _RINGCKPT, _DCP = "torch.save file", "ringckpt checkpoint", "DCP checkpoint"
# The per-rank directories ringckpt.dcp.StorageWriter writes: <save id>.rank<i>.
_RINGCKPT_DCP_RANK_DIR = re.compile(r".+\.rank[0-9]+\Z")
_SIZE = re.compile(r"\s*([0-9]+)\s*([kmgt]?)(i?b?)\s*\Z", re.IGNORECASE)


def parse_size(text: str) -> int:
    """A byte count: "67108864", "64MiB", "64M", "1GiB" (powers of 1024)."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size (e.g. 64MiB, 1GiB, 1048576)")
    scale = 1 << (10 * " kmgt".index(match.group(2).lower() or " "))
    return int(match.group(1)) * scale


def _gb(nbytes: int) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.1f} MB"


def _part_of(done: int, total: int) -> str:
    """"1.2 of 2.6 GB": both in the unit that suits `total`."""
    scale, unit = (1e9, "GB") if total >= 1e8 else (1e6, "MB")
    return f"{done / scale:.1f} of {total / scale:.1f} {unit}"


class Reporter:
    """Where a conversion reports: lines on `stream` for any phase moving more
    than `threshold` bytes, none for smaller ones."""

    def __init__(self, threshold: int = PROGRESS_THRESHOLD, stream=None):
        self.threshold = threshold
        self.stream = stream if stream is not None else sys.stderr

    def wants(self, nbytes) -> bool:
        return nbytes is not None and nbytes > self.threshold

    def line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def progress(self, verb: str, name: str, total: int):
        """A Progress for a byte stream of `total` bytes (None when unknown)."""
        return Progress(self, verb, name, total)

    def phase(self, verb: str, name: str, nbytes: int):
        """A Phase: a line when it starts and one with its elapsed time when it ends."""
        return Phase(self, verb, name, nbytes)


class Progress:
    """Counts the bytes of one stream and prints "reading SRC: 45% (1.2 of 2.6
    GB)" at most every PROGRESS_INTERVAL seconds, and a last line at the end."""

    def __init__(self, reporter: Reporter, verb: str, name: str, total: int):
        self._reporter = reporter
        self._label = f"{verb} {name}"
        self._total = total
        self._enabled = reporter.wants(total)
        self._done = 0
        self._start = time.monotonic()
        self._last = self._start

    def add(self, nbytes: int) -> None:
        self._done += nbytes
        if self._enabled:
            now = time.monotonic()
            if now - self._last >= PROGRESS_INTERVAL:
                self._last = now
                self._print()

    def finish(self) -> None:
        if self._enabled:
            self._print(time.monotonic() - self._start)

    def _print(self, elapsed=None) -> None:
        percent = min(100, 100 * self._done // max(1, self._total))
        text = f"{self._label}: {percent}% ({_part_of(self._done, self._total)})"
        if elapsed is not None:
            text += f" in {elapsed:.1f} s"
        self._reporter.line(text)


class Phase:
    """A context manager printing "<verb> NAME (2.6 GB)..." on entry and
    "<verb> NAME: done in 3.1 s (840 MB/s)" on a successful exit, for phases
    larger than the reporter's threshold."""

    def __init__(self, reporter: Reporter, verb: str, name: str, nbytes: int):
        self._reporter = reporter
        self._label = f"{verb} {name}"
        self._nbytes = nbytes
        self._enabled = reporter.wants(nbytes)
        self._start = None

    def __enter__(self):
        self._start = time.monotonic()
        if self._enabled:
            self._reporter.line(f"{self._label} ({_gb(self._nbytes)})...")
        return self

    def __exit__(self, kind, value, traceback):
        if self._enabled and kind is None:
            elapsed = time.monotonic() - self._start
            rate = self._nbytes / max(elapsed, 1e-9) / 1e6
            self._reporter.line(f"{self._label}: done in {elapsed:.1f} s ({rate:.0f} MB/s)")
        return False


class CountingFile:
    """A binary file object passing every read and write through to `raw`,
    in pieces of at most PIECE bytes (torch moves a whole tensor's storage in
    one call), and the number of bytes moved to `progress`; torch.load and
    torch.save accept it as a file."""

    PIECE = 16 << 20

    def __init__(self, raw, progress: Progress):
        self._raw = raw
        self._progress = progress

    def read(self, size=-1):
        if size is None or size < 0:
            data = self._raw.read()
            self._progress.add(len(data))
            return data
        buffer = bytearray(size)
        count = self.readinto(buffer)
        del buffer[count:]
        return bytes(buffer)

    def readinto(self, buffer):
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view):
            count = self._raw.readinto(view[done:done + self.PIECE])
            if not count:
                break
            done += count
            self._progress.add(count)
        return done

    def write(self, data):
        view = memoryview(data).cast("B")
        for start in range(0, len(view), self.PIECE):
            piece = view[start:start + self.PIECE]
            self._raw.write(piece)  # a buffered file writes all of it
            self._progress.add(len(piece))
        return len(view)

    def seek(self, offset, whence=os.SEEK_SET):
        return self._raw.seek(offset, whence)

    def tell(self):
        return self._raw.tell()

    def flush(self):
        self._raw.flush()

    def readable(self):
        return self._raw.readable()

    def writable(self):
        return self._raw.writable()

    def seekable(self):
        return self._raw.seekable()


def _tensor_bytes(state) -> int:
    """The bytes of every tensor inside `state` (mappings, lists and tuples)."""
    total, stack = 0, [state]
    while stack:
        value = stack.pop()
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, Mapping):
            stack.extend(value.values())
        elif type(value) in (list, tuple):
            stack.extend(value)
    return total


# ---------------------------------------------------------------- sources

def detect_source(src: str) -> str:
    """_TORCH, _RINGCKPT or _DCP, from what `src` is; Error for anything else."""
    try:
        st = os.stat(src)
    except FileNotFoundError:
        raise Error("not_found", src, "does not exist") from None
    except OSError as e:
        raise Error("io", src, f"cannot be examined: {e.strerror}") from None
    if os.path.isfile(src):
        return _TORCH
    if not os.path.isdir(src):
        raise Error("invalid_argument", src, f"is neither a regular file (a torch.save file) "
                    f"nor a directory (mode {st.st_mode:o})")
    if os.path.isfile(os.path.join(src, "metadata.json")):
        return _RINGCKPT
    if os.path.isfile(os.path.join(src, ".metadata")):
        return _DCP
    raise Error("invalid_argument", src, "is a directory holding neither metadata.json "
                "(a ringckpt checkpoint) nor .metadata (a DCP checkpoint)")


class _PlainUnpickler(pickle.Unpickler):
    """An unpickler resolving only the globals a torch.save file of tensors and
    plain values needs (tensor and storage rebuilding, dtypes, Size,
    OrderedDict, bytes); any other global is refused before it is imported, so
    reading a file cannot run code it names. (torch 1.13's weights_only
    unpickler would also do, but it refuses plain floats.)"""

    _ALLOWED = {
        ("collections", "OrderedDict"), ("_codecs", "encode"), ("torch", "Size"),
        ("torch", "device"), ("torch._utils", "_rebuild_tensor"),
        ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_parameter_with_state"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED or (module == "torch" and _is_torch_type(name)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a tensor or a plain value")


def _is_torch_type(name: str) -> bool:
    """Whether torch.<name> is a storage class or a dtype."""
    value = getattr(torch, name, None)
    return isinstance(value, torch.dtype) or (isinstance(value, type)
                                              and name.endswith("Storage"))


class _PlainPickleModule:
    """The pickle module torch.load uses when pickle is not allowed."""
    Unpickler = _PlainUnpickler
    __name__ = "ringckpt.convert._PlainPickleModule"

    @staticmethod
    def load(file, **kwargs):
        return _PlainUnpickler(file, **kwargs).load()


def _load_torch(src: str, allow_pickle: bool, reporter: Reporter):
    """torch.load of `src` to CPU; without allow_pickle only tensors and plain
    values, so that a file cannot run code while it is read."""
    progress = reporter.progress("reading", src, os.path.getsize(src))
    pickle_module = pickle if allow_pickle else _PlainPickleModule
    try:
        with open(src, "rb") as raw:
            state = torch.load(CountingFile(raw, progress), map_location="cpu",
                               pickle_module=pickle_module, weights_only=False)
    except OSError as e:
        raise Error("io", src, f"cannot be read: {e.strerror or e}") from None
    except pickle.UnpicklingError as e:
        if not allow_pickle and "is not a tensor or a plain value" in str(e):
            raise Error("invalid_argument", src,
                        f"holds {_first_line(e)}: pass --allow-pickle to read it with pickle "
                        "(which runs code the file names: only for files you trust)") from None
        raise Error("corrupt", src, f"is not a torch.save file torch.load can read: "
                    f"{_first_line(e)}") from None
    except Exception as e:  # torch.load raises RuntimeError, EOFError, ...
        raise Error("corrupt", src, f"is not a torch.save file torch.load can read: "
                    f"{type(e).__name__}: {_first_line(e)}") from None
    progress.finish()
    return state


def _first_line(error) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _is_ringckpt_dcp(src: str) -> bool:
    """Whether the DCP checkpoint `src` was written by ringckpt.dcp: its data
    lies in <save id>.rank<i>/ ringckpt checkpoints, not in .distcp files."""
    with os.scandir(src) as entries:
        for entry in entries:
            if (_RINGCKPT_DCP_RANK_DIR.match(entry.name) and entry.is_dir(follow_symlinks=False)
                    and os.path.isfile(os.path.join(entry.path, "metadata.json"))):
                return True
    return False


def _dcp_reader(dcp, src: str, io: dict):
    """The StorageReader for `src`: ringckpt.dcp's for its own layout (when the
    module is there), DCP's FileSystemReader otherwise."""
    if _is_ringckpt_dcp(src):
        try:
            from . import dcp as ringckpt_dcp  # another part of the package, maybe absent
        except ImportError:
            raise Error("invalid_argument", src, "is a ringckpt.dcp checkpoint, and this "
                        "ringckpt has no ringckpt.dcp module to read it") from None
        return ringckpt_dcp.StorageReader(src, **io)
    return dcp.FileSystemReader(src)


def _load_dcp(src: str, io: dict, reporter: Reporter):
    """The whole DCP checkpoint `src` as one state dict: tensors allocated from
    its metadata (a sharded tensor whole), other values as saved, the nesting
    rebuilt where the metadata records it (torch 2.x)."""
    dcp = _compat.import_dcp()
    failure = (Exception, getattr(dcp, "CheckpointException", Exception))
    try:
        reader = _dcp_reader(dcp, src, io)
        metadata = reader.read_metadata()
    except Error:
        raise
    except failure as e:
        raise Error("corrupt", os.path.join(src, ".metadata"),
                    f"cannot be read as DCP metadata: {type(e).__name__}: {_first_line(e)}") \
            from None
    flat = {}
    for fqn, entry in metadata.state_dict_metadata.items():
        if isinstance(entry, dcp.TensorStorageMetadata):
            flat[fqn] = torch.empty(tuple(entry.size), dtype=entry.properties.dtype)
        else:
            flat[fqn] = None  # a BYTE_IO value: the load puts the object here
    with reporter.phase("reading", f"{src} (DCP)", _tensor_bytes(flat)):
        try:
            _compat.dcp_load_no_dist(dcp, flat, reader)
        except Error:
            raise
        except failure as e:
            raise Error("corrupt", src, f"DCP's load failed: {type(e).__name__}: "
                        f"{_first_line(e)}") from None
    paths = _compat.dcp_nesting_paths(metadata)
    return _nest(flat, paths) if paths else flat


def _nest(flat: dict, paths) -> dict:
    """`flat` ({fqn: value}) nested along `paths` ({fqn: key tuple}; a str key
    indexes a dict, an int a list), as DCP flattened it; an fqn without a path
    stays a top-level key."""
    root = {}
    for fqn, value in flat.items():
        keys = tuple(paths.get(fqn, (fqn,)))
        container = root
        for key, next_key in zip(keys, keys[1:]):
            container = _child(container, key, {} if isinstance(next_key, str) else [])
        _put(container, keys[-1], value)
    return root


def _child(container, key, empty):
    if isinstance(container, list):
        while len(container) <= key:
            container.append(None)
        if container[key] is None:
            container[key] = empty
        return container[key]
    return container.setdefault(key, empty)


def _put(container, key, value) -> None:
    if isinstance(container, list):
        while len(container) <= key:
            container.append(None)
    container[key] = value


def _load_ringckpt(src: str, allow_pickle: bool, io: dict, reporter: Reporter):
    total = _core.read_metadata(src)["total_bytes"]
    with reporter.phase("reading", f"{src} (ringckpt)", total):
        return api.load_state_dict(src, allow_pickle=allow_pickle, **io)


# ---------------------------------------------------------------- destinations

def _save_ringckpt(state, src: str, dst: str, overwrite: bool, allow_pickle: bool, io: dict,
                   reporter: Reporter) -> None:
    if not isinstance(state, Mapping):
        raise Error("invalid_argument", src, f"holds a {type(state).__name__}, not a state "
                    "dict (a mapping): ringckpt saves mappings")
    with reporter.phase("writing", f"{dst} (ringckpt)", _tensor_bytes(state)):
        try:
            api.save(state, dst, overwrite=overwrite, allow_pickle=allow_pickle, **io)
        except Error as e:
            if not allow_pickle and "allow_pickle" in e.message:
                raise Error(e.code, f"{src}: {e.where}" if e.where else src,
                            e.message.replace("allow_pickle=True", "--allow-pickle")) from None
            raise


def _save_torch(state, dst: str, reporter: Reporter) -> None:
    """torch.save of `state` to DST.tmp, fsync, rename to DST, fsync of the
    directory: DST is either the old file or the whole new one, never half."""
    tmp = dst + ".tmp"
    progress = reporter.progress("writing", dst, _tensor_bytes(state))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
        try:
            with os.fdopen(fd, "wb") as raw:
                torch.save(state, CountingFile(raw, progress))
                raw.flush()
                os.fsync(raw.fileno())
            os.rename(tmp, dst)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        _fsync_directory(os.path.dirname(os.path.abspath(dst)))
    except OSError as e:
        raise Error("io", e.filename or dst, f"cannot be written: {e.strerror or e}") from None
    progress.finish()


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- the conversion

def convert(src, dst, *, overwrite: bool = False, allow_pickle: bool = False,
            reporter: Reporter = None, **io) -> str:
    """Converts `src` into `dst` (see the module doc) and returns what `src`
    was. `io`: ringckpt's I/O options (ring_bytes, ...). Raises ringckpt.Error
    naming the path and the fault; `dst` is left as it was on any failure."""
    src, dst = os.fspath(src), os.fspath(dst)
    reporter = reporter or Reporter()
    kind = detect_source(src)
    if os.path.lexists(dst):
        if os.path.realpath(dst) == os.path.realpath(src):
            raise Error("invalid_argument", dst, "is SRC itself")
        if not overwrite:
            raise Error("already_exists", dst, "exists; pass --overwrite to replace it")
    if kind == _RINGCKPT:
        state = _load_ringckpt(src, allow_pickle, io, reporter)
        _save_torch(state, dst, reporter)
        return kind
    state = (_load_torch(src, allow_pickle, reporter) if kind == _TORCH
             else _load_dcp(src, io, reporter))
    _save_ringckpt(state, src, dst, overwrite, allow_pickle, io, reporter)
    return kind


def _size_argument(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_subcommand(subparsers) -> None:
    """Adds `convert` to the subparsers of the ringckpt command."""
    parser = subparsers.add_parser(
        "convert", help="convert a torch.save file or a DCP checkpoint into a ringckpt "
        "checkpoint, or a ringckpt checkpoint into a torch.save file",
        description="SRC is a torch.save file (a regular file), a DCP checkpoint (a "
        "directory with .metadata) or a ringckpt checkpoint (a directory with "
        "metadata.json). The first two become a ringckpt checkpoint at DST, the last a "
        "torch.save file at DST. Tensors are copied bit for bit; the nesting is kept.")
    parser.add_argument("src", metavar="SRC")
    parser.add_argument("dst", metavar="DST")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace DST if it exists (it stays intact until the new one is "
                        "complete)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="convert objects other than tensors and plain values through "
                        "pickle (runs code SRC names: only for files you trust)")
    parser.add_argument("--ring-bytes", type=_size_argument, default=None, metavar="SIZE",
                        help="ringckpt's staging ring (e.g. 256MiB)")
    parser.add_argument("--progress-threshold", type=_size_argument,
                        default=PROGRESS_THRESHOLD, metavar="SIZE",
                        help="report progress on stderr for phases larger than this "
                        "(default 64MiB)")
    parser.set_defaults(run=run_subcommand)


def run_subcommand(args) -> int:
    """Runs `convert` for parsed arguments; 0 on success, 1 on ringckpt.Error
    (its message on stderr)."""
    io = {"ring_bytes": args.ring_bytes} if args.ring_bytes is not None else {}
    reporter = Reporter(args.progress_threshold)
    start = time.monotonic()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's TypedStorage notes
            kind = convert(args.src, args.dst, overwrite=args.overwrite,
                           allow_pickle=args.allow_pickle, reporter=reporter, **io)
    except Error as e:
        print(f"ringckpt convert: error: {e}", file=sys.stderr)
        return 1
    reporter.line(f"converted {args.src} ({kind}) to {args.dst} in "
                  f"{time.monotonic() - start:.1f} s")
    return 0
