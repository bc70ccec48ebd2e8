#!/usr/bin/env python3
"""Checks that no file includes one of a later stage of the pipeline.

The stages, lowest first: format -> plan -> io -> save, load -> drivers -> tools.
A file in lib/STAGE/ may include lib/ headers of its own stage or an earlier
one, and the public headers (include/ringckpt/) that belong to those stages;
save and load are siblings and do not include each other. The public headers
obey the same order among themselves. Prints each violation and exits 1.
"""
import pathlib
import re
import sys

RANK = {"format": 0, "plan": 1, "io": 2, "save": 3, "load": 3, "drivers": 4, "tools": 5}

# The stage each public header belongs to.
PUBLIC = {
    "error": "format", "dtype": "format", "tensor": "format", "fqn": "format", "metadata": "format",
    "plan": "format", "io_options": "format",
    "planner": "plan", "default_planner": "plan", "example_planners": "plan", "coordinator": "plan", "mpi": "plan",
    "storage": "plan",
    "filesystem_writer": "save", "filesystem_reader": "load", "verify": "load",
    "filesystem": "drivers",
    "checkpoint": "drivers", "checkpointer": "drivers",
    "ringckpt": "tools",
}

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def stage_of_include(name):
    if name.startswith("ringckpt/"):
        stem = pathlib.Path(name).stem
        return PUBLIC.get(stem)
    first = name.split("/")[0]
    return first if first in RANK and "/" in name else None


def allowed(own, other):
    if other == own:
        return True
    if {own, other} == {"save", "load"}:
        return False
    return RANK[other] <= RANK[own]


def main(root):
    root = pathlib.Path(root)
    problems = []
    checked = 0
    sources = []
    for path in sorted((root / "lib").rglob("*.[ch]pp")):
        stage = path.relative_to(root / "lib").parts[0]
        if stage not in RANK:
            problems.append(f"{path.relative_to(root)}: lib/{stage}/ is not a stage folder")
            continue
        sources.append((path, stage))
    for path in sorted((root / "include" / "ringckpt").glob("*.hpp")):
        stage = PUBLIC.get(path.stem)
        if stage is None:
            problems.append(f"{path.relative_to(root)}: public header with no stage in check_layers.py")
            continue
        sources.append((path, stage))
    for path in sorted((root / "tools").glob("*.[ch]pp")):
        sources.append((path, "tools"))
    for path, stage in sources:
        for name in INCLUDE.findall(path.read_text()):
            other = stage_of_include(name)
            if other is None:
                continue  # a file of the same folder (tools/) or a system header
            checked += 1
            if not allowed(stage, other):
                problems.append(f"{path.relative_to(root)} ({stage}) includes {name} ({other})")
    for p in problems:
        print(p)
    print(f"{len(sources)} files, {checked} includes checked, {len(problems)} out of order")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent))
