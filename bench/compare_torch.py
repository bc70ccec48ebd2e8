#!/usr/bin/env python3
"""compare_torch.py — ringckpt against torch.save and DCP on the same disk.

Writes the same state dict (the shape of `ringckpt bench`'s synthetic
transformer: BF16 parameters, two F32 optimizer moments per parameter, a step
counter) three ways, each durable (fsync / sync_files=True):

  torch.save          one file, buffered, then fsync (what most programs do)
  DCP, single file    torch.distributed._shard.checkpoint (torch 1.13),
                      FileSystemWriter(single_file_per_rank=True)
  DCP, file per item  the same with single_file_per_rank=False

and runs `ringckpt bench --json` with the same size in the same directory,
then prints ringckpt-sync's speed-up over each (and over the device limit and
the naive write() loop that ringckpt bench measures itself).

The state dict's names, dtypes and shapes are read from the checkpoint that
`ringckpt bench --keep` leaves, so both sides write exactly the same tensors;
that is why ringckpt runs first here.

Needs Debian's python3-torch (1.13.1), which lives in /usr/bin/python3:
    /usr/bin/python3 bench/compare_torch.py --size 1GiB --repeat 3 \
        --ringckpt build/tools/ringckpt
Not run in CI.
"""

import argparse
import dataclasses
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

_DEBIAN_PYTHON = "/usr/bin/python3"


def import_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        if (os.path.exists(_DEBIAN_PYTHON)
                and os.path.realpath(sys.executable) != os.path.realpath(_DEBIAN_PYTHON)
                and not os.environ.get("COMPARE_TORCH_REEXEC")):
            print(f"torch is not importable from {sys.executable}; "
                  f"re-running with {_DEBIAN_PYTHON} (Debian's python3-torch)", file=sys.stderr)
            os.environ["COMPARE_TORCH_REEXEC"] = "1"
            os.execv(_DEBIAN_PYTHON, [_DEBIAN_PYTHON] + sys.argv)
        sys.exit("compare_torch.py: torch is not installed (apt-get install python3-torch)")
    import torch
    return torch


def import_dcp():
    """Imports torch 1.13's DCP (torch.distributed._shard.checkpoint).

    Under Python 3.11 its import fails: dataclasses now refuse any unhashable
    default (torch 1.13's ShardedTensorMetadata has a TensorProperties()
    default; fixed upstream in pytorch PR 91795). Work-around: while importing,
    a field whose default is refused is given a default_factory that deep-copies
    that default, which is what the upstream fix does by hand.
    """
    import copy
    patched = []
    original = dataclasses._get_field

    def lenient_get_field(cls, a_name, a_type, *rest):
        try:
            return original(cls, a_name, a_type, *rest)
        except ValueError as e:
            if "mutable default" not in str(e):
                raise
            default = cls.__dict__.get(a_name, dataclasses.MISSING)
            if isinstance(default, dataclasses.Field):
                value = default.default
                default.default = dataclasses.MISSING
                default.default_factory = lambda v=value: copy.deepcopy(v)
            else:
                setattr(cls, a_name,
                        dataclasses.field(default_factory=lambda v=default: copy.deepcopy(v)))
            patched.append(f"{cls.__module__}.{cls.__qualname__}.{a_name}")
            return original(cls, a_name, a_type, *rest)

    dataclasses._get_field = lenient_get_field
    try:
        import torch.distributed._shard.checkpoint as dcp
    finally:
        dataclasses._get_field = original
    if patched:
        print("note: Python %d.%d refuses torch %s's mutable dataclass defaults (fixed upstream in "
              "pytorch PR 91795); imported DCP with default_factory for: %s"
              % (sys.version_info[0], sys.version_info[1], __import__("torch").__version__,
                 ", ".join(patched)), file=sys.stderr)
    return dcp, patched


def parse_size(text):
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 256MiB, 1GiB)")
    value, unit, binary = float(m.group(1)), m.group(2).upper(), m.group(3)
    power = "KMGT".find(unit) + 1 if unit else 0
    return int(value * ((1024 if binary or not unit else 1000) ** power))


def find_ringckpt(given):
    if given:
        return given
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(here, "..", "build", "tools", "ringckpt"),
                      shutil.which("ringckpt")):
        if candidate and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
    sys.exit("compare_torch.py: no ringckpt binary found; pass --ringckpt PATH")


def fsync_tree(path):
    for root, dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def state_dict_from_metadata(torch, metadata_path, seed=1):
    """The state dict that ringckpt saved, rebuilt from its metadata.json,
    filled with seeded random bytes."""
    dtypes = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32,
              "F64": torch.float64, "I8": torch.int8, "U8": torch.uint8, "I16": torch.int16,
              "I32": torch.int32, "I64": torch.int64, "BOOL": torch.bool}
    with open(metadata_path) as f:
        md = json.load(f)
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    nbytes = 0
    for name, entry in md["state_dict_metadata"].items():
        if entry.get("type") == "tensor":
            dtype = dtypes[entry["dtype"]]
            shape = [int(s) for s in entry["size"]]
            t = torch.empty(shape, dtype=dtype)
            raw = t.view(-1).view(torch.uint8) if t.numel() else t
            if t.numel():
                if dtype == torch.bool:
                    raw.random_(0, 2, generator=gen)
                else:
                    raw.random_(0, 256, generator=gen)
            sd[name] = t
            nbytes += t.numel() * t.element_size()
        else:
            sd[name] = 0  # the step counter (a small blob in ringckpt)
            nbytes += 8
    return sd, nbytes


def time_torch_save(torch, sd, path):
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        torch.save(sd, f)
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(os.path.dirname(path), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - t0


def time_dcp_save(dcp, sd, path, single_file):
    os.makedirs(path)
    t0 = time.perf_counter()
    writer = dcp.FileSystemWriter(path, single_file_per_rank=single_file, sync_files=True)
    dcp.save_state_dict(sd, storage_writer=writer, no_dist=True)
    fsync_tree(path)  # DCP syncs its data files; the directory and .metadata too, to be fair
    return time.perf_counter() - t0


def tree_bytes(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(r, n)) for r, _, fs in os.walk(path) for n in fs)


def remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


def summary(samples):
    return statistics.median(samples), min(samples), max(samples)


def format_table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="256MiB", help="model size (as ringckpt bench --size)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each torch phase")
    ap.add_argument("--dir", help="directory to write in (default: a fresh one under /var/tmp)")
    ap.add_argument("--ringckpt", help="path to the ringckpt binary")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    parse_size(args.size)  # validate early
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    binary = find_ringckpt(args.ringckpt)

    torch = import_torch()
    dcp, patched = import_dcp()

    owned = args.dir is None
    root = tempfile.mkdtemp(prefix="ringckpt-compare-", dir="/var/tmp") if owned else args.dir
    os.makedirs(root, exist_ok=True)
    try:
        # 1. ringckpt bench (interleaves its own phases, repeat times); keeps its
        #    checkpoints so that torch writes exactly the same tensors.
        rc_dir = os.path.join(root, "ringckpt")
        remove(rc_dir)
        cmd = [binary, "bench", "--json", "--keep", "--size", args.size,
               "--repeat", str(args.repeat), "--dir", rc_dir]
        print("running:", " ".join(cmd), file=sys.stderr)
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            sys.exit(f"compare_torch.py: ringckpt bench exited {proc.returncode}")
        rc = json.loads(proc.stdout)
        sd, nbytes = state_dict_from_metadata(torch, os.path.join(rc_dir, "bench-sync",
                                                                  "metadata.json"))
        remove(rc_dir)

        # 2. torch.save and DCP (both layouts), interleaved, repeat times.
        phases = {"torch.save+fsync": [], "dcp single_file_per_rank=True": [],
                  "dcp single_file_per_rank=False": []}
        written = {}
        for r in range(args.repeat):
            for name in phases:
                path = os.path.join(root, "torch-" + re.sub(r"[^a-zA-Z0-9]+", "-", name))
                remove(path)
                if name.startswith("torch.save"):
                    s = time_torch_save(torch, sd, path)
                else:
                    s = time_dcp_save(dcp, sd, path, single_file=name.endswith("True"))
                written[name] = tree_bytes(path)
                phases[name].append(nbytes / s / 1e9)
                remove(path)
                print(f"  round {r + 1}/{args.repeat} {name}: {nbytes / s / 1e9:.2f} GB/s",
                      file=sys.stderr)

        # 3. Ratios: ringckpt-sync's throughput over each, on the same bytes.
        rcp = rc["phases"]
        sync = rcp["ringckpt-sync"]["median"]
        rows = []
        figures = {}

        def add(label, samples):
            med, lo, hi = summary(samples)
            figures[label] = {"samples": samples, "median": med, "min": lo, "max": hi,
                              "ringckpt_sync_speedup": sync / med if med > 0 else None}
            rows.append([label, f"{med:.2f}", f"{lo:.2f} - {hi:.2f}",
                         f"{sync / med:.2f}x" if med > 0 else "-"])

        for name, samples in phases.items():
            add(name, samples)
        add("naive write()+fsync (ringckpt bench)", rcp["naive"]["samples"])
        add("device write O_DIRECT (ringckpt bench)", rcp["device"]["samples"])
        add("ringckpt-sync", rcp["ringckpt-sync"]["samples"])
        m = rc["machine"]
        if args.json:
            print(json.dumps({"machine": m, "torch": torch.__version__,
                              "dcp_dataclass_patch": patched, "state_dict_bytes": nbytes,
                              "written_bytes": written, "figures": figures}, indent=1))
        else:
            print(f"state dict {nbytes / 2**20:.1f} MiB ({len(sd)} entries) on {m['filesystem']} "
                  f"({root}), torch {torch.__version__}, Python {sys.version.split()[0]}, "
                  f"{m['cpus']} CPUs; ringckpt O_DIRECT "
                  f"{'yes' if m['direct_io'] else 'NO'}, extent {m['extent_size'] >> 20} MiB, "
                  f"queue depth {m['queue_depth']}; repeat {args.repeat}")
            if patched:
                print("note: DCP imported with a dataclass work-around (pytorch PR 91795): "
                      + ", ".join(patched))
            print()
            print(format_table(["writer", "median GB/s", "range", "ringckpt-sync is"], rows))
            print()
            print("GB/s = state-dict bytes / time to durable; 'ringckpt-sync is' = its median "
                  "throughput over that row's (device row: < 1.00x means below the disk's limit)")
    finally:
        if owned:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
