#!/usr/bin/env python3
"""compare_torch.py: ringckpt from Python against torch.save and DCP, same process, same tensors.

Every round runs, interleaved, on one state dict shaped like `ringckpt bench`'s
synthetic transformer at --size (BF16 parameters, two F32 Adam moments each, a
step counter; names, dtypes and shapes read from the checkpoint that
`ringckpt bench --keep` leaves, so C++ and Python write the same tensors):

  saves  `ringckpt bench --json --repeat 1` (a subprocess: the device's raw
         io_uring O_DIRECT write rate and the C++ sync save of these bytes),
         ringckpt Checkpointer.save (the C++ bench's sync: the default, lazy
         mode, waited to commit), torch.save + flush + fsync, ringckpt lazy
         async_save (stall = until it returns; then until committed), DCP
         save_state_dict (FileSystemWriter, sync_files=True);
  loads  page caches dropped before each: Checkpointer.load in place,
         torch.load (map_location="cpu"), ringckpt.load_state_dict (new
         tensors), DCP load_state_dict into preallocated tensors.

Medians over --repeat rounds; ratios are medians of per-round ratios (the disk
drifts; only ratios within a round mean anything). Gates: Python sync save
>= 0.95 x the C++ bench's sync save, >= 0.90 x the device write rate; in-place
load >= 1.2 x torch.load. The last round checks that every load equals the
source (torch.equal on every tensor) and that ringckpt.verify passes.

--ranks N (N > 1) splits the same model across N gloo ranks on this machine
(torch.multiprocessing): every tensor with at least N rows and 64 KiB is a
row-sharded ShardedTensor, smaller ones are replicated. Each round runs the
device and the writers in turn, D W1 D W2 D W3 D, every run after a 1 s pause
(os.sync, then sleep: a virtual disk's host keeps writing back after fsync
returns); a writer's baseline is the mean rate of the device runs on either
side of it, and the writers take turns leading a round. The device is
`mpirun -n N ringckpt bench --ranks N --device-only --keep --json --repeat 1`,
N io_uring O_DIRECT writers of the same bytes and nothing else, run by rank 0
while the others wait (where there is no mpirun, one writer, `ringckpt bench
--json --repeat 1`, and the table says so). Nothing is removed until the round
ends (a file system mounted with discard would put the discards of one run's
files into the next run), then everything, followed by a sync. The writers
are DCP save_state_dict with
FileSystemWriter (sync_files=True), DCP save_state_dict with
ringckpt.dcp.StorageWriter (skipped where the package has no ringckpt.dcp) and
ringckpt's own Checkpointer(coordinator="auto").async_save timed to committed;
then, page cache dropped before each, DCP load with FileSystemReader, with
ringckpt.dcp.StorageReader and ringckpt's Checkpointer.load into the same
sharded layout. Times run from a barrier before to a barrier after. Gates: DCP
on ringckpt.dcp >= 0.8 x device, ringckpt's own save >= 0.85 x device; the
ratios to DCP's own writer and reader are reported; the last round checks every
rank's part of every load against the source, bit for bit.

Usage (Debian's torch 1.13 lives in /usr/bin/python3; needs root to drop the
page cache, else it falls back to posix_fadvise(DONTNEED) per file):
    PYTHONPATH=build/python /usr/bin/python3 bench/compare_torch.py \
        --size 1GiB --repeat 5 --ringckpt build/tools/ringckpt [--ranks 2] [--json out.json]
Run in a directory on a real disk (default /var/tmp), not tmpfs. Not run in CI.
"""

import argparse
import datetime
import importlib.util
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import torch

# --------------------------------------------------------------------------
# Shared with train_torch.py (which imports them from here).


def flat_for_dcp(state, prefix=""):
    """torch 1.13's DCP does not flatten nested dicts (it would pickle a whole
    sub-dict as one bytes item), so users flatten by hand: dotted names, as DCP
    2.x's flatten_state_dict names them. Values are the same objects."""
    flat = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_for_dcp(value, name + "."))
        else:
            flat[name] = value
    return flat


def parse_size(text):
    """'1GiB', '256MiB', '500MB', '1048576' -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])(i?)B?|B?)\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 256MiB, 1GiB)")
    unit = m.group(2)
    if not unit:
        return int(float(m.group(1)))
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** ("KMGT".index(unit.upper()) + 1))


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def files_under(path):
    if os.path.isfile(path):
        return [path]
    return [os.path.join(r, n) for r, _, names in os.walk(path) for n in names]


def remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def torch_save_durable(state, path):
    """torch.save as people make it durable: flush, fsync the file and its directory."""
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_path(os.path.dirname(path))


def dcp_save_durable(dcp, flat_state, path):
    """DCP's own durable save (sync_files=True fsyncs the data files); its
    .metadata and the directory are fsynced too, as ringckpt does for its own."""
    os.makedirs(path)
    dcp.save_state_dict(flat_state, storage_writer=dcp.FileSystemWriter(path, sync_files=True),
                        no_dist=True)
    for name in files_under(path):
        if not name.endswith(".distcp"):
            fsync_path(name)
    fsync_path(path)


class PageCache:
    """Drops the page cache before a timed load. `method` says how: the
    kernel-wide drop (needs root and a writable /proc/sys), else per-file
    posix_fadvise(DONTNEED) after fsync, which only evicts clean pages."""

    def __init__(self):
        try:
            os.sync()
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            self.method = "echo 3 > /proc/sys/vm/drop_caches"
        except OSError:
            self.method = "posix_fadvise(POSIX_FADV_DONTNEED) per file"

    def drop(self, path):
        if self.method.startswith("echo"):
            os.sync()
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            return
        for name in files_under(path):
            fd = os.open(name, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def machine_facts(directory):
    """CPU model, cores, memory and the filesystem that holds `directory`."""
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = next(int(l.split()[1]) for l in f if l.startswith("MemTotal:"))
    target = os.path.realpath(directory)
    best, fstype, device = "", "unknown", "?"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mount_point = fields[4]
            tail = fields[fields.index("-") + 1:]
            inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best):
                best, fstype, device = mount_point, tail[0], tail[1]
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(mem_kib / 2**20, 1),
            "dir": target, "filesystem": fstype, "mount": best, "device": device,
            "python": sys.version.split()[0], "torch": torch.__version__}


def machine_line(m):
    return (f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; --dir "
            f"{m['dir']} on {m['filesystem']} ({m['device']} at {m['mount']}); "
            f"Python {m['python']}, torch {m['torch']}")


def median(values):
    return statistics.median(values) if values else float("nan")


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def gate(name, rule, value, limit, passed):
    return {"name": name, "rule": rule, "value": value, "limit": limit, "pass": bool(passed)}


def print_report(rows, gates, note):
    """The table, what its figures count, and the gates."""
    print()
    print(markdown_table(["what", "median s", "GB/s", "ratio", "ratio is"], rows))
    print()
    print(note)
    for g in gates:
        print(gate_line(g))


def gate_line(g):
    return f"{'PASS' if g['pass'] else 'FAIL'}  {g['rule']}  ({g['value']:.3f} vs {g['limit']:.3g})"


# --------------------------------------------------------------------------
# The state dict, from the C++ bench's own checkpoint.

_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32,
           "F64": torch.float64, "I8": torch.int8, "U8": torch.uint8, "I16": torch.int16,
           "I32": torch.int32, "I64": torch.int64, "BOOL": torch.bool}


def state_dict_like(metadata_path, seed):
    """A flat state dict with the names, dtypes and shapes of a ringckpt
    checkpoint's metadata.json, filled with seeded random bytes (random bytes
    do not compress, like trained weights). Non-tensor entries (the step
    counter blob) become a plain int. Returns (state, tensor bytes)."""
    with open(metadata_path) as f:
        entries = json.load(f)["state_dict_metadata"]
    gen = torch.Generator().manual_seed(seed)
    state, nbytes = {}, 0
    for name, entry in entries.items():
        if entry.get("type") != "tensor":
            state[name] = 1000
            continue
        t = torch.empty([int(s) for s in entry["size"]], dtype=_DTYPES[entry["dtype"]])
        if t.numel():
            raw = t.view(-1).view(torch.uint8)
            raw.random_(0, 2 if t.dtype == torch.bool else 256, generator=gen)
        state[name] = t
        nbytes += t.numel() * t.element_size()
    return state, nbytes


def raw_bytes(t):
    """The tensor's bytes as uint8: random bytes hold NaNs, which torch.equal
    on floats would call different from themselves."""
    return t.contiguous().view(-1).view(torch.uint8)


def first_difference(source, loaded):
    """None if `loaded` (a flat dict, or nested with dotted names) equals
    `source` exactly, else the first differing name."""
    if not isinstance(loaded, dict):
        return "<not a dict>"
    if set(loaded) != set(source):
        loaded = flat_for_dcp(loaded)
    for name, want in source.items():
        got = loaded.get(name)
        if isinstance(want, torch.Tensor):
            if not (isinstance(got, torch.Tensor) and got.dtype == want.dtype
                    and got.shape == want.shape and torch.equal(raw_bytes(got), raw_bytes(want))):
                return name
        elif got != want:
            return name
    return None


# --------------------------------------------------------------------------
# The rounds.


def run_cpp_bench(binary, size_text, directory, keep):
    cmd = [binary, "bench", "--json", "--size", size_text, "--repeat", "1", "--dir", directory]
    if keep:
        cmd.append("--keep")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"compare_torch.py: {' '.join(cmd)} exited {proc.returncode}:\n"
                 + proc.stderr[-2000:])
    return json.loads(proc.stdout)


def run_cpp_device(binary, size_text, directory, world):
    """The device's write rate (GB/s) for a model of `size_text`: N io_uring
    O_DIRECT writers of the same bytes (`ringckpt bench --ranks N
    --device-only --keep` under mpirun: its files stay in `directory`, for the
    caller to remove with the writers' outputs), or one writer where mpirun is
    missing; and how many writers."""
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        return run_cpp_bench(binary, size_text, directory, keep=False)["phases"]["device"][
            "median"], 1
    cmd = [mpirun, "--oversubscribe", "-n", str(world)]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    cmd += [binary, "bench", "--ranks", str(world), "--device-only", "--keep", "--json",
            "--size", size_text, "--repeat", "1", "--dir", directory]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"compare_torch.py: {' '.join(cmd)} exited {proc.returncode}:\n"
                 + proc.stderr[-2000:])
    return json.loads(proc.stdout)["phases"]["device"]["median"], world


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def reset(target):
    """Zeroes every tensor of a flat state dict and sets its plain values to 0."""
    for name, value in target.items():
        if isinstance(value, torch.Tensor):
            value.zero_()
        else:
            target[name] = 0


def one_round(ctx, r, check):
    """Runs round r; appends each figure (seconds, or GB/s for the C++ bench)
    to ctx["samples"]; returns correctness findings when `check`."""
    ringckpt, dcp, ck, cache = ctx["ringckpt"], ctx["dcp"], ctx["ck"], ctx["cache"]
    state, flat_dcp, target = ctx["state"], ctx["flat_dcp"], ctx["target"]
    s = ctx["samples"]
    where = os.path.join(ctx["root"], f"round-{r}")
    os.makedirs(where)
    path = {k: os.path.join(where, k) for k in
            ("cpp", "sync", "lazy", "torch.pt", "dcp")}
    found = {}
    try:
        cpp = run_cpp_bench(ctx["binary"], ctx["size_text"], path["cpp"], keep=False)
        for key in ("device", "ringckpt-sync", "device-read", "load"):
            s["cpp " + key].append(cpp["phases"][key]["median"])
        remove(path["cpp"])

        with Timer() as t:
            ck.save(state, path["sync"], mode="lazy")
        s["py sync save"].append(t.seconds)

        with Timer() as t:
            torch_save_durable(state, path["torch.pt"])
        s["torch.save+fsync"].append(t.seconds)

        with Timer() as t:
            handle = ck.async_save(state, path["lazy"], mode="lazy")
            returned = time.perf_counter() - t.start
            handle.committed.result()
        s["py lazy returned"].append(returned)
        s["py lazy committed"].append(t.seconds)

        with Timer() as t:
            dcp_save_durable(dcp, flat_dcp, path["dcp"])
        s["dcp save"].append(t.seconds)

        # Loads. The preallocated target is reset (outside the timing) so a
        # load that silently did nothing cannot pass the check.
        reset(target)
        cache.drop(path["sync"])
        with Timer() as t:
            ck.load(target, path["sync"])
        s["py load in place"].append(t.seconds)
        if check:
            found["Checkpointer.load"] = first_difference(state, target)

        cache.drop(path["torch.pt"])
        with Timer() as t:
            loaded = torch.load(path["torch.pt"], map_location="cpu")
        s["torch.load"].append(t.seconds)
        if check:
            found["torch.load"] = first_difference(state, loaded)
        del loaded

        cache.drop(path["lazy"])
        with Timer() as t:
            loaded = ringckpt.load_state_dict(path["lazy"])
        s["py load_state_dict"].append(t.seconds)
        if check:
            found["ringckpt.load_state_dict"] = first_difference(state, loaded)
        del loaded

        reset(target)
        dcp_target = dict(target)
        cache.drop(path["dcp"])
        with Timer() as t:
            dcp.load_state_dict(dcp_target, storage_reader=dcp.FileSystemReader(path["dcp"]),
                                no_dist=True)
        s["dcp load"].append(t.seconds)
        if check:
            found["DCP load_state_dict"] = first_difference(state, dcp_target)
            report = ringckpt.verify(path["sync"])
            found["ringckpt.verify"] = None if report.get("ok") else json.dumps(report)[:300]
        # Same bytes for both writers: else the rates are not comparable.
        written = sum(os.path.getsize(f) for f in files_under(path["sync"])
                      if os.path.basename(f) != "metadata.json")
        ctx["py_file_bytes"] = written
    finally:
        shutil.rmtree(where, ignore_errors=True)
    return found


def summarize(ctx, repeat):
    """The table rows, gates and JSON figures from the samples."""
    s = ctx["samples"]
    fb, sb = ctx["file_bytes"], ctx["state_bytes"]

    def per_round(f):
        return median([f(i) for i in range(repeat)])

    py_gbps = [fb / t / 1e9 for t in s["py sync save"]]
    lazy_gbps = [fb / t / 1e9 for t in s["py lazy committed"]]
    ratios = {
        "py sync / cpp sync": per_round(lambda i: py_gbps[i] / s["cpp ringckpt-sync"][i]),
        "py sync / device": per_round(lambda i: py_gbps[i] / s["cpp device"][i]),
        "cpp sync / device": per_round(lambda i: s["cpp ringckpt-sync"][i] / s["cpp device"][i]),
        "py lazy committed / device": per_round(lambda i: lazy_gbps[i] / s["cpp device"][i]),
        "torch.save / py sync (time)": per_round(
            lambda i: s["torch.save+fsync"][i] / s["py sync save"][i]),
        "dcp save / py sync (time)": per_round(lambda i: s["dcp save"][i] / s["py sync save"][i]),
        "torch.load / py in place (time)": per_round(
            lambda i: s["torch.load"][i] / s["py load in place"][i]),
        "dcp load / py in place (time)": per_round(
            lambda i: s["dcp load"][i] / s["py load in place"][i]),
        "torch.load / py load_state_dict (time)": per_round(
            lambda i: s["torch.load"][i] / s["py load_state_dict"][i]),
        "py in place / cpp load": per_round(
            lambda i: (fb / s["py load in place"][i] / 1e9) / s["cpp load"][i]),
    }

    def timed(label, key, nbytes, ratio_key=None, ratio_text=""):
        sec = median(s[key])
        rate = nbytes / sec / 1e9
        ratio = f"{ratios[ratio_key]:.2f}" if ratio_key else ""
        return [label, f"{sec:.3f}", f"{rate:.2f}", ratio, ratio_text]

    def rated(label, key, ratio_key=None, ratio_text=""):
        rate = median(s[key])
        ratio = f"{ratios[ratio_key]:.2f}" if ratio_key else ""
        return [label, f"{fb / rate / 1e9:.3f}", f"{rate:.2f}", ratio, ratio_text]

    rows = [
        rated("device write, io_uring O_DIRECT (C++ bench)", "cpp device"),
        rated("ringckpt sync save (C++ bench)", "cpp ringckpt-sync", "cpp sync / device",
              "C++ sync / device"),
        timed("ringckpt Checkpointer.save (Python)", "py sync save", fb, "py sync / cpp sync",
              "Python / C++ sync, same round"),
        ["ringckpt lazy async_save: returned (Python)", f"{median(s['py lazy returned']):.6f}",
         "", "", "the caller's stall"],
        timed("ringckpt lazy async_save: committed (Python)", "py lazy committed", fb,
              "py lazy committed / device", "committed / device"),
        timed("torch.save + fsync", "torch.save+fsync", sb, "torch.save / py sync (time)",
              "its time / Python sync's"),
        timed("DCP save_state_dict (sync_files=True)", "dcp save", sb,
              "dcp save / py sync (time)", "its time / Python sync's"),
        rated("device read, io_uring O_DIRECT (C++ bench)", "cpp device-read"),
        rated("ringckpt load (C++ bench)", "cpp load"),
        timed("ringckpt Checkpointer.load in place (Python)", "py load in place", fb,
              "py in place / cpp load", "Python / C++ load"),
        timed("torch.load (map_location=cpu)", "torch.load", sb,
              "torch.load / py in place (time)", "its time / in place's"),
        timed("DCP load_state_dict (preallocated)", "dcp load", sb,
              "dcp load / py in place (time)", "its time / in place's"),
        timed("ringckpt.load_state_dict (new tensors)", "py load_state_dict", fb,
              "torch.load / py load_state_dict (time)", "torch.load's time / its"),
    ]
    gates = [
        gate("py-vs-cpp-sync", "Python sync save >= 0.95 x C++ bench sync save (same round)",
             ratios["py sync / cpp sync"], 0.95, ratios["py sync / cpp sync"] >= 0.95),
        gate("py-vs-device", "Python sync save >= 0.90 x device write",
             ratios["py sync / device"], 0.90, ratios["py sync / device"] >= 0.90),
        gate("inplace-vs-torch-load", "in-place load >= 1.2 x torch.load",
             ratios["torch.load / py in place (time)"], 1.2,
             ratios["torch.load / py in place (time)"] >= 1.2),
    ]
    return rows, gates, ratios


# --------------------------------------------------------------------------
# --ranks N: the same model split across N gloo ranks of this machine.
#
# Every tensor with at least N rows and SHARD_MIN_BYTES bytes is a
# ShardedTensor, its rows split across the ranks (the last rank takes the
# rest); smaller tensors are replicated (the same bytes on every rank). The
# same state dict goes to DCP's FileSystemWriter, to DCP on ringckpt.dcp's
# StorageWriter and to ringckpt's own Checkpointer over torch.distributed.

SHARD_MIN_BYTES = 64 << 10
RANK_LIMIT = datetime.timedelta(minutes=10)  # no rank waits longer for another


def row_range(rank, world, rows):
    size = rows // world
    return rank * size, (rows if rank == world - 1 else (rank + 1) * size)


def random_tensor(shape, dtype, seed):
    t = torch.empty(shape, dtype=dtype)
    if t.numel():
        gen = torch.Generator().manual_seed(seed)
        t.view(-1).view(torch.uint8).random_(0, 2 if dtype == torch.bool else 256,
                                             generator=gen)
    return t


def sharded_states(metadata_path, seed, rank, world, st):
    """(source, target, tensor bytes of the whole model): flat state dicts with
    the names, dtypes and shapes of a ringckpt checkpoint's metadata.json,
    big tensors as row-sharded ShardedTensors (collective: every rank calls
    it in the same order), the rest replicated; `target` is zeros of the same
    layout. A shard's bytes are seeded by (seed, tensor, rank)."""
    with open(metadata_path) as f:
        entries = json.load(f)["state_dict_metadata"]
    source, target, nbytes = {}, {}, 0
    for index, (name, entry) in enumerate(entries.items()):
        if entry.get("type") != "tensor":
            source[name], target[name] = 1000, 0
            continue
        shape = [int(s) for s in entry["size"]]
        dtype = _DTYPES[entry["dtype"]]
        whole = torch.empty(shape, dtype=dtype)
        nbytes += whole.numel() * whole.element_size()
        if len(shape) >= 1 and shape[0] >= world and \
                whole.numel() * whole.element_size() >= SHARD_MIN_BYTES:
            lo, hi = row_range(rank, world, shape[0])
            local = random_tensor([hi - lo] + shape[1:], dtype, (seed * 7919 + index) * 64 + rank)
            offsets = [lo] + [0] * (len(shape) - 1)
            source[name] = st.init_from_local_shards(
                [st.Shard.from_tensor_and_offsets(local, offsets, rank)], *shape)
            target[name] = st.init_from_local_shards(
                [st.Shard.from_tensor_and_offsets(torch.zeros_like(local), offsets, rank)],
                *shape)
        else:
            source[name] = random_tensor(shape, dtype, (seed * 7919 + index) * 64 + 63)
            target[name] = torch.zeros_like(source[name])
        del whole
    return source, target, nbytes


def local_tensors(value):
    """The tensors a rank holds of one value: a ShardedTensor's local shards,
    or the tensor itself."""
    if hasattr(value, "local_shards"):
        return [s.tensor for s in value.local_shards()]
    return [value] if isinstance(value, torch.Tensor) else []


def reset_target(target):
    for name, value in target.items():
        tensors = local_tensors(value)
        for t in tensors:
            t.zero_()
        if not tensors:
            target[name] = 0


def first_local_difference(source, target):
    """None if this rank's part of `target` equals `source`, bit for bit."""
    for name, want in source.items():
        got = target.get(name)
        mine, theirs = local_tensors(want), local_tensors(got)
        if not mine:
            if got != want:
                return name
        elif len(mine) != len(theirs) or not all(
                a.dtype == b.dtype and a.shape == b.shape
                and torch.equal(raw_bytes(a), raw_bytes(b)) for a, b in zip(mine, theirs)):
            return name
    return None


def rank_worker(rank, world, port, cfg):
    """One rank: builds its part of the model, then runs cfg["repeat"]
    rounds in lockstep with the others; rank 0 times (barrier to barrier),
    runs the device baseline and drops the page cache, and writes the
    samples and findings to cfg["out"]."""
    import torch.distributed as dist
    import ringckpt
    from ringckpt import _compat
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=RANK_LIMIT)
    dcp = _compat.import_dcp()
    st = _compat.import_sharded_tensor()
    try:
        from ringckpt import dcp as ringckpt_dcp
    except ImportError:
        ringckpt_dcp = None
    source, target, state_bytes = sharded_states(cfg["metadata"], cfg["seed"], rank, world, st)
    cache = PageCache() if rank == 0 else None
    samples = {k: [] for k in RANK_SAMPLES}
    samples.update({"device for " + k: [] for k in RANK_SAMPLES})
    found = {}
    io = dict(ring_bytes=cfg["ring_bytes"], extent_size=cfg["extent_size"],
              queue_depth=cfg["queue_depth"], staging_threads=2, direct_io=True)

    def timed(action):
        dist.barrier()
        start = time.perf_counter()
        action()
        dist.barrier()
        return time.perf_counter() - start

    def settle():
        """Lets the disk finish what the previous phase left (the host's
        writeback of a virtual disk goes on after fsync returns): every
        write phase starts from the same quiet state."""
        dist.barrier()
        if rank == 0:
            os.sync()
            time.sleep(SETTLE_SECONDS)
        dist.barrier()

    def drop(path):
        dist.barrier()
        if rank == 0:
            cache.drop(path)
        dist.barrier()

    def dcp_fs_save(path):
        dcp.save_state_dict(source, dcp.FileSystemWriter(path, sync_files=True))
        if rank == 0:  # .metadata and the directory, as ringckpt fsyncs its own
            fsync_path(os.path.join(path, ".metadata"))
            fsync_path(path)

    with ringckpt.Checkpointer(coordinator="auto", mode="lazy", **io) as ck, \
            ringckpt.Checkpointer(coordinator=None, mode="lazy", **io) as ck_local:
        warm = os.path.join(cfg["root"], "warm-up")
        ck.async_save(source, warm).committed.result(timeout=RANK_LIMIT.total_seconds())
        if ringckpt_dcp is not None:
            dcp.save_state_dict(source, ringckpt_dcp.StorageWriter(warm + "-dcp",
                                                                   checkpointer=ck_local))
        dist.barrier()
        if rank == 0:
            remove(warm)
            remove(warm + "-dcp")
        for r in range(cfg["repeat"]):
            check = r + 1 == cfg["repeat"]
            where = os.path.join(cfg["root"], f"round-{r}")
            path = {k: os.path.join(where, k) for k in ("cpp", "dcp-fs", "dcp-ringckpt",
                                                        "ringckpt")}
            if rank == 0:
                os.makedirs(where)
            dist.barrier()

            def device():
                """The device's N-writer rate (GB/s), after a pause; rank 0's
                figure (the others get 0)."""
                settle()
                rate = 0.0
                if rank == 0:
                    # Its files stay until the round ends, as the writers'
                    # do: on a file system mounted with discard, removing
                    # them would put their discards into the next phase.
                    rate, writers = run_cpp_device(
                        cfg["binary"], cfg["size_text"],
                        f"{path['cpp']}-{len(samples['device'])}", world)
                    samples["device"].append(rate)
                    samples["device writers"] = writers
                dist.barrier()
                return rate

            saves = [("dcp fs save", lambda: dcp_fs_save(path["dcp-fs"]))]
            if ringckpt_dcp is not None:
                saves.append(("dcp ringckpt save", lambda: dcp.save_state_dict(
                    source, ringckpt_dcp.StorageWriter(path["dcp-ringckpt"],
                                                       checkpointer=ck_local))))
            saves.append(("ringckpt save", lambda: ck.async_save(
                source, path["ringckpt"]).committed.result(timeout=RANK_LIMIT.total_seconds())))
            # D W1 D W2 D W3 D: every writer between two device runs, its
            # baseline their mean, so whatever the disk does before and after
            # a writer falls on its baseline too; the writers take turns
            # leading a round.
            turn = r % len(saves)
            before = device()
            for key, action in saves[turn:] + saves[:turn]:
                settle()
                samples[key].append(timed(action))
                after = device()
                samples["device for " + key].append((before + after) / 2)
                before = after
            loads = [("dcp fs load", "dcp-fs", lambda: dcp.load_state_dict(
                target, dcp.FileSystemReader(path["dcp-fs"])))]
            if ringckpt_dcp is not None:
                loads.append(("dcp ringckpt load", "dcp-ringckpt", lambda: dcp.load_state_dict(
                    target, ringckpt_dcp.StorageReader(path["dcp-ringckpt"],
                                                       checkpointer=ck_local))))
            loads.append(("ringckpt load", "ringckpt", lambda: ck.load(target, path["ringckpt"])))
            for key, directory, action in loads:
                reset_target(target)  # a load that did nothing cannot pass the check
                drop(path[directory])
                samples[key].append(timed(action))
                if check:
                    found[key] = first_local_difference(source, target)
            dist.barrier()
            if rank == 0:
                shutil.rmtree(where, ignore_errors=True)
                os.sync()  # the removal's discards, before the next round's runs
                print(f"  round {r + 1}/{cfg['repeat']} done", file=sys.stderr, flush=True)
    everyone = [None] * world
    dist.all_gather_object(everyone, found)
    if rank == 0:
        merged = {k: next((f"rank {i}: {f[k]}" for i, f in enumerate(everyone) if f[k]), None)
                  for k in found}
        with open(cfg["out"], "w") as f:
            json.dump({"samples": samples, "found": merged, "state_bytes": state_bytes,
                       "ringckpt_dcp": ringckpt_dcp is not None,
                       "page_cache": cache.method}, f)
    dist.barrier()
    dist.destroy_process_group()


SETTLE_SECONDS = 1.0  # a pause before each write phase of --ranks

RANK_SAMPLES = ("device", "dcp fs save", "dcp ringckpt save", "ringckpt save", "dcp fs load",
                "dcp ringckpt load", "ringckpt load")


def summarize_ranks(result, repeat, world):
    """Table rows, gates and ratios of a --ranks run. Save and load rates count
    the model's tensor bytes; the device row is `ringckpt bench`'s raw
    io_uring O_DIRECT write rate of a model of the same size (N writers where
    mpirun is there)."""
    s, nbytes = result["samples"], result["state_bytes"]
    have_rdcp = result["ringckpt_dcp"]

    def per_round(f):
        return median([f(i) for i in range(repeat)])

    def vs_device(key):
        return per_round(lambda i: nbytes / s[key][i] / 1e9 / s["device for " + key][i])

    def dcp_time_over(key, dcp_key):
        return per_round(lambda i: s[dcp_key][i] / s[key][i])

    ratios = {"ringckpt save / device": vs_device("ringckpt save"),
              "dcp fs save / device": vs_device("dcp fs save"),
              "dcp fs save / ringckpt save (time)": dcp_time_over("ringckpt save", "dcp fs save"),
              "dcp fs load / ringckpt load (time)": dcp_time_over("ringckpt load", "dcp fs load")}
    if have_rdcp:
        ratios.update({
            "dcp ringckpt save / device": vs_device("dcp ringckpt save"),
            "dcp fs save / dcp ringckpt save (time)": dcp_time_over("dcp ringckpt save",
                                                                    "dcp fs save"),
            "dcp fs load / dcp ringckpt load (time)": dcp_time_over("dcp ringckpt load",
                                                                    "dcp fs load")})

    def row(label, key, ratio_key="", ratio_text=""):
        if not s[key]:
            return [label, "not run", "", "", "ringckpt.dcp is not in this package"]
        sec = median(s[key])
        ratio = f"{ratios[ratio_key]:.2f}" if ratio_key else ""
        return [label, f"{sec:.3f}", f"{nbytes / sec / 1e9:.2f}", ratio, ratio_text]

    device = median(s["device"])
    rows = [
        [f"device write, io_uring O_DIRECT (ringckpt bench, {s['device writers']} "
         f"writer{'s' if s['device writers'] > 1 else ''})",
         f"{nbytes / device / 1e9:.3f}", f"{device:.2f}", "", ""],
        row(f"DCP save, FileSystemWriter (sync_files), {world} ranks", "dcp fs save",
            "dcp fs save / device", "its rate / device"),
        row(f"DCP save, ringckpt.dcp.StorageWriter, {world} ranks", "dcp ringckpt save",
            "dcp ringckpt save / device" if have_rdcp else "", "its rate / device"),
        row(f"ringckpt async_save to committed, {world} ranks", "ringckpt save",
            "ringckpt save / device", "its rate / device"),
        row("DCP load, FileSystemReader", "dcp fs load"),
        row("DCP load, ringckpt.dcp.StorageReader", "dcp ringckpt load",
            "dcp fs load / dcp ringckpt load (time)" if have_rdcp else "",
            "FileSystemReader's time / its"),
        row("ringckpt Checkpointer.load (resharded in place)", "ringckpt load",
            "dcp fs load / ringckpt load (time)", "FileSystemReader's time / its"),
    ]
    gates = [gate("ringckpt-save-vs-device", "ringckpt async_save (committed) >= 0.85 x device",
                  ratios["ringckpt save / device"], 0.85,
                  ratios["ringckpt save / device"] >= 0.85)]
    rdcp = ratios.get("dcp ringckpt save / device", float("nan"))
    gates.insert(0, gate("dcp-ringckpt-save-vs-device", "DCP save on ringckpt.dcp >= 0.8 x device"
                         + ("" if have_rdcp else " (not run: no ringckpt.dcp)"), rdcp, 0.8,
                         have_rdcp and rdcp >= 0.8))
    return rows, gates, ratios


def ranks_main(args, binary):
    """--ranks N: see the section comment above. Returns the exit status."""
    import torch.multiprocessing as mp
    if importlib.util.find_spec("ringckpt") is None:  # fail here, not in N ranks
        sys.exit("compare_torch.py: no ringckpt package on PYTHONPATH (build/python)")
    machine = machine_facts(args.dir)
    print(machine_line(machine))
    root = tempfile.mkdtemp(prefix="ringckpt-compare-ranks-", dir=args.dir)
    try:
        shape_run = run_cpp_bench(binary, args.size, os.path.join(root, "shape"), keep=True)
        bm = shape_run["machine"]
        metadata = os.path.join(root, "shape-metadata.json")
        shutil.copy(os.path.join(root, "shape", "bench-sync", "metadata.json"), metadata)
        remove(os.path.join(root, "shape"))
        extent = bm["extent_size"]
        # A rank's share of the bench's ring (the model's size), a quarter more
        # for the replicated tensors, in whole extents: the lazy saves stage at
        # memory speed, as in the one-process mode.
        share = bm["ring_bytes"] * 5 // (4 * args.ranks)
        ring = max(4, -(-share // extent)) * extent
        cfg = {"metadata": metadata, "seed": args.seed, "repeat": args.repeat,
               "root": root, "binary": binary, "size_text": args.size,
               "ring_bytes": ring, "extent_size": extent, "queue_depth": bm["queue_depth"],
               "out": os.path.join(root, "result.json")}
        print(f"{args.ranks} gloo ranks on this machine; --size {args.size}; ring "
              f"{ring >> 20} MiB a Checkpointer (two a rank), extent {extent >> 20} MiB, queue "
              f"depth {bm['queue_depth']}; {args.repeat} rounds")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        mp.spawn(rank_worker, args=(args.ranks, port, cfg), nprocs=args.ranks)
        with open(cfg["out"]) as f:
            result = json.load(f)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"state dict: {result['state_bytes'] / 2**30:.3f} GiB of tensors; page cache "
          f"dropped by {result['page_cache']}")
    rows, gates, ratios = summarize_ranks(result, args.repeat, args.ranks)
    print_report(rows, gates, "GB/s: the model's tensor bytes over the time from the first "
                 "rank's start to the last rank's end; ratios to the device are medians of "
                 "per-writer ratios (each writer against the mean of the device runs before "
                 "and after it), the others medians of per-round ratios.")
    dcp_line = (f"{ratios['dcp fs save / dcp ringckpt save (time)']:.2f}x the time of DCP on "
                f"ringckpt.dcp and " if result["ringckpt_dcp"] else "")
    load_line = (f"{ratios['dcp fs load / dcp ringckpt load (time)']:.2f}x the time of "
                 f"ringckpt.dcp's reader and " if result["ringckpt_dcp"] else "")
    print(f"reported: DCP's own writer takes {dcp_line}"
          f"{ratios['dcp fs save / ringckpt save (time)']:.2f}x that of ringckpt's own save; "
          f"FileSystemReader {load_line}{ratios['dcp fs load / ringckpt load (time)']:.2f}x "
          "that of ringckpt's load")
    found = result["found"]
    for what, diff in found.items():
        print(f"correct: {what}: "
              f"{'equal to the source, bit for bit' if diff is None else 'FAILED: ' + diff}")
    correct = all(v is None for v in found.values())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "page_cache": result["page_cache"],
                       "state_bytes": result["state_bytes"], "samples": result["samples"],
                       "ratios": ratios, "gates": gates,
                       "correct": {k: v is None for k, v in found.items()}}, f, indent=1)
    return 0 if correct and all(g["pass"] for g in gates) else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="1GiB", help="model size, as ringckpt bench --size")
    ap.add_argument("--repeat", type=int, default=5, help="rounds (medians over them)")
    ap.add_argument("--dir", default="/var/tmp", help="where to write (a real disk)")
    ap.add_argument("--ringckpt", help="the ringckpt tool (default: build/tools/ringckpt)")
    ap.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ranks", type=int, default=1,
                    help="N > 1: the model split across N gloo ranks (DCP's writer, DCP on "
                    "ringckpt.dcp, ringckpt over torch.distributed)")
    args = ap.parse_args()
    size = parse_size(args.size)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    here = os.path.dirname(os.path.abspath(__file__))
    binary = args.ringckpt or os.path.join(here, "..", "build", "tools", "ringckpt")
    if not os.access(binary, os.X_OK):
        ap.error(f"no ringckpt tool at {binary}; pass --ringckpt PATH")
    if args.ranks < 1:
        ap.error("--ranks must be at least 1")
    if args.ranks > 1:
        return ranks_main(args, binary)

    import ringckpt
    from ringckpt._compat import import_dcp  # the one work-around for torch 1.13 on 3.11
    dcp = import_dcp()
    machine = machine_facts(args.dir)
    print(machine_line(machine))
    root = tempfile.mkdtemp(prefix="ringckpt-compare-", dir=args.dir)
    try:
        # The shape: the checkpoint a one-round C++ bench keeps.
        shape_run = run_cpp_bench(binary, args.size, os.path.join(root, "shape"), keep=True)
        state, state_bytes = state_dict_like(
            os.path.join(root, "shape", "bench-sync", "metadata.json"), args.seed)
        remove(os.path.join(root, "shape"))
        bm = shape_run["machine"]
        target = {k: (torch.zeros_like(v) if isinstance(v, torch.Tensor) else 0)
                  for k, v in state.items()}
        cache = PageCache()
        print(f"state dict: {len(state)} entries, {state_bytes / 2**30:.3f} GiB of tensors "
              f"(--size {args.size} = {size} bytes); ringckpt data files "
              f"{bm['data_file_bytes']} bytes; ring {bm['ring_bytes'] >> 20} MiB, extent "
              f"{bm['extent_size'] >> 20} MiB, queue depth {bm['queue_depth']}; "
              f"page cache dropped by {cache.method}; {args.repeat} rounds")
        ctx = {"ringckpt": ringckpt, "dcp": dcp, "cache": cache, "state": state,
               "flat_dcp": flat_for_dcp(state), "target": target, "root": root,
               "binary": binary, "size_text": args.size, "file_bytes": bm["data_file_bytes"],
               "state_bytes": state_bytes, "samples": {k: [] for k in (
                   "cpp device", "cpp ringckpt-sync", "cpp device-read", "cpp load",
                   "py sync save", "torch.save+fsync", "py lazy returned",
                   "py lazy committed", "dcp save", "py load in place", "torch.load",
                   "py load_state_dict", "dcp load")}}
        with ringckpt.Checkpointer(ring_bytes=bm["ring_bytes"], extent_size=bm["extent_size"],
                                   queue_depth=bm["queue_depth"], staging_threads=2,
                                   direct_io=True, mode="lazy") as ck:
            ctx["ck"] = ck
            warm = os.path.join(root, "warm-up")
            ck.save(state, warm)  # faults the ring in, as the C++ bench's warm-up does
            remove(warm)
            found = {}
            for r in range(args.repeat):
                found = one_round(ctx, r, check=r + 1 == args.repeat)
                print(f"  round {r + 1}/{args.repeat} done", file=sys.stderr)
        if ctx["py_file_bytes"] != ctx["file_bytes"]:
            print(f"note: Python wrote {ctx['py_file_bytes']} data bytes (its structure map "
                  f"and encoded values included), the C++ bench {ctx['file_bytes']}; every "
                  "ringckpt rate counts the C++ bench's bytes")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    rows, gates, ratios = summarize(ctx, args.repeat)
    print_report(rows, gates, "GB/s: ringckpt rows count its data files' bytes (as ringckpt "
                 "bench does), torch and DCP rows the tensors' bytes; ratios are medians of "
                 "per-round ratios.")
    print(f"reported: torch.save+fsync takes {ratios['torch.save / py sync (time)']:.2f}x, DCP "
          f"save {ratios['dcp save / py sync (time)']:.2f}x the Python sync save's time; "
          f"torch.load {ratios['torch.load / py in place (time)']:.2f}x, DCP load "
          f"{ratios['dcp load / py in place (time)']:.2f}x the in-place load's")
    correct = all(v is None for v in found.values())
    for what, diff in found.items():
        verdict = "ok" if what == "ringckpt.verify" else "equal to the source, bit for bit"
        print(f"correct: {what}: {verdict if diff is None else 'FAILED: ' + diff}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "page_cache": cache.method,
                       "state_bytes": state_bytes,
                       "file_bytes": ctx["file_bytes"], "samples": ctx["samples"],
                       "ratios": ratios, "gates": gates,
                       "correct": {k: v is None for k, v in found.items()}}, f, indent=1)
    return 0 if correct and all(g["pass"] for g in gates) else 1


if __name__ == "__main__":
    sys.exit(main())
