"""Input perturbation (Bai et al. 2021): the generators keep their contracts, Algorithm 1 matches a slow
per-record reference of its selection loop, alpha picks exactly floor(alpha * N) records by seed, bad
input is refused with nothing written, and an end-to-end band on digits fails if the perturbation is
silently skipped."""
import copy
import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.datasets import load_digits

from mia_fast.checkpoint import checkpoint_file, load_model
from mia_fast.cli import main
from mia_fast.defenses import create_defense
from mia_fast.defenses.perturbation import (FGSM, Feedback, LeakageEvaluator, Simulator, create_generator,
                                            perturbed_subset, protect_data)
from mia_fast.errors import InputError
from mia_fast.models import TabularMLP
from mia_fast.seeding import stream
from mia_fast.testing import devices

EPS = 8.0  # squared L2 on digits' 64 features in [0, 1]


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    x, y = torch.from_numpy(x / 16.0).float(), torch.from_numpy(y).long()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return {"x": x[order[:120]], "y": y[order[:120]], "x_infer": x[order[120:240]], "y_infer": y[order[120:240]]}


class FrozenSimulator(Simulator):
    """Trained once, then fixed: every round sees the same simulator, so a reference can recompute it."""

    def fit(self, x, y, *, progress=False):
        return super().fit(x, y, progress=progress) if not self.models else self


@pytest.fixture(scope="module")
def simulator(digits):
    return Simulator(TabularMLP(64, 10), num_models=2, epochs=40, lr=1e-3, seed=3).fit(digits["x"], digits["y"])


def _configured(name, **params):
    return create_generator(name, **params).configure(eps=EPS, distance="squared-l2", strength=0.5)


def test_fgsm_is_its_formula_and_stays_in_the_data_range(digits, simulator):
    x, y = digits["x"][:16], digits["y"][:16]
    gen = _configured("fgsm")
    cand = gen.propose(simulator, x, y, 4, generator=stream(0, "perturbation-candidates"))
    assert cand.shape == (16, 4, 64)
    xg = x.clone().requires_grad_(True)
    loss = torch.stack([torch.nn.functional.cross_entropy(m(xg), y, reduction="none") for m in simulator.models]).mean(0)
    (grad,) = torch.autograd.grad(loss.sum(), xg)
    radius = math.sqrt(EPS)
    for k, fraction in enumerate(np.linspace(0.5, 1.0, 4)):  # floor 0.5 R up to min(1, 0.5 * 2) R
        expected = (x + fraction * radius / 8.0 * grad.sign()).clamp(0, 1)
        torch.testing.assert_close(cand[:, k], expected)
    assert float(cand.min()) >= 0 and float(cand.max()) <= 1
    assert (cand - x[:, None]).pow(2).sum(-1).max() <= EPS * (1 + 1e-5)


@pytest.mark.skipif("cuda" not in devices(), reason="needs a GPU")
@pytest.mark.parametrize("name", ["fgsm", "optmargin", "advgan"])
def test_generators_run_on_cuda_like_on_the_cpu(digits, simulator, name):
    x, y = digits["x"][:32], digits["y"][:32]
    on_gpu = copy.deepcopy(simulator)
    on_gpu.device = torch.device("cuda")
    on_gpu.models = [m.cuda() for m in on_gpu.models]
    out = {}
    for sim in (simulator, on_gpu):
        gen = _configured(name, **({"epochs": 2} if name == "advgan" else {}))
        gen.fit(sim, None, x, y, seed=0)
        out[sim.device.type] = gen.propose(sim, x, y, 3, generator=stream(0, "perturbation-candidates"))
    assert out["cuda"].device.type == "cpu" and out["cuda"].shape == out["cpu"].shape
    assert float(out["cuda"].min()) >= 0 and float(out["cuda"].max()) <= 1
    if name == "fgsm":  # the same formula: only signs of gradients within rounding of 0 may differ
        assert float((out["cuda"] - out["cpu"]).abs().gt(1e-5).float().mean()) < 0.01


@pytest.mark.parametrize("name,params", [("optmargin", {"steps": 40, "copies": 4, "search_steps": 2, "restarts": 2}),
                                         ("advgan", {"epochs": 30})])
def test_label_keeping_generators_keep_the_simulators_label(digits, simulator, name, params):
    x, y = digits["x"][:60], digits["y"][:60]
    gen = _configured(name, **params)
    gen.fit(simulator, None, x, y, seed=0)
    cand = gen.propose(simulator, x, y, 3, generator=stream(0, "perturbation-candidates"))
    assert float(cand.min()) >= 0 and float(cand.max()) <= 1
    _, original = simulator.evaluate(x, y)
    _, perturbed = simulator.evaluate(cand.flatten(0, 1), y.repeat_interleave(3))
    kept = perturbed.argmax(1).view(60, 3) == original.argmax(1)[:, None]
    moved = (cand - x[:, None]).pow(2).sum(-1)
    assert float(kept.float().mean()) >= 0.9, f"{name}: only {float(kept.float().mean()):.0%} keep the label"
    assert float(moved.median()) > 0.1 * EPS * 0.25, f"{name} barely perturbs (median distance {float(moved.median()):.3g})"


def test_advgan_snapshots_propose_the_latest_epochs_generators(digits, simulator):
    x, y = digits["x"][:20], digits["y"][:20]
    final = _configured("advgan", epochs=3).fit(simulator, None, x, y, seed=0)
    snap = _configured("advgan", epochs=3, snapshots=2).fit(simulator, None, x, y, seed=0)
    one = final.propose(simulator, x, y, 2, generator=stream(0, "perturbation-candidates"))
    cand = snap.propose(simulator, x, y, 4, generator=stream(0, "perturbation-candidates"))
    assert cand.shape == (20, 4, 64) and len(snap._snapshots) == 2
    torch.testing.assert_close(cand[:, 0], one[:, 0])  # the newest snapshot is the final generator, at t = 1
    torch.testing.assert_close(cand[:, 2], one[:, 1])  # ... and at t = 1 + spread
    assert float((cand[:, 1] - cand[:, 0]).abs().max()) > 1e-3  # the epoch before is another generator
    with torch.no_grad():
        older = snap.clip(x + snap._delta(x, snap._snapshots[1]))
    torch.testing.assert_close(cand[:, 1], older)


def _reference_selection(x, y, cand_rounds, simulator, strengths, eps):
    """Algorithm 1's selection, one record and one candidate at a time (squared L2, fallback original)."""
    uploads, rounds = x.clone(), [-1] * len(x)
    prev = [None] * len(x)
    for r, cand in enumerate(cand_rounds):
        floor = (strengths[r] * math.sqrt(eps)) ** 2
        for j in range(len(x)):
            _, ref = simulator.evaluate(x[j:j + 1], y[j:j + 1])
            options = [(cand[j, k], k) for k in range(cand.shape[1])]
            if prev[j] is not None and float((prev[j] - x[j]).pow(2).sum()) >= floor * (1 - 1e-6):
                options.append((prev[j], -1))
            best, best_loss, best_k = None, math.inf, None
            for c, k in options:
                loss, mean = simulator.evaluate(c[None], y[j:j + 1])
                if float((c - x[j]).pow(2).sum()) <= eps and mean.argmax(1) == ref.argmax(1) and float(loss) < best_loss:
                    best, best_loss, best_k = c, float(loss), k
            if best is None:
                prev[j], rounds[j] = None, -1
            else:
                prev[j] = best
                rounds[j] = r if best_k != -1 else rounds[j]
        for j in range(len(x)):
            uploads[j] = x[j] if prev[j] is None else prev[j]
    return uploads, torch.tensor(rounds)


def test_algorithm_1_matches_a_per_record_reference(digits):
    x, y = digits["x"][:40], digits["y"][:40]
    sim = FrozenSimulator(TabularMLP(64, 10), num_models=2, epochs=30, lr=1e-3, seed=1)
    proposals, strengths = [], []

    class Recording(FGSM):
        def propose(self, simulator, x, y, k, *, generator):
            out = super().propose(simulator, x, y, k, generator=generator)
            out = out + 0.3 * torch.randn(out.shape, generator=generator) * torch.rand(out.shape[:2] + (1,), generator=generator)
            out = out.clamp(0, 1)  # noisy candidates: some fall outside eps, some lose the label
            proposals.append(out.clone())
            strengths.append(self.strength)
            return out

    prot = protect_data(x, y, digits["x_infer"], digits["y_infer"], generator=Recording(), simulator=sim,
                        evaluator=LeakageEvaluator(steps=50), feedback=Feedback(tau=0.0, gap_max=0.0), eps=EPS,
                        rounds=3, candidates=5, strength=0.2, seed=0)
    assert len(proposals) == 3 and strengths == pytest.approx([0.2, 0.3, 0.45])
    uploads, rounds = _reference_selection(x, y, proposals, sim, strengths, EPS)
    torch.testing.assert_close(prot.x, uploads)
    assert torch.equal(prot.round_chosen, rounds)
    assert torch.equal(prot.perturbed, rounds >= 0)
    assert 0 < prot.fallbacks < len(x), "the case should have records with and without a qualifying candidate"
    assert prot.summary()["fallbacks"] == int((rounds < 0).sum())


def test_alpha_picks_floor_alpha_n_records_reproducibly():
    for n, alpha in [(10, 0.35), (120, 0.2), (7, 1.0), (100, 0.57)]:
        subset = perturbed_subset(n, alpha, seed=5)
        expected = math.floor(Fraction(str(alpha)) * n)  # 0.57 * 100 is 56.99999... in floating point
        assert len(subset) == expected and len(set(subset.tolist())) == len(subset)
        assert torch.equal(subset, perturbed_subset(n, alpha, seed=5))
    assert not torch.equal(perturbed_subset(100, 0.5, seed=5), perturbed_subset(100, 0.5, seed=6))


def test_alpha_leaves_the_other_records_untouched(digits):
    runs = [protect_data(digits["x"], digits["y"], digits["x_infer"], digits["y_infer"], generator=create_generator("fgsm"),
                         simulator=Simulator(TabularMLP(64, 10), num_models=1, epochs=20, lr=1e-3),
                         evaluator=LeakageEvaluator(steps=50), feedback=Feedback(), eps=EPS, alpha=0.4, rounds=1,
                         candidates=2, seed=9) for _ in range(2)]
    prot = runs[0]
    assert int(prot.selected.sum()) == math.floor(0.4 * 120)
    assert torch.equal(prot.x[~prot.selected], digits["x"][~prot.selected])
    assert not torch.equal(prot.x[prot.perturbed], digits["x"][prot.perturbed])
    assert torch.equal(runs[0].x, runs[1].x), "the same seed gives the same upload"


@pytest.mark.parametrize("kwargs,match", [({"eps": 0.0}, "eps must be > 0"), ({"alpha": 0.0}, "alpha must be in"),
                                          ({"alpha": 1.5}, "alpha must be in"), ({"rounds": 0}, "rounds")])
def test_bad_arguments_are_refused(digits, kwargs, match):
    args = {"eps": EPS, "alpha": 1.0, "rounds": 1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        protect_data(digits["x"], digits["y"], digits["x_infer"], digits["y_infer"], generator=create_generator("fgsm"),
                     simulator=Simulator(TabularMLP(64, 10)), evaluator=LeakageEvaluator(), feedback=Feedback(), **args)


def test_records_outside_the_data_range_are_refused(digits):
    with pytest.raises(InputError, match="outside the data range"):
        protect_data(digits["x"] * 2, digits["y"], digits["x_infer"], digits["y_infer"],
                     generator=create_generator("fgsm"), simulator=Simulator(TabularMLP(64, 10)),
                     evaluator=LeakageEvaluator(), feedback=Feedback(), eps=EPS)


@pytest.mark.parametrize("args,match", [
    (["--eps", "0"], "eps must be > 0"),
    (["--eps", "-3"], "eps must be > 0"),
    (["--alpha", "0"], "alpha must be in"),
    (["--alpha", "1.2"], "alpha must be in"),
    (["--generator", "pgd"], "--generator"),
    (["--members", "1000", "--nonmembers", "797"], "needs reference records"),
    (["--generator-param", "steps=3"], "unknown hyperparameter 'steps'"),
])
def test_protect_data_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path, args, match):
    out = tmp_path / "upload"
    result = CliRunner().invoke(main, ["protect-data", "--dataset", "digits", "--run-dir", str(out), *args])
    assert result.exit_code != 0
    assert match in result.output.strip().splitlines()[-1], result.output
    assert not out.exists()


def test_protect_data_writes_the_upload_the_report_and_the_figure(tmp_path):
    out = tmp_path / "upload"
    result = CliRunner().invoke(main, ["protect-data", "--dataset", "digits", "--run-dir", str(out), "--eps", str(EPS),
                                       "--rounds", "1", "--simulators", "2", "--target-epochs", "60", "--alpha", "0.5"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "protection.json").read_text())
    x, y = np.load(out / "protected_x.npy"), np.load(out / "protected_y.npy")
    records = np.genfromtxt(out / "records.csv", delimiter=",", names=True)
    assert x.shape == (100, 64) and y.shape == (100,) and len(records) == 100
    assert summary["selected"] == 50 == int(records["selected"].sum())
    assert summary["perturbed"] == int(records["perturbed"].sum()) > 0
    assert summary["perturbed"] + summary["fallbacks"] == 50
    original = load_digits().data[records["dataset_index"].astype(int)] / 16.0
    moved = ((x - original) ** 2).sum(1)
    np.testing.assert_allclose(moved, records["distance"], rtol=1e-4, atol=1e-5)
    assert (moved[records["perturbed"] == 0] == 0).all() and (moved <= EPS * (1 + 1e-5)).all()
    assert (out / "protected.png").stat().st_size > 1000


def test_end_to_end_band_on_digits_fails_if_the_perturbation_is_skipped(tmp_path):
    """train-target --defense input-perturbation trains on the upload: the perturbed records moved by at
    least the feedback floor (less where clipping at 0 and 1 cuts FGSM's steps), the target's outputs
    differ from the undefended target's trained with the same seed, and its test accuracy stays useful."""
    common = ["--dataset", "digits", "--target-epochs", "100"]
    defended, plain = tmp_path / "defended", tmp_path / "plain"
    result = CliRunner().invoke(main, ["train-target", *common, "--run-dir", str(defended), "--defense",
                                       "input-perturbation", "--param", "eps=8", "--param", "rounds=1",
                                       "--param", "simulators=2", "--param", "strength=0.25"])
    assert result.exit_code == 0, result.output
    assert CliRunner().invoke(main, ["train-target", *common, "--run-dir", str(plain)]).exit_code == 0
    meta = load_model(checkpoint_file(defended, "target"), "target")[1]["meta"]
    ip = meta["input_perturbation"]
    floor = (0.25 * math.sqrt(8)) ** 2
    assert ip["perturbed"] >= 30 and ip["perturbed"] + ip["fallbacks"] == 100, ip
    assert floor * 0.3 <= ip["mean_distance"] <= 8.0, ip
    assert 0.6 <= meta["test_accuracy"] <= 1.0
    # Trained on the originals, the defended target would be bit for bit the plain one (same seed and init).
    outputs = [np.load(run / "outputs" / "nonmembers.npy") for run in (defended, plain)]
    assert np.abs(outputs[0] - outputs[1]).max() > 0.05, "the defended target trained on the originals"


def test_the_defense_validates_its_hyperparameters():
    assert create_defense("input-perturbation", generator="advgan", generator_params="epochs=2").generator == "advgan"
    for params, match in [({"generator": "pgd"}, "unknown generator"), ({"eps": -1.0}, "eps must be > 0"),
                          ({"generator_params": "epochs"}, "expected key=value"),
                          ({"distance": "l1"}, "distance must be"), ({"fallback": "none"}, "fallback must be")]:
        with pytest.raises(ValueError, match=match):
            create_defense("input-perturbation", **params)


BAI_TINY = ["--dataset", "digits", "--target-epochs", "10", "--param", "simulators=1", "--param", "rounds=1",
            "--param", "candidates=2", "--param", "eps=8", "--param", "simulator_epochs=5",
            "--param", "generator_params=epochs=1"]


@pytest.mark.parametrize("experiment,settings", [
    ("bai-generators", ["no defense"] + [f"{g} {w} constraints" for w in ("without", "with")
                                         for g in ("advgan", "fgsm", "optmargin")]),
    ("bai-table3", ["none", "min-max (advreg)", "dp-sgd epsilon=50", "framework (advgan)"]),
])
def test_bai_experiments_run_every_setting_and_save_their_numbers(tmp_path, experiment, settings):
    run = tmp_path / experiment
    r = CliRunner().invoke(main, ["reproduce", experiment, "--run-dir", str(run), *BAI_TINY])
    assert r.exit_code == 0, r.output
    saved = json.loads((run / f"reproduce-{experiment}.json").read_text())
    assert [k for k in saved if k in settings] == settings
    if experiment == "bai-generators":
        assert (run / "bai-generators.png").stat().st_size > 1000
        curve = saved["no defense"]["curve"]
        assert [p["epoch"] for p in curve] == list(range(1, 11))  # every max(1, 10 // 20) epochs
        free = saved["fgsm without constraints"]["input_perturbation"]
        assert free["fallbacks"] == 0, "without the constraints every record takes its lowest-loss candidate"
    else:
        assert "paper: train" not in r.output  # digits is not the paper's dataset: no paper column
        for name in settings:
            assert 0 <= saved[name]["attack_accuracy"] <= 1


def test_bai_experiments_take_only_input_perturbation_hyperparameters(tmp_path):
    r = CliRunner().invoke(main, ["reproduce", "bai-rate", "--run-dir", str(tmp_path / "x"), "--param", "budget=1"])
    assert r.exit_code != 0 and "unknown hyperparameter 'budget'" in r.output
    r = CliRunner().invoke(main, ["reproduce", "table2", "--run-dir", str(tmp_path / "y"), "--param", "alpha=0.5"])
    assert r.exit_code != 0 and "bai-*" in r.output
