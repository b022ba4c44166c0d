"""Independent work units in this process or as Ray tasks: the same results, bit for bit."""
import functools

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mia_fast import train_substitute
from mia_fast.attacks import train_shadow_models
from mia_fast.cli import main
from mia_fast.defenses import AEPPT, create_defense
from mia_fast.defenses.perturbation import Simulator
from mia_fast.defenses.streaming import defend_file
from mia_fast.distributed import LocalEngine, create_engine
from mia_fast.errors import InputError
from mia_fast.models import TabularMLP
from mia_fast.checkpoint import save_substitute
from mia_fast.seeding import stream
from mia_fast.testing import membership_records, random_probs


def _pool():
    g = torch.Generator().manual_seed(0)
    return torch.randn(80, 5, generator=g), torch.randint(0, 3, (80,), generator=g)


# A Ray worker cannot import this test module, so what it runs must come from mia_fast.
_make = functools.partial(TabularMLP, 5, 3, hidden=(16,))


def _aeppt():
    m, ml, n, nl = membership_records(200, 1, classes=6)
    mim, _ = train_substitute(m, ml, n, nl, epochs=2, seed=0, progress=False)
    return AEPPT.from_substitute(mim, eps=1e-3, iters=20)


def test_the_local_engine_keeps_order_and_ray_options_need_ray():
    assert list(LocalEngine().map(lambda item, shared: (item, shared), "ab", shared=1)) == [("a", 1), ("b", 1)]
    with pytest.raises(InputError, match="Ray options"):
        create_engine(threads=2)


def test_defend_file_batch_k_draws_from_its_own_stream(tmp_path):
    defense = _aeppt()
    probs = random_probs(130, 6, torch.Generator().manual_seed(2))
    np.save(tmp_path / "p.npy", probs.numpy())
    summary = defend_file(defense, tmp_path / "p.npy", tmp_path / "out.npy", batch=50, seed=7)
    expected = torch.cat([defense.defend(probs[start:start + 50], generator=stream(7, "defend", k)).defended
                          for k, start in enumerate(range(0, 130, 50))])
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "out.npy")), expected)
    assert summary["seed"] == 7 and summary["n"] == 130
    assert abs(summary["mean_l1"] - float((expected - probs).abs().sum(1).mean())) < 1e-5


ray = pytest.importorskip("ray", reason="Ray is the optional extra mia-fast[ray]")


@pytest.fixture(scope="module")
def ray_engine():
    engine = create_engine(ray=True, num_cpus=2)
    yield engine
    engine.close()
    assert not ray.is_initialized()


def test_ray_shadow_models_equal_the_in_process_ones(ray_engine):
    x, y = _pool()
    advreg = create_defense("advreg", warmup_epochs=1)  # a training defense with reference records travels too
    for defense in (None, advreg):
        local = train_shadow_models(_make, x, y, num_shadows=3, train_size=30, epochs=2, seed=4, progress=False,
                                    defense=defense)
        remote = train_shadow_models(_make, x, y, num_shadows=3, train_size=30, epochs=2, seed=4, progress=False,
                                     defense=defense, engine=ray_engine)
        assert torch.equal(local.in_mask, remote.in_mask)
        for a, b in zip(local.models, remote.models):
            assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_ray_defend_equals_the_in_process_file(ray_engine, tmp_path):
    defense = _aeppt()
    probs = random_probs(300, 6, torch.Generator().manual_seed(3))
    np.save(tmp_path / "p.npy", probs.numpy())
    local = defend_file(defense, tmp_path / "p.npy", tmp_path / "local.npy", batch=64, seed=5)
    remote = defend_file(defense, tmp_path / "p.npy", tmp_path / "ray.npy", batch=64, seed=5, engine=ray_engine)
    assert np.array_equal(np.load(tmp_path / "local.npy"), np.load(tmp_path / "ray.npy"))
    assert local["mean_l1"] == remote["mean_l1"] and local["label_flips"] == remote["label_flips"]
    # The command line's --ray joins the running instance and writes the same file.
    save_substitute(tmp_path / "mim.safetensors", defense.substitute, {})
    args = ["defend", "-p", str(tmp_path / "p.npy"), "--mim", str(tmp_path / "mim.safetensors"), "--eps", "1e-3",
            "--iters", "20", "--batch", "64", "--seed", "5"]
    for extra, out in (([], "cli.npy"), (["--ray"], "cli-ray.npy")):
        result = CliRunner().invoke(main, [*args, *extra, "--out", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
    assert np.array_equal(np.load(tmp_path / "cli.npy"), np.load(tmp_path / "cli-ray.npy"))
    assert np.array_equal(np.load(tmp_path / "cli.npy"), np.load(tmp_path / "local.npy"))


def test_ray_simulator_models_equal_the_in_process_ones(ray_engine):
    x, y = _pool()
    fitted = []
    for engine in (None, ray_engine):
        simulator = Simulator(_make(), num_models=3, epochs=2, seed=6, engine=engine).fit(x, y)
        first = [torch.cat([p.flatten() for p in m.parameters()]) for m in simulator.models]
        simulator.fit(x.flip(0), y.flip(0))  # a warm refit continues each model where it is
        assert all(not p.requires_grad for m in simulator.models for p in m.parameters())
        fitted.append((first, simulator.evaluate(x, y)))
    (first_local, eval_local), (first_ray, eval_ray) = fitted
    assert all(torch.equal(a, b) for a, b in zip(first_local, first_ray))
    assert all(torch.equal(a, b) for a, b in zip(eval_local, eval_ray))
    assert not torch.equal(first_local[0], first_local[1])  # each model has its own stream


def test_protect_data_on_ray_writes_the_in_process_upload(ray_engine, tmp_path):
    args = ["protect-data", "--dataset", "digits", "--eps", "8", "--rounds", "1", "--simulators", "2",
            "--target-epochs", "10", "--alpha", "0.5"]
    for extra, out in (([], "local"), (["--ray"], "ray")):
        result = CliRunner().invoke(main, [*args, *extra, "--run-dir", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
    for name in ("protected_x.npy", "protected_y.npy"):
        assert np.array_equal(np.load(tmp_path / "local" / name), np.load(tmp_path / "ray" / name))
    assert (tmp_path / "local" / "records.csv").read_text() == (tmp_path / "ray" / "records.csv").read_text()
