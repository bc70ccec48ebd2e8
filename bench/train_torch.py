#!/usr/bin/env python3
"""train_torch.py: what checkpointing costs a real PyTorch training loop, four ways.

A GPT-shaped model (token embedding, nn.TransformerEncoder with a causal mask,
LM head; defaults d_model 768, 12 layers, 12 heads, ffn 3072, vocabulary 4096:
about 91M fp32 parameters, so parameters plus Adam's two moments are about
1.1 GB) trains on the CPU on synthetic tokens (batch 1 x 8 tokens: about a
second a step on 2 cores). Every --every steps the loop checkpoints
{"model": model.state_dict(), "optim": opt.state_dict(), "step": n}:

  ringckpt  lazy async_save; before the opt.step() after it, the loop waits on
            h.staged (the tensors may not change before); the previous save's
            h.committed is waited before the next save starts, and at the end;
  torch     torch.save + flush + fsync, in the loop;
  thread    clone() of every tensor in the loop, then torch.save + fsync on a
            background thread (what people do today); joined before the next;
  dcp       torch 1.13 DCP save_state_dict (sync_files=True), in the loop, of
            the state flattened to dotted names (1.13 does not flatten);
  none      no checkpoints: the baseline.

Each run trains (checkpoints + 1) x every steps, checkpointing after steps
every, 2 x every, ...; the loop time includes the final waits for durability.
Runs are interleaved (none, ringckpt, torch, thread, dcp; again) and medians
taken over --repeat. Per way: time lost per checkpoint = (loop time - loop
time without checkpoints) / checkpoints; the stall (time the loop spent inside
save calls and waits) per checkpoint; the time from a checkpoint's start to
durable. Gates: ringckpt loses the least time of the ways run; and the caller's
stall of a lazy async_save of a state dict of exactly 1,000 tensors, median of
20 calls after a warm-up, is under 2 ms.

Usage (Debian's torch 1.13 is in /usr/bin/python3):
    PYTHONPATH=build/python /usr/bin/python3 bench/train_torch.py [--json out.json]
    /usr/bin/python3 bench/train_torch.py --ways torch,thread,dcp     # no ringckpt
    ... --layers 2 --d-model 256 --repeat 1 --every 2                  # a quick check
Run in a directory on a real disk (default /var/tmp), not tmpfs. Not run in CI.
"""

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time

import torch
from torch import nn

from compare_torch import (dcp_save_durable, flat_for_dcp, gate, gate_line, machine_facts,
                           machine_line, markdown_table, median, torch_save_durable)

WAYS = ("ringckpt", "torch", "thread", "dcp")


class TinyGPT(nn.Module):
    """Decoder-only language model: pre-norm transformer blocks under a causal mask."""

    def __init__(self, vocab, d_model, nhead, layers, ffn):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        block = nn.TransformerEncoderLayer(d_model, nhead, ffn, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers)
        self.head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, tokens):
        n = tokens.shape[1]
        causal = torch.triu(torch.full((n, n), float("-inf")), diagonal=1)
        return self.head(self.blocks(self.embed(tokens), mask=causal))


class Trainer:
    """One model, optimizer and token stream, shared by every run: the runs
    continue one training, so each sees the same steady-state step."""

    def __init__(self, args):
        torch.manual_seed(args.seed)
        self.vocab = args.vocab
        self.model = TinyGPT(args.vocab, args.d_model, args.nhead, args.layers, args.ffn)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.tokens = torch.Generator().manual_seed(args.seed)
        self.batch, self.seq = args.batch, args.seq
        self.step_number = 0

    def forward_backward(self):
        x = torch.randint(0, self.vocab, (self.batch, self.seq + 1), generator=self.tokens)
        logits = self.model(x[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, self.vocab), x[:, 1:].reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()

    def optimizer_step(self):
        self.opt.step()
        self.step_number += 1

    def state(self):
        # The tensors are the live ones (state_dict() detaches without copying).
        return {"model": self.model.state_dict(), "optim": self.opt.state_dict(),
                "step": self.step_number}


def tensor_bytes(obj):
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def cloned(obj):
    """A copy with every tensor clone()d (containers rebuilt, plain values kept)."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return type(obj)((k, cloned(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(cloned(v) for v in obj)
    return obj


class Way:
    """How one run checkpoints. Subclasses time their own stalls: the time the
    training loop is blocked in a save call or a wait. `durable` holds, per
    checkpoint, seconds from its start until its bytes were durable."""

    def __init__(self, where):
        self.where = where
        self.stall = 0.0
        self.durable = []
        self.count = 0

    def path(self):
        self.count += 1
        return os.path.join(self.where, f"step-{self.count}")

    def checkpoint(self, state):  # after opt.step() of a checkpoint step
        pass

    def before_optimizer_step(self):  # the tensors are about to change
        pass

    def finish(self):  # end of the run: everything durable
        pass


class RingckptLazy(Way):
    def __init__(self, where, ck):
        super().__init__(where)
        self.ck = ck
        self.pending = None  # the last save's handle; its staged wait not yet done
        self.last = None     # the last save's handle (committed maybe not waited)

    def checkpoint(self, state):
        t0 = time.perf_counter()
        if self.last is not None:
            self.last.committed.result()  # one save in flight at a time
        start = time.perf_counter()
        handle = self.ck.async_save(state, self.path(), mode="lazy")
        stamps = self.durable

        # Runs on ringckpt's completion thread when the save is durable.
        handle.committed.add_done_callback(
            lambda f: stamps.append(time.perf_counter() - start) if f.exception() is None
            else None)
        self.stall += time.perf_counter() - t0
        self.pending = self.last = handle

    def before_optimizer_step(self):
        if self.pending is not None:
            t0 = time.perf_counter()
            self.pending.staged.result()
            self.stall += time.perf_counter() - t0
            self.pending = None

    def finish(self):
        t0 = time.perf_counter()
        self.before_optimizer_step()
        if self.last is not None:
            self.last.committed.result()
        self.stall += time.perf_counter() - t0
        # The done-callback may still be appending on the completion thread.
        deadline = time.perf_counter() + 5
        while len(self.durable) < self.count and time.perf_counter() < deadline:
            time.sleep(0.001)


class TorchSaveInLoop(Way):
    def checkpoint(self, state):
        t0 = time.perf_counter()
        torch_save_durable(state, self.path() + ".pt")
        self.durable.append(time.perf_counter() - t0)
        self.stall += self.durable[-1]


class TorchSaveOnThread(Way):
    def __init__(self, where):
        super().__init__(where)
        self.thread = None
        self.error = None

    def join(self):
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            raise self.error

    def checkpoint(self, state):
        t0 = time.perf_counter()
        self.join()
        copy = cloned(state)
        path = self.path() + ".pt"

        def write():
            try:
                torch_save_durable(copy, path)
                self.durable.append(time.perf_counter() - t0)
            except BaseException as e:  # re-raised on the loop by join()
                self.error = e

        self.thread = threading.Thread(target=write, name="torch.save")
        self.thread.start()
        self.stall += time.perf_counter() - t0

    def finish(self):
        t0 = time.perf_counter()
        self.join()
        self.stall += time.perf_counter() - t0


class DcpInLoop(Way):
    def __init__(self, where, dcp):
        super().__init__(where)
        self.dcp = dcp

    def checkpoint(self, state):
        t0 = time.perf_counter()
        dcp_save_durable(self.dcp, flat_for_dcp(state), self.path())
        self.durable.append(time.perf_counter() - t0)
        self.stall += self.durable[-1]


def train_run(trainer, way, steps, every):
    """Trains `steps` steps, checkpointing after every `every`-th but the last
    `every`; returns the loop's seconds, durability waits included."""
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        trainer.forward_backward()
        if way is not None:
            way.before_optimizer_step()
        trainer.optimizer_step()
        if way is not None and i % every == 0 and i + every <= steps:
            way.checkpoint(trainer.state())
    if way is not None:
        way.finish()
    return time.perf_counter() - t0


def small_tensor_stall(ringckpt, root, count, calls):
    """Median seconds an async_save of `count` small tensors blocks its
    caller (each save committed before the next, so none queues)."""
    state = {f"layer{i}.weight": torch.full((64,), float(i)) for i in range(count)}
    stalls = []
    with ringckpt.Checkpointer(ring_bytes=64 << 20, mode="lazy") as ck:
        for i in range(calls + 3):  # the first 3: warm-up
            path = os.path.join(root, f"small-{i}")
            t0 = time.perf_counter()
            handle = ck.async_save(state, path, mode="lazy")
            stall = time.perf_counter() - t0
            handle.committed.result()
            shutil.rmtree(path)
            if i >= 3:
                stalls.append(stall)
    return median(stalls), stalls


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ways", default=",".join(WAYS),
                    help=f"comma-separated, of {', '.join(WAYS)} (a run without is always made)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each way (medians)")
    ap.add_argument("--every", type=int, default=4, help="steps between checkpoints")
    ap.add_argument("--checkpoints", type=int, default=2, help="checkpoints per run")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--nhead", type=int, default=12)
    ap.add_argument("--ffn", type=int, help="feed-forward width (default 4 x d-model)")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=8, help="tokens per sequence")
    ap.add_argument("--small-tensors", type=int, default=1000,
                    help="tensors in the stall test's state dict")
    ap.add_argument("--stall-calls", type=int, default=20)
    ap.add_argument("--dir", default="/var/tmp", help="where to write (a real disk)")
    ap.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    args.ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    for w in args.ways:
        if w not in WAYS:
            ap.error(f"--ways: unknown way {w!r} (known: {', '.join(WAYS)})")
    if args.ffn is None:
        args.ffn = 4 * args.d_model
    for name in ("repeat", "every", "checkpoints", "layers", "d_model", "nhead", "ffn", "vocab",
                 "batch", "seq", "small_tensors", "stall_calls"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.d_model % args.nhead:
        ap.error("--d-model must be a multiple of --nhead")
    return args


def main():
    args = parse_args()
    ringckpt = None
    if "ringckpt" in args.ways:
        import ringckpt
    dcp = None
    if "dcp" in args.ways:
        from ringckpt._compat import import_dcp  # the one work-around for torch 1.13 on 3.11
        dcp = import_dcp()
    machine = machine_facts(args.dir)
    print(machine_line(machine))

    trainer = Trainer(args)
    for _ in range(2):  # Adam's moments exist from the first step on
        trainer.forward_backward()
        trainer.optimizer_step()
    state_bytes = tensor_bytes(trainer.state())
    params = sum(p.numel() for p in trainer.model.parameters())
    steps = (args.checkpoints + 1) * args.every
    print(f"model: {params / 1e6:.1f}M fp32 parameters (d_model {args.d_model}, {args.layers} "
          f"layers, {args.nhead} heads, ffn {args.ffn}, vocab {args.vocab}); checkpoint "
          f"{state_bytes / 1e9:.3f} GB; batch {args.batch} x {args.seq} tokens; {steps} steps "
          f"a run, {args.checkpoints} checkpoints every {args.every}; {args.repeat} rounds of "
          f"none,{','.join(args.ways)}; torch threads {torch.get_num_threads()}")

    root = tempfile.mkdtemp(prefix="ringckpt-train-", dir=args.dir)
    runs = {w: [] for w in ["none"] + args.ways}
    extent = 8 << 20
    ring = (state_bytes + 2 * extent - 1) // extent * extent  # the whole state, rounded up
    ck = ringckpt.Checkpointer(ring_bytes=ring, extent_size=extent, mode="lazy") \
        if ringckpt else None
    small = None
    try:
        for r in range(args.repeat):
            for name in runs:
                where = os.path.join(root, f"{name}-{r}")
                os.makedirs(where)
                way = {"none": lambda: None,
                       "ringckpt": lambda: RingckptLazy(where, ck),
                       "torch": lambda: TorchSaveInLoop(where),
                       "thread": lambda: TorchSaveOnThread(where),
                       "dcp": lambda: DcpInLoop(where, dcp)}[name]()
                loop = train_run(trainer, way, steps, args.every)
                run = {"loop_s": loop}
                if way is not None:
                    if len(way.durable) != args.checkpoints:
                        sys.exit(f"train_torch.py: {name}: {len(way.durable)} of "
                                 f"{args.checkpoints} checkpoints became durable")
                    run.update(stall_s=way.stall, durable_s=way.durable)
                runs[name].append(run)
                shutil.rmtree(where)
                print(f"  round {r + 1}/{args.repeat} {name}: loop {loop:.2f} s", file=sys.stderr)
        if ringckpt:
            small = small_tensor_stall(ringckpt, root, args.small_tensors, args.stall_calls)
    finally:
        if ck is not None:
            ck.close()
        shutil.rmtree(root, ignore_errors=True)

    base = median([run["loop_s"] for run in runs["none"]])
    rows = [["none", f"{base:.2f}", "", "", ""]]
    lost = {}
    for name in args.ways:
        loop = median([run["loop_s"] for run in runs[name]])
        lost[name] = (loop - base) / args.checkpoints
        stall = median([run["stall_s"] for run in runs[name]]) / args.checkpoints
        durable = median([d for run in runs[name] for d in run["durable_s"]])
        rows.append([name, f"{loop:.2f}", f"{lost[name]:.3f}", f"{stall:.3f}", f"{durable:.3f}"])
    print()
    print(markdown_table(["way", "loop s (median)", "lost s / checkpoint",
                          "stall s / checkpoint", "to durable s (median)"], rows))
    print()
    gates = []
    if ringckpt:
        best_other = min((lost[w] for w in args.ways if w != "ringckpt"), default=float("inf"))
        gates.append(gate("ringckpt-loses-least", "ringckpt lazy loses the least time per "
                          "checkpoint", lost["ringckpt"], best_other,
                          lost["ringckpt"] < best_other))
        stall_ms = small[0] * 1e3
        gates.append(gate("small-tensor-stall", f"lazy async_save of {args.small_tensors} "
                          f"tensors stalls the caller < 2 ms (median of {args.stall_calls})",
                          stall_ms, 2.0, stall_ms < 2.0))
    else:
        print("gates skipped: ringckpt not among --ways")
    for g in gates:
        print(gate_line(g))
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args),
                       "parameters": params, "state_bytes": state_bytes, "runs": runs,
                       "lost_s_per_checkpoint": lost, "gates": gates,
                       "small_tensor_stalls_s": small[1] if small else None}, f, indent=1)
    return 0 if all(g["pass"] for g in gates) else 1


if __name__ == "__main__":
    sys.exit(main())
