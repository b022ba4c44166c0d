"""The experiment pipeline and its commands: demo, train-target, train-attack, defend --run, data list."""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mia_fast.cli import main
from mia_fast.attacks import ATTACKS, attack_names
from mia_fast.checkpoint import load_payload
from mia_fast.evaluation.battery import ADAPTIVE, evaluate_run
from mia_fast.evaluation.threat import Options, ThreatModel
from mia_fast.pipeline import Config, RunDir, format_results, run_demo

SHARED_LOCATION = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "location"


def test_demo_on_the_embedded_dataset_writes_a_complete_run(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--run-dir", str(tmp_path / "run"), "--target-epochs", "60",
                                       "--mim-epochs", "20", "--iters", "30"])
    assert result.exit_code == 0, result.output
    assert "MIM0 inference accuracy" in result.output and "target test accuracy" in result.output
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    deployed = f"defenses/{results['defense_key']}"
    for name in ["config.json", "splits.json", "target.safetensors", "substitute.safetensors", "mim0.safetensors",
                 "results.json", "outputs/members.npy", f"{deployed}/nonmembers.npy", f"{deployed}/defense.safetensors"]:
        assert (run / name).is_file(), name
    assert results["dataset"] == "digits" and results["eps"] == 2e-3
    # The defense leaves the target's accuracy alone (label flips are rare) and perturbs every output.
    assert abs(results["target"]["test_accuracy"]["with"] - results["target"]["test_accuracy"]["without"]) <= 0.03
    assert results["perturbation"]["mean_l1"] > 0
    again = CliRunner().invoke(main, ["demo", "--run-dir", str(run)])
    assert again.exit_code != 0 and "exists and is not empty" in again.output


def test_default_run_directory_never_overwrites(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["demo", "--target-epochs", "2", "--mim-epochs", "2", "--iters", "2"]
    for expected in ["runs/digits-seed0", "runs/digits-seed0-2"]:
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.output
        assert f"run directory: {expected}" in r.output and (tmp_path / expected / "results.json").is_file()


def test_a_relative_data_dir_is_stored_absolute(tmp_path, monkeypatch):
    """Later stages (evaluate, attack) reload the dataset, perhaps from another working directory."""
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["train-target", "--run-dir", "run", "--data-dir", ".", "--target-epochs", "1"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data_dir"] == str(tmp_path.resolve())


def test_evaluate_runs_the_whole_battery_and_writes_the_report(tmp_path):
    run = tmp_path / "run"
    assert CliRunner().invoke(main, ["demo", "--run-dir", str(run), "--target-epochs", "30", "--mim-epochs", "5",
                                     "--iters", "20"]).exit_code == 0
    small = ["--epochs", "3", "--shadows", "2", "--queries", "2", "--noisy-copies", "4"]
    r = CliRunner().invoke(main, ["evaluate", str(run), *small])
    assert r.exit_code == 0, r.output
    assert "aeppt, aware" in r.output and "lira" in r.output and "averaging" in r.output
    assert "against the gap floor" in r.output
    figures = ["roc.png", "per_class_cdf.png", "step_size.png", "attacker_loss.png"]
    for name in ["evaluation.md", "evaluation.html", *figures]:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
        if name.endswith(".png"):
            assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (run / "evaluation.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(figures) and 'src="' + 'roc.png' not in page
    assert "| lira | aeppt, defense-aware |" in (run / "evaluation.md").read_text()
    ev = json.loads((run / "evaluation.json").read_text())
    assert set(ev["attacks"]) == set(ATTACKS) and set(ev["adaptive"]) == set(ADAPTIVE)
    for attack in ev["attacks"].values():
        assert set(attack) == {"none", "naive", "aware"} and 0 <= attack["aware"]["accuracy"] <= 1
        assert len(attack["none"]["per_class_recall"]) == 10
        assert 0 <= attack["aware"]["auc_correct"] <= 1 and "tpr_at_0%_fpr" in attack["aware"]
    assert ev["summary"]["gap_floor"] == pytest.approx(0.5 + (ev["target"]["train_accuracy"]
                                                             - ev["target"]["test_accuracy"]) / 2)
    # the gap attack reads only labels, which AEPPT keeps: it cannot be fooled (label flips aside)
    gap = ev["attacks"]["gap"]
    assert abs(gap["none"]["accuracy"] - gap["aware"]["accuracy"]) <= 0.05
    # the flip attack inverts the naive MIM0's decisions on the same defended outputs
    assert ev["adaptive"]["flip"]["accuracy"] == pytest.approx(1 - ev["attacks"]["mim0"]["naive"]["accuracy"],
                                                               abs=0.011)
    # eps = 0 leaves the outputs alone: the sweep's first row is the undefended MIM0
    first = ev["step_size_sweep"][0]
    assert first["eps"] == 0 and first["mean_l1"] == 0
    assert first["mim0_accuracy"] == ev["attacks"]["mim0"]["none"]["accuracy"]
    assert ev["attacker_loss"]["iteration"][0] == 0 and ev["attacker_loss"]["iteration"][-1] == 20

    # the attacker's pool (shadow training, references) never holds a scored record
    threat = ThreatModel(run, Options())
    s = threat.splits
    pool = set(threat.pool.tolist())
    assert not pool & set(s.eval_members + s.eval_nonmembers)
    assert pool >= set(s.adversary_members + s.adversary_nonmembers) and len(pool) == 1797 - 100

    out = tmp_path / "lira.json"
    r = CliRunner().invoke(main, ["attack", str(run), "lira", *small, "--json-out", str(out)])
    assert r.exit_code == 0 and "aware" in r.output, r.output
    assert "2 shadow models from" in r.output  # trained once per run, then read from shadows/
    assert json.loads(out.read_text())["aware"]["auc"] == pytest.approx(ev["attacks"]["lira"]["aware"]["auc"])
    for args in (["evaluate", str(run), "--attacks", "mim0,nope"], ["attack", str(run), "nope"]):
        bad = CliRunner().invoke(main, args)
        assert bad.exit_code != 0 and "unknown attack 'nope'" in bad.output and len(bad.output.splitlines()) == 1


def test_evaluate_without_shadow_models_leaves_their_attacks_out(tmp_path):
    run = tmp_path / "run"
    assert CliRunner().invoke(main, ["demo", "--run-dir", str(run), "--target-epochs", "10", "--mim-epochs", "2",
                                     "--iters", "5"]).exit_code == 0
    r = CliRunner().invoke(main, ["evaluate", str(run), "--shadows", "0", "--epochs", "2", "--noisy-copies", "2",
                                  "--no-adaptive", "--no-sweep"])
    assert r.exit_code == 0, r.output
    ev = json.loads((run / "evaluation.json").read_text())
    assert set(ev["attacks"]) == set(attack_names(shadows=False)) and "adaptive" not in ev
    assert {"lira", "shokri", "confidence"} <= set(ATTACKS) - set(attack_names(shadows=False))
    bad = CliRunner().invoke(main, ["attack", str(run), "lira", "--shadows", "0"])
    assert bad.exit_code != 0 and "need shadow models, got shadows=0" in bad.output


def test_stage_commands_share_a_run_directory(tmp_path):
    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["train-target", "--run-dir", str(run), "--target-epochs", "5", "--members", "300",
                                  "--nonmembers", "300"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "config.json").read_text())["members"] == 300
    r = CliRunner().invoke(main, ["train-attack", "--run-dir", str(run)])
    assert r.exit_code == 0 and (run / "mim0.safetensors").is_file(), r.output
    r = CliRunner().invoke(main, ["train-attack", "--run-dir", str(tmp_path / "none")])
    assert r.exit_code != 0 and "no config.json" in r.output
    r = CliRunner().invoke(main, ["defend", "--run", str(run), "-p", str(run / "outputs/nonmembers.npy"),
                                  "--out", str(tmp_path / "adv.npy")])
    assert r.exit_code != 0 and "substitute.safetensors: no such file" in r.output


def test_image_datasets_train_the_cnn_target(tmp_path, monkeypatch):
    """The image path end to end on a tiny MNIST in idx format: SmallCNN28 target, MIMs, defense."""
    from test_data import _idx

    monkeypatch.setenv("MIA_FAST_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 60).astype(np.uint8)
    images = (rng.integers(0, 60, (60, 28, 28)) + labels[:, None, None] * 20).astype(np.uint8)
    for prefix, sl in [("train", slice(0, 40)), ("t10k", slice(40, 60))]:
        (tmp_path / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(images[sl]))
        (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(labels[sl]))
    r = run_demo(Config(dataset="mnist", data_dir=str(tmp_path), members=30, nonmembers=30, target_epochs=3,
                        mim_epochs=3, iters=10), tmp_path / "run", log=lambda m: None, progress=False)
    assert RunDir(tmp_path / "run").config().dataset == "mnist"
    payload = load_payload(tmp_path / "run" / "target.safetensors", "target")
    assert payload["architecture"]["name"] == "smallcnn28"
    assert r["mim0"]["with"]["members"] == 15 and r["perturbation"]["mean_l1"] > 0


def test_data_list_reports_every_dataset(tmp_path):
    r = CliRunner().invoke(main, ["data", "list", "--data-dir", str(tmp_path)])
    assert r.exit_code == 0
    for name in ["digits", "location30", "purchase100", "texas100", "cifar10", "cifar100", "mnist", "fashion-mnist"]:
        assert name in r.output
    assert "found: scikit-learn" in r.output and str(tmp_path) in r.output


def test_missing_dataset_is_one_clear_line(tmp_path):
    r = CliRunner().invoke(main, ["demo", "--dataset", "cifar100", "--data-dir", str(tmp_path), "--run-dir",
                                  str(tmp_path / "run")])
    assert r.exit_code != 0 and "cifar100: none of cifar-100-python/" in r.output and "Traceback" not in r.output


@pytest.mark.skipif(not (SHARED_LOCATION / "dataset_location.tgz").is_file(), reason="real Location-30 not present")
def test_location30_defense_brings_mim0_to_chance_but_not_an_aware_mim0(tmp_path):
    """Metric band on a real MIA benchmark, in the README's setting (Location-30 defaults): MIM0 clearly
    leaks without AEPPT and is near chance with it. Fails if the defense is off (eps = 0) or broken."""
    cfg = Config(dataset="location30", data_dir=str(SHARED_LOCATION))
    r = run_demo(cfg, tmp_path / "run", log=lambda m: None, progress=False)
    print(format_results(r))
    assert r["target"]["train_accuracy"]["without"] > 0.95
    assert r["mim0"]["without"]["accuracy"] > 0.75
    assert 0.40 <= r["mim0"]["with"]["accuracy"] <= 0.60
    assert r["perturbation"]["label_flips"] <= 0.01 * 3000
    # ... and the README's finding: MIM0 refitted on the deployed (defended) answers recovers the leakage
    ev = evaluate_run(tmp_path / "run", attacks=["mim0"], adaptive=False, sweep=False)
    mim0 = ev["attacks"]["mim0"]
    assert mim0["naive"]["accuracy"] == pytest.approx(r["mim0"]["with"]["accuracy"], abs=0.05)
    assert mim0["aware"]["accuracy"] > 0.75 and mim0["aware"]["auc"] > 0.85  # README: 87.1% / 90.6%
