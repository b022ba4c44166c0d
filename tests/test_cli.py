"""The mia-fast command line: the happy path, and one clear line for every kind of bad input."""
import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mia_fast.cli import main
from mia_fast.testing import random_probs


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    g = torch.Generator().manual_seed(0)
    members, nonmembers = random_probs(300, 10, g, sharpness=4), random_probs(300, 10, g, sharpness=1.5)
    np.save(d / "members.npy", members.numpy())
    np.save(d / "nonmembers.npy", nonmembers.numpy())
    np.save(d / "member_labels.npy", members.argmax(1).numpy())
    torch.save(nonmembers.argmax(1), d / "nonmember_labels.pt")
    result = CliRunner().invoke(main, ["train-substitute", "--members", str(d / "members.npy"),
                                       "--member-labels", str(d / "member_labels.npy"),
                                       "--nonmembers", str(d / "nonmembers.npy"),
                                       "--nonmember-labels", str(d / "nonmember_labels.pt"),
                                       "--out", str(d / "mim.safetensors"), "--epochs", "5"])
    assert result.exit_code == 0, result.output
    return d


def _defend(files, predictions, out, *extra):
    return CliRunner().invoke(main, ["defend", "-p", str(predictions), "--mim", str(files / "mim.safetensors"), "--eps", "1e-3",
                                     "--iters", "20", "--batch", "64", "--out", str(out), *extra])


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_defend_streams_and_writes_the_output(files, suffix):
    out = files / f"adv{suffix}"
    result = _defend(files, files / "nonmembers.npy", out, "--seed", "3", "--json-out", str(files / "s.json"))
    assert result.exit_code == 0, result.output
    assert "defended 300 predictions" in result.output and "predictions/s" in result.output
    adv = np.load(out) if suffix == ".npy" else torch.load(out, weights_only=True).numpy()
    probs = np.load(files / "nonmembers.npy")
    assert adv.shape == probs.shape and 0 < np.abs(adv - probs).sum(1).mean() <= 20 * 1e-3 * 10
    again = files / f"again{suffix}"
    assert _defend(files, files / "nonmembers.npy", again, "--seed", "3").exit_code == 0
    second = np.load(again) if suffix == ".npy" else torch.load(again, weights_only=True).numpy()
    assert np.array_equal(adv, second)


def test_defend_algorithm_option_picks_the_kernel(files):
    """Events (the CPU default) and dense give the same defended vectors up to float32 rounding."""
    outs = {}
    for algorithm in ("events", "dense"):
        outs[algorithm] = files / f"adv_{algorithm}.npy"
        result = _defend(files, files / "nonmembers.npy", outs[algorithm], "--algorithm", algorithm)
        assert result.exit_code == 0, result.output
    events, dense = np.load(outs["events"]), np.load(outs["dense"])
    assert (np.abs(events - dense) <= 1e-5).mean() >= 0.995
    default = files / "adv_default.npy"
    assert _defend(files, files / "nonmembers.npy", default).exit_code == 0
    assert np.array_equal(np.load(default), events)
    bad = _defend(files, files / "nonmembers.npy", files / "x.npy", "--algorithm", "events", "--precision", "3xtf32",
                  "--device", "cuda")
    assert bad.exit_code != 0


@pytest.mark.parametrize("order", ["C", "F"])
def test_defend_file_reads_batches_from_the_file_as_one_pass_would(files, order, tmp_path):
    from mia_fast.defenses import create_defense
    from mia_fast.defenses.streaming import defend_file

    probs = np.load(files / "nonmembers.npy")
    np.save(tmp_path / "p.npy", np.asarray(probs, order=order))  # "F": no plain-read path, the memmap serves
    rounding = create_defense("rounding", decimals=1)
    summary = defend_file(rounding, tmp_path / "p.npy", tmp_path / "out.npy", batch=7)  # 300 = 42 * 7 + 6
    out = np.load(tmp_path / "out.npy")
    assert out.dtype == np.float32 and np.array_equal(out, rounding(torch.from_numpy(probs)).numpy())
    assert summary["n"] == 300


def test_outputs_get_ordinary_permissions(files):
    import os

    old = os.umask(0o022)
    try:
        out = files / "perm.npy"
        assert _defend(files, files / "nonmembers.npy", out).exit_code == 0
        assert (out.stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(old)


def test_tensor_core_precision_needs_cuda(files):
    out = files / "tc.npy"
    result = _defend(files, files / "nonmembers.npy", out, "--precision", "3xtf32")
    assert result.exit_code != 0 and result.output.strip() == (
        "Error: --precision 3xtf32 runs on CUDA tensor cores; add --device cuda")
    assert not out.exists()


def _write(path, array):
    if path.suffix == ".npy":
        np.save(path, array)
    else:
        torch.save(torch.as_tensor(array), path)
    return path


@pytest.mark.parametrize("name,content,match", [
    ("nan.npy", np.full((4, 10), np.nan, np.float32), "row 0 contains NaN or Inf"),
    ("range.npy", np.full((4, 10), 1.5, np.float32), "outside \\[0, 1\\]"),
    ("sum.npy", np.full((4, 10), 0.05, np.float32), "sums to 0.5"),
    ("ndim.npy", np.full((10,), 0.1, np.float32), "expected a 2-D"),
    ("classes.npy", np.full((4, 5), 0.2, np.float32), "has 5 classes but the aeppt defense expects 10"),
    ("empty.npy", np.zeros((0, 10), np.float32), "empty input"),
    ("int.npy", np.ones((4, 10), np.int64), "expected float probabilities"),
    ("corrupt.npy", None, "cannot be read"),
    ("missing.npy", "absent", "no such file"),
])
def test_bad_predictions_exit_nonzero_with_one_line_and_no_output(files, name, content, match):
    path = files / name
    if isinstance(content, np.ndarray):
        _write(path, content)
    elif content is None:
        path.write_bytes(b"\x93NUMPY garbage")
    out = files / f"out_{name}"
    result = _defend(files, path, out)
    assert result.exit_code != 0
    assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1, result.output
    assert __import__("re").search(match, result.output), result.output
    assert "Traceback" not in result.output
    assert not out.exists() and not list(files.glob(f".out_{name}*"))


def test_bad_checkpoints_are_refused(files):
    (files / "bad.pt").write_bytes(b"junk")
    with open(files / "evil.pt", "wb") as f:
        pickle.dump([print], f)
    (files / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    for ckpt, match in [("bad.pt", "not a mia-fast checkpoint"), ("evil.pt", "not a mia-fast checkpoint"),
                        ("bad.safetensors", "not a mia-fast checkpoint"), ("none.pt", "no such file")]:
        result = CliRunner().invoke(main, ["defend", "-p", str(files / "nonmembers.npy"), "--mim", str(files / ckpt),
                                           "--eps", "1e-3", "--out", str(files / "x.npy")])
        assert result.exit_code != 0 and match in result.output and "Traceback" not in result.output
        assert not (files / "x.npy").exists()


def test_failure_mid_stream_leaves_nothing(files):
    probs = random_probs(200, 10, torch.Generator().manual_seed(5)).numpy()
    probs[150, 0] = np.nan  # third batch of 64
    path = _write(files / "late_nan.npy", probs)
    result = _defend(files, path, files / "late.npy")
    assert result.exit_code != 0 and "row 150" in result.output
    assert not (files / "late.npy").exists() and not list(files.glob(".late.npy*"))
