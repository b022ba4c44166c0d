"""The Python API: aeppt(), AEPPTDefense, training, checkpoints, validation, torch.compile."""
import json
import pickle

import pytest
import torch
from torch import nn

import mia_fast
from mia_fast import AEPPTDefense, SubstituteMIM, aeppt, train_substitute
from mia_fast.checkpoint import load_substitute, save_substitute
from mia_fast.errors import CheckpointError, InputError
from mia_fast.testing import devices, membership_records, random_probs


@pytest.fixture(scope="module")
def trained_mim():
    model, history = train_substitute(*membership_records(1000, 0, classes=10), epochs=15, seed=0, progress=False)
    return model, history


def test_training_learns_membership(trained_mim):
    model, history = trained_mim
    assert history["loss"][-1] < history["loss"][0]
    assert history["train_accuracy"] > 0.8


@pytest.mark.parametrize("device", devices())
def test_seeded_runs_are_reproducible_and_chunking_bounds_memory(trained_mim, device):
    model, _ = trained_mim
    probs = random_probs(500, 10, torch.Generator().manual_seed(1)).to(device)
    a = aeppt(probs, model, 1e-3, generator=torch.Generator().manual_seed(7))
    b = aeppt(probs, model, 1e-3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.adversarial, b.adversarial)
    chunked = aeppt(probs, model, 1e-3, generator=torch.Generator().manual_seed(7), chunk_size=100)
    assert chunked.adversarial.shape == probs.shape
    s = a.summary()
    assert s["n"] == 500 and 0 < s["mean_l1"] <= s["max_l1"] <= 100 * 1e-3 * 10
    assert s["label_flips"] == int((a.adversarial.argmax(1) != probs.argmax(1)).sum())


def test_defense_module_drops_into_a_model(trained_mim):
    model, _ = trained_mim
    target = nn.Sequential(nn.Linear(5, 10))
    defended = nn.Sequential(target, nn.Softmax(1), AEPPTDefense(model, eps=1e-3, preserve_label=True))
    x = torch.randn(64, 5)
    out = defended(x)
    assert out.shape == (64, 10)
    assert torch.equal(out.argmax(1), torch.softmax(target(x), 1).argmax(1))
    assert "eps=0.001" in repr(defended) and "precision=fp32" in repr(defended)
    with pytest.raises(ValueError, match="precision must be one of"):
        AEPPTDefense(model, eps=1e-3, precision="half")


def test_defense_module_under_torch_compile_fullgraph(trained_mim):
    model, _ = trained_mim
    defense = AEPPTDefense(model, eps=1e-3, iters=10)
    compiled = torch.compile(defense, fullgraph=True, backend="aot_eager")
    probs = random_probs(32, 10, torch.Generator().manual_seed(3))
    out = compiled(probs)
    assert out.shape == probs.shape and bool(((out >= 0) & (out <= 1)).all())


@pytest.mark.parametrize("bad,match", [
    (torch.full((3, 10), float("nan")), "row 0 contains NaN"),
    (torch.full((3, 10), 0.2), "sums to 2"),
    (torch.full((3, 10), -0.1), "outside \\[0, 1\\]"),
    (torch.ones(10) / 10, "expected a 2-D"),
    (torch.ones(3, 4) / 4, "has 4 classes but the membership model expects 10"),
    (torch.empty(0, 10), "empty input"),
    (torch.ones(3, 10, dtype=torch.long), "expected a float tensor"),
])
def test_bad_inputs_are_rejected_clearly(trained_mim, bad, match):
    model, _ = trained_mim
    with pytest.raises(InputError, match=match):
        aeppt(bad, model, 1e-3)


def test_checkpoint_roundtrip_and_refusals(trained_mim, tmp_path):
    model, _ = trained_mim
    path = tmp_path / "mim.safetensors"
    save_substitute(path, model, {"note": "test"})
    loaded, payload = load_substitute(path)
    probs = random_probs(4, 10, torch.Generator().manual_seed(2))
    torch.testing.assert_close(loaded(probs, probs.argmax(1)), model(probs, probs.argmax(1)))
    assert payload["architecture"]["num_classes"] == 10 and payload["version"] == mia_fast.__version__
    with pytest.raises(CheckpointError, match="no such file"):
        load_substitute(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a mia-fast checkpoint"):
        load_substitute(tmp_path / "corrupt.pt")
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"format": "mia-fast/checkpoint/v1", "kind": "substitute-mim", "x": Exploit()}, f)
    with pytest.raises(CheckpointError, match="not a mia-fast checkpoint"):
        load_substitute(tmp_path / "evil.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a mia-fast substitute-MIM checkpoint"):
        load_substitute(tmp_path / "other.pt")


def test_checkpoints_are_plain_safetensors_and_earlier_pt_ones_still_load(trained_mim, tmp_path):
    from safetensors import safe_open

    from mia_fast.checkpoint import checkpoint_file, load_payload

    model, _ = trained_mim
    save_substitute(tmp_path / "substitute.safetensors", model, {"note": "test"})
    with safe_open(str(tmp_path / "substitute.safetensors"), framework="pt") as f:  # any safetensors reader
        header = json.loads(f.metadata()["mia-fast"])
        assert header["kind"] == "substitute-mim" and header["meta"] == {"note": "test"}
        assert set(f.keys()) == {f"state/{k}" for k in model.state_dict()}
    legacy = tmp_path / "old"
    legacy.mkdir()
    torch.save(load_payload(tmp_path / "substitute.safetensors", "substitute-mim"), legacy / "substitute.pt")
    assert checkpoint_file(legacy, "substitute") == legacy / "substitute.pt"  # a run an earlier mia-fast wrote
    probs = random_probs(4, 10, torch.Generator().manual_seed(2))
    again, _ = load_substitute(checkpoint_file(legacy, "substitute"))
    torch.testing.assert_close(again(probs, probs.argmax(1)), model(probs, probs.argmax(1)))
    save_substitute(legacy / "substitute.safetensors", model, {})
    assert checkpoint_file(legacy, "substitute") == legacy / "substitute.safetensors"


class Exploit:
    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def test_end_to_end_defense_brings_an_independent_attacker_to_chance():
    """A MIM the defender never saw (other seed, other data) drops to ~50% accuracy with AEPPT on,
    and stays well above it with AEPPT off: fails if the defense is silently disabled."""
    defender, _ = train_substitute(*membership_records(1500, 10, classes=10), epochs=15, seed=1, progress=False)
    attacker, _ = train_substitute(*membership_records(1500, 20, classes=10), epochs=15, seed=2, progress=False,
                                   model=SubstituteMIM(10, hidden=128, connection_hidden=32))
    members, m_lab, nonmembers, n_lab = membership_records(1000, 30, classes=10)

    def attack_accuracy(mem, non):
        with torch.no_grad():
            hit = torch.cat([attacker(mem, m_lab) >= 0.5, attacker(non, n_lab) < 0.5])
        return float(hit.float().mean())

    undefended = attack_accuracy(members, nonmembers)
    gen = torch.Generator().manual_seed(0)
    eps = 3e-3
    defended = attack_accuracy(aeppt(members, defender, eps, generator=gen).adversarial,
                               aeppt(nonmembers, defender, eps, generator=gen).adversarial)
    assert undefended > 0.75
    assert 0.35 <= defended <= 0.62
