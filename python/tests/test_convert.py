"""`python3 -m ringckpt convert`: torch.save files and DCP checkpoints into
ringckpt checkpoints and back, bit for bit, nesting kept; the command's exit
codes, messages and progress lines."""

import collections
import fractions
import io
import math
import os
import subprocess
import sys

import pytest
import torch

import ringckpt
from ringckpt import _compat, convert

COMMAND_LIMIT = 120  # seconds one command may take before the test fails
# The I/O settings of in-process conversions, saves and loads: a small staging
# ring, because the default one (256 MiB, pre-faulted on every call) costs
# about a second a call here and these tests move kilobytes.
# test_torch_save_to_ringckpt_and_back_is_identical keeps the defaults.
IO = {"ring_bytes": 4 << 20, "extent_size": 1 << 20}


def raw_bytes(tensor):
    """The tensor's bytes as a uint8 tensor: NaN payloads and -0.0 compare exactly."""
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def assert_identical(a, b, where="root"):
    """Same nesting and container types, same keys in the same order, same
    plain values, tensors of equal dtype, shape and raw bytes."""
    assert type(a) is type(b) or (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)), \
        (where, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        assert torch.equal(raw_bytes(a), raw_bytes(b)), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}.{i}")
    elif isinstance(a, float):
        assert a.hex() == b.hex() or (math.isnan(a) and math.isnan(b)), where  # -0.0 too
    else:
        assert a == b, where


def special_floats(dtype):
    """-0.0, a NaN with a payload, infinities and ordinary values in `dtype`."""
    bits = torch.tensor([0x7FC00123, 0x80000000, 0x7F800000, 0xFF800000, 0x3F800000],
                        dtype=torch.int64).to(torch.int32).view(torch.float32)
    return torch.cat([bits, torch.randn(11)]).to(dtype)


def source_state():
    torch.manual_seed(0)
    return {
        "model": collections.OrderedDict([
            ("embed.weight", torch.randn(64, 16)),
            ("layer.0.weight", special_floats(torch.bfloat16).reshape(4, 4)),
            ("layer.0.half", special_floats(torch.float16)),
            ("layer.0.bias", torch.tensor([-0.0, float("nan"), 1.5])),
            ("mask", torch.tensor([True, False, True])),
            ("scalar", torch.tensor(7, dtype=torch.int64)),
        ]),
        "optim": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(64, 16)}},
                  "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0],
                                    "name": None}]},
        "step": 12,
        "loss": -0.0,
        "tags": ("a", 1, 2.5, None, b"raw"),
        "buffers": [torch.arange(5, dtype=torch.int32), {"x": torch.ones(2, dtype=torch.int8)}],
    }


def test_torch_save_to_ringckpt_and_back_is_identical(tmp_path):
    source = source_state()
    torch.save(source, tmp_path / "src.pt")

    assert convert.convert(tmp_path / "src.pt", tmp_path / "ck") == "torch.save file"
    assert_identical(ringckpt.load_state_dict(tmp_path / "ck"), source)
    assert convert.convert(tmp_path / "ck", tmp_path / "back.pt") == "ringckpt checkpoint"
    assert not os.path.exists(tmp_path / "back.pt.tmp")
    assert_identical(torch.load(tmp_path / "back.pt"), source)


def test_overwrite_replaces_and_refusal_keeps_the_destination(tmp_path):
    torch.save({"w": torch.zeros(3)}, tmp_path / "old.pt")
    torch.save({"w": torch.ones(3)}, tmp_path / "new.pt")
    convert.convert(tmp_path / "old.pt", tmp_path / "ck", **IO)
    with pytest.raises(ringckpt.Error) as refused:
        convert.convert(tmp_path / "new.pt", tmp_path / "ck", **IO)
    assert refused.value.code == "already_exists" and "--overwrite" in str(refused.value)
    assert torch.equal(ringckpt.load_state_dict(tmp_path / "ck", **IO)["w"], torch.zeros(3))
    convert.convert(tmp_path / "new.pt", tmp_path / "ck", overwrite=True, **IO)
    assert torch.equal(ringckpt.load_state_dict(tmp_path / "ck", **IO)["w"], torch.ones(3))
    convert.convert(tmp_path / "ck", tmp_path / "old.pt", overwrite=True, **IO)
    assert torch.equal(torch.load(tmp_path / "old.pt")["w"], torch.ones(3))


def test_dcp_checkpoint_to_ringckpt_equals_the_source(tmp_path):
    dcp = _compat.import_dcp()
    source = {"weight": special_floats(torch.float32).reshape(4, 4),
              "bf16": special_floats(torch.bfloat16),
              "ids": torch.arange(10, dtype=torch.int64),
              "step": 5,
              "extra": {"lr": 0.5, "names": ["a", "b"]}}
    dcp.save_state_dict(source, dcp.FileSystemWriter(str(tmp_path / "dcp")), no_dist=True)
    assert os.path.exists(tmp_path / "dcp" / ".metadata")

    assert convert.convert(tmp_path / "dcp", tmp_path / "ck", **IO) == "DCP checkpoint"
    loaded = ringckpt.load_state_dict(tmp_path / "ck", **IO)
    assert sorted(loaded) == sorted(source)
    for key in source:
        assert_identical(loaded[key], source[key], key)


def test_ringckpt_dcp_checkpoint_to_ringckpt(tmp_path):
    ringckpt_dcp = pytest.importorskip("ringckpt.dcp")  # another part of the package
    dcp = _compat.import_dcp()
    source = {"weight": special_floats(torch.float32), "step": 5}
    dcp.save_state_dict(source, ringckpt_dcp.StorageWriter(str(tmp_path / "dcp")),
                        no_dist=True)
    # FileSystemReader cannot read this layout: a success went through ringckpt.dcp's reader.
    assert convert.convert(tmp_path / "dcp", tmp_path / "ck", **IO) == "DCP checkpoint"
    assert_identical(ringckpt.load_state_dict(tmp_path / "ck", **IO), source)


def test_nesting_is_rebuilt_from_dcp_paths():
    flat = {"model.w": 1, "optim.state.0.m": 2, "groups.1": 3, "groups.0": 4, "top": 5}
    paths = {"model.w": ("model", "w"), "optim.state.0.m": ("optim", "state", "0", "m"),
             "groups.1": ("groups", 1), "groups.0": ("groups", 0)}
    assert convert._nest(flat, paths) == {"model": {"w": 1}, "optim": {"state": {"0": {"m": 2}}},
                                          "groups": [4, 3], "top": 5}


def test_sources_that_are_no_checkpoint_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ringckpt.Error) as empty:
        convert.convert(tmp_path / "empty", tmp_path / "out", **IO)
    assert "neither metadata.json" in str(empty.value) and "empty" in str(empty.value)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(ringckpt.Error) as junk:
        convert.convert(tmp_path / "junk.pt", tmp_path / "out", **IO)
    assert junk.value.code == "corrupt" and "junk.pt" in str(junk.value)
    assert not os.path.exists(tmp_path / "out")


def run_cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.run(["/usr/bin/python3", "-m", "ringckpt", "convert", *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=COMMAND_LIMIT)


def test_cli_exit_codes_messages_and_progress(tmp_path):
    big = {"w": torch.randn(512, 1024), "step": 1}  # 2 MiB of tensors
    torch.save(big, tmp_path / "big.pt")

    done = run_cli("big.pt", "ck", "--progress-threshold", "1MiB", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "reading big.pt: 100% (" in done.stderr
    assert "writing ck (ringckpt)" in done.stderr and "done in" in done.stderr
    back = run_cli("ck", "back.pt", "--progress-threshold", "1MiB", "--ring-bytes", "8MiB",
                   cwd=tmp_path)
    assert back.returncode == 0, back.stderr
    assert "writing back.pt: 100% (" in back.stderr
    assert_identical(torch.load(tmp_path / "back.pt"), big)

    missing = run_cli("nothing.pt", "out", cwd=tmp_path)
    assert missing.returncode == 1
    assert "nothing.pt: does not exist" in missing.stderr and "Traceback" not in missing.stderr

    exists = run_cli("big.pt", "ck", cwd=tmp_path)
    assert exists.returncode == 1
    assert "ck: exists; pass --overwrite" in exists.stderr and "Traceback" not in exists.stderr
    assert run_cli("big.pt", "ck", "--overwrite", "--ring-bytes", "8MiB",
                   cwd=tmp_path).returncode == 0

    usage = run_cli("only-one-argument", cwd=tmp_path)
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_cli_objects_need_allow_pickle(tmp_path):
    torch.save({"w": torch.ones(2), "ratio": fractions.Fraction(1, 3)}, tmp_path / "obj.pt")
    refused = run_cli("obj.pt", "ck", cwd=tmp_path)
    assert refused.returncode == 1, refused.stderr
    assert "obj.pt" in refused.stderr and "fractions.Fraction" in refused.stderr
    assert "--allow-pickle" in refused.stderr and "Traceback" not in refused.stderr
    assert not os.path.exists(tmp_path / "ck")

    allowed = run_cli("obj.pt", "ck", "--allow-pickle", "--ring-bytes", "8MiB", cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr
    loaded = ringckpt.load_state_dict(tmp_path / "ck", allow_pickle=True, **IO)
    assert loaded["ratio"] == fractions.Fraction(1, 3) and torch.equal(loaded["w"], torch.ones(2))
    convert.convert(tmp_path / "ck", tmp_path / "back.pt", allow_pickle=True, **IO)
    assert torch.load(tmp_path / "back.pt")["ratio"] == fractions.Fraction(1, 3)


def test_progress_only_above_the_threshold(tmp_path):
    torch.save({"w": torch.randn(256, 1024)}, tmp_path / "src.pt")  # 1 MiB of tensors
    quiet, loud = io.StringIO(), io.StringIO()
    convert.convert(tmp_path / "src.pt", tmp_path / "a", reporter=convert.Reporter(stream=quiet),
                    **IO)
    convert.convert(tmp_path / "a", tmp_path / "b.pt",
                    reporter=convert.Reporter(threshold=1000, stream=loud), **IO)
    assert quiet.getvalue() == ""
    lines = loud.getvalue().splitlines()
    assert lines[0].startswith(f"reading {tmp_path / 'a'} (ringckpt) (1.") and " MB)" in lines[0]
    assert lines[-1].startswith(f"writing {tmp_path / 'b.pt'}: 100% (1.0 of 1.0 MB) in ")


def test_sizes_parse():
    assert [convert.parse_size(t) for t in ("4096", "64MiB", "64M", "1GiB", "2k")] == \
        [4096, 64 << 20, 64 << 20, 1 << 30, 2048]
    with pytest.raises(ValueError):
        convert.parse_size("lots")


def test_progress_counts_within_one_tensor(tmp_path, monkeypatch):
    monkeypatch.setattr(convert, "PROGRESS_INTERVAL", 0.0)
    monkeypatch.setattr(convert.CountingFile, "PIECE", 256 << 10)
    source = {"w": torch.randn(1024, 1024)}  # 4 MiB: one storage, one read and one write
    torch.save(source, tmp_path / "src.pt")
    out = io.StringIO()
    convert.convert(tmp_path / "src.pt", tmp_path / "ck",
                    reporter=convert.Reporter(threshold=0, stream=out), **IO)
    reading = [line for line in out.getvalue().splitlines() if line.startswith("reading")]
    percents = [int(line.split(": ")[1].split("%")[0]) for line in reading]
    assert len(percents) >= 10 and percents == sorted(percents) and percents[-1] == 100
    assert_identical(ringckpt.load_state_dict(tmp_path / "ck", **IO), source)


def test_failed_torch_save_leaves_neither_half_file_nor_temporary(tmp_path, monkeypatch):
    ringckpt.save({"w": torch.ones(4)}, tmp_path / "ck", **IO)
    (tmp_path / "old.pt").write_bytes(b"the previous file")

    def half_then_fail(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(ringckpt.Error) as failed:
        convert.convert(tmp_path / "ck", tmp_path / "old.pt", overwrite=True, **IO)
    assert failed.value.code == "io" and "No space left" in str(failed.value)
    assert (tmp_path / "old.pt").read_bytes() == b"the previous file"
    with pytest.raises(ringckpt.Error):
        convert.convert(tmp_path / "ck", tmp_path / "new.pt", **IO)
    assert sorted(os.listdir(tmp_path)) == ["ck", "old.pt"]
