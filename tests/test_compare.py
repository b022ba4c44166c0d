"""`mia-fast compare` and `mia-fast defend --defense`: every output defense on one run, side by side."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mia_fast.cli import main
from mia_fast.defenses import defense_names
from mia_fast.testing import random_probs

SMALL = ["--epochs", "3", "--shadows", "2", "--queries", "2", "--noisy-copies", "4"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("compare") / "run"
    r = CliRunner().invoke(main, ["demo", "--run-dir", str(run), "--target-epochs", "60", "--mim-epochs", "5",
                                  "--iters", "20"])
    assert r.exit_code == 0, r.output
    return run


def test_compare_puts_every_output_defense_side_by_side(run):
    r = CliRunner().invoke(main, ["compare", str(run), *SMALL, "--param", "memguard.classifier_epochs=20",
                                  "--param", "memguard.iters=100", "--param", "hamp-output.bank_size=500"])
    assert r.exit_code == 0, r.output
    cmp = json.loads((run / "compare.json").read_text())
    assert list(cmp["defenses"]) == defense_names("output")
    assert cmp["defenses"]["memguard"]["defense"]["params"]["iters"] == 100
    for name in ("compare.md", "compare.html", "compare.png", "compare_frontier.png"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0
    page = (run / "compare.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2 and "gap floor" in page.lower()
    md = (run / "compare.md").read_text()
    assert "| label-only |" in md and "sec. 5.9" in md and "beyond-label AUC" in md
    assert "Output defenses: the frontier" in md and "| rank-template |" in md
    for name in defense_names("output"):
        assert f"\n{name} " in r.output  # the printed table has a row per defense
        ev = cmp["defenses"][name]
        assert set(ev["attacks"]) >= {"gap", "mim0", "lira", "shokri", "robustness"}
        summary = ev["summary"]
        assert 0 <= summary["best_score_accuracy"] <= summary["best_aware_accuracy"] <= 1
        assert summary["best_score_attack"] not in ("gap", "robustness")
        assert set(ev["adaptive"]) >= {"rounding", "averaging"}
        assert ev["adaptive"]["averaging"]["queries"] == (2 if name in ("aeppt", "memguard", "hamp-output") else 1)
    assert set(cmp["defenses"]["aeppt"]["adaptive"]) == {"flip", "rounding", "adversarial_training", "averaging"}
    assert "flip" not in cmp["defenses"]["memguard"]["adaptive"]
    # the undefended column is the same for every defense: computed once
    assert all(ev["attacks"]["mim0"]["none"] == cmp["undefended"]["attacks"]["mim0"]["aware"]
               for ev in cmp["defenses"].values())
    # label-only leaves nothing but the label: the confidence-based attacks fall to the gap attack's level
    # (a silently disabled defense would leave the undefended ~70%)
    label_only = cmp["defenses"]["label-only"]
    for attack in ("confidence", "entropy", "modified_entropy"):
        assert cmp["undefended"]["attacks"][attack]["aware"]["accuracy"] > cmp["gap_floor"] + 0.08
        assert label_only["attacks"][attack]["aware"]["accuracy"] <= cmp["gap_floor"] + 0.05
    # the rank template too, at less distortion than label-only serving (its vector is the L1-cheapest)
    template = cmp["defenses"]["rank-template"]
    for attack in ("confidence", "entropy", "modified_entropy"):
        assert template["attacks"][attack]["aware"]["accuracy"] <= cmp["gap_floor"] + 0.05
    assert template["defense"]["perturbation"]["mean_l1"] < label_only["defense"]["perturbation"]["mean_l1"]
    assert template["defense"]["perturbation"]["label_flips"] == 0
    # label-only LiRA reads labels and the attacker's own undefended shadows: whatever a label-keeping
    # defense serves, it sees the same (its aware copy's one-hot references would change it)
    for ev in (label_only, template):
        same = json.dumps(ev["attacks"]["label_lira"]["aware"], sort_keys=True)  # NaN-safe equality
        assert same == json.dumps(ev["attacks"]["label_lira"]["none"], sort_keys=True)
    served = np.load(run / "defenses" / label_only["defense"]["key"] / "members.npy")
    assert set(np.unique(served).tolist()) == {0.0, 1.0}
    assert label_only["defense"]["perturbation"]["label_flips"] == 0
    # every deployed defense is cached in the run, and so are the shadow models
    assert len(list((run / "defenses").glob("*/summary.json"))) == len(defense_names("output"))
    assert len(list((run / "shadows").glob("*/model-*.safetensors"))) == 2


def test_compare_refuses_unknown_defenses_and_stray_params(run):
    for args, message in [(["--defenses", "aeppt,nope"], "unknown defense 'nope'"),
                          (["--defenses", "rounding", "--param", "topk.k=2"], "which is not among the compared defenses"),
                          (["--defenses", "rounding", "--param", "rounding.decimals=x"], "expected int, got 'x'"),
                          (["--defenses", "rounding", "--param", "decimals=2"], "name the defense")]:
        r = CliRunner().invoke(main, ["compare", str(run), *SMALL, *args])
        assert r.exit_code != 0 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_defenses_lists_the_registry():
    r = CliRunner().invoke(main, ["defenses"])
    assert r.exit_code == 0
    for name in defense_names():
        assert name in r.output
    assert "budget=1.0" in r.output and "decimals=2" in r.output


def test_defend_runs_any_output_defense(run, tmp_path):
    probs = random_probs(50, 10, torch.Generator().manual_seed(0))
    np.save(tmp_path / "p.npy", probs.numpy())
    out = tmp_path / "r.npy"
    r = CliRunner().invoke(main, ["defend", "-p", str(tmp_path / "p.npy"), "--defense", "rounding", "--param",
                                  "decimals=1", "--out", str(out), "--json-out", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.load(out), torch.round(probs, decimals=1).numpy())
    assert json.loads((tmp_path / "s.json").read_text())["params"] == {"decimals": 1}
    # a defense that learns from the defender's data fits on a run (and caches it there)
    hamp = tmp_path / "h.npy"
    r = CliRunner().invoke(main, ["defend", "-p", str(tmp_path / "p.npy"), "--defense", "hamp-output", "--param",
                                  "bank_size=300", "--run", str(run), "--out", str(hamp)])
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.load(hamp).argmax(1), probs.argmax(1).numpy())
    saved = next((run / "defenses").glob("hamp-output-*/defense.safetensors"))
    again = tmp_path / "again.npy"
    r = CliRunner().invoke(main, ["defend", "-p", str(tmp_path / "p.npy"), "--checkpoint", str(saved), "--out",
                                  str(again)])
    assert r.exit_code == 0 and np.array_equal(np.load(again), np.load(hamp)), r.output
    for args, message in [(["--defense", "memguard"], "memguard must be fitted first"),
                          (["--defense", "topk", "--eps", "1e-3"], "--eps is an AEPPT option"),
                          (["--defense", "topk", "--param", "k"], "expected KEY=VALUE"),
                          (["--defense", "topk", "--param", "q=1"], "topk: unknown hyperparameter 'q'"),
                          (["--defense", "rounding", "--checkpoint", str(saved)], "holds a hamp-output defense"),
                          (["--checkpoint", str(saved), "--param", "bank_size=3"], "drop --run, --mim, --param")]:
        bad = tmp_path / "bad.npy"
        r = CliRunner().invoke(main, ["defend", "-p", str(tmp_path / "p.npy"), *args, "--out", str(bad)])
        assert r.exit_code != 0 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert not bad.exists()


def test_evaluate_takes_any_defense_and_labels_the_report_with_it(run):
    r = CliRunner().invoke(main, ["evaluate", str(run), "--defense", "topk", "--param", "k=1", "--attacks",
                                  "gap,confidence,mim0", *SMALL])
    assert r.exit_code == 0, r.output
    assert "topk, aware" in r.output and "flip" not in r.output
    ev = json.loads((run / "evaluation.json").read_text())
    assert ev["defense"]["name"] == "topk" and ev["defense"]["params"] == {"k": 1, "renormalize": True}
    assert "step_size_sweep" not in ev and not (run / "step_size.png").exists()
    assert "| mim0 | topk, defense-aware |" in (run / "evaluation.md").read_text()
    # top-1 with renormalisation is label-only: the confidence attack falls to the gap attack
    assert ev["attacks"]["confidence"]["aware"]["accuracy"] <= ev["gap_floor"] + 0.05


def test_a_stale_shadow_cache_is_retrained_not_reused(run):
    from mia_fast.evaluation.threat import Options, ThreatModel

    ThreatModel(run, Options(shadows=2)).pool_outputs  # cached, if no earlier test did it
    folder = next((run / "shadows").glob("k2-*"))
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "run_fingerprint": "another target"}))
    np.save(folder / "pool_outputs.npy", np.zeros((2, 3, 10), np.float32))  # outputs of that other target
    logs = []
    threat = ThreatModel(run, Options(shadows=2), log=logs.append)
    outputs = threat.pool_outputs
    assert any("2 shadow models on" in m for m in logs)  # trained again, not read
    assert outputs.shape == (2, len(threat.pool), 10) and torch.allclose(outputs.sum(-1), torch.ones(1))
    assert json.loads((folder / "meta.json").read_text())["run_fingerprint"] == threat.run.fingerprint()


def test_compare_trains_each_training_defense_once_and_combines_it_with_output_defenses(run):
    args = ["compare", str(run), *SMALL, "--attacks", "gap,confidence,mim0,rmia,boundary", "--no-adaptive",
            "--defenses", "dropout,dropout+rounding,hamp,rounding", "--param", "dropout.p=0.3",
            "--param", "hamp-output.bank_size=200"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    cmp = json.loads((run / "compare.json").read_text())
    assert list(cmp["defenses"]) == ["dropout", "dropout+rounding", "hamp", "rounding"]
    folders = sorted(p.name.split("-")[0] for p in (run / "targets").iterdir())
    assert folders == ["dropout", "hamp"]  # one target per training defense, shared by its combinations
    dropout, combo, hamp = (cmp["defenses"][k] for k in ("dropout", "dropout+rounding", "hamp"))
    assert dropout["defense"]["training"]["params"] == {"p": 0.3} and dropout["defense"]["training"]["train_seconds"] > 0
    assert set(dropout["attacks"]["mim0"]) == {"aware"} and set(combo["attacks"]["mim0"]) == {"none", "naive", "aware"}
    assert combo["summary"]["gap_floor"] == dropout["summary"]["gap_floor"]
    assert combo["attacks"]["mim0"]["none"] == dropout["attacks"]["mim0"]["aware"]
    assert hamp["defense"]["training"]["name"] == "hamp-training" and hamp["defense"]["perturbation"]["mean_l1"] > 0
    variant = next((run / "targets").glob("dropout-*"))
    shadows = json.loads((variant / "config.json").read_text())
    assert shadows["training_defense"] == "dropout" and (variant / "shadows").is_dir()
    assert "Training defenses" in (run / "compare.md").read_text()
    assert "dropout+rounding" in r.output and "gap floor" in r.output
    stamp = (variant / "target.json").stat().st_mtime_ns
    r = CliRunner().invoke(main, ["compare", str(run), *SMALL, "--attacks", "gap", "--no-adaptive",
                                  "--defenses", "dropout", "--param", "dropout.p=0.3"])
    assert r.exit_code == 0, r.output
    assert (variant / "target.json").stat().st_mtime_ns == stamp  # trained once, reused


def test_compare_judges_input_perturbation_with_shadows_that_protect_their_data_too(run, monkeypatch):
    """The aware attacker knows the generator and eps: each of its shadow models trains on an upload made
    the same way, so the protection runs once for the target and once per shadow."""
    from mia_fast.defenses.training.input_perturbation import InputPerturbation

    protected, real = [], InputPerturbation.protect

    def counted(self, model, x, *args, **kwargs):
        protected.append(len(x))
        return real(self, model, x, *args, **kwargs)

    monkeypatch.setattr(InputPerturbation, "protect", counted)
    params = ["eps=8", "rounds=1", "simulators=2", "simulator_epochs=5", "candidates=4"]
    r = CliRunner().invoke(main, ["compare", str(run), *SMALL, "--attacks", "gap,confidence", "--no-adaptive",
                                  "--defenses", "input-perturbation",
                                  *[a for p in params for a in ("--param", f"input-perturbation.{p}")]])
    assert r.exit_code == 0, r.output
    assert len(protected) == 3, protected  # the target, then its two aware shadows
    point = json.loads((run / "compare.json").read_text())["defenses"]["input-perturbation"]
    training = point["defense"]["training"]
    assert training["name"] == "input-perturbation" and training["params"]["eps"] == 8
    assert set(point["attacks"]["confidence"]) == {"aware"}
    variant = next((run / "targets").glob("input-perturbation-*"))
    assert json.loads((variant / "config.json").read_text())["training_defense"] == "input-perturbation"
    (cache,) = (variant / "shadows").iterdir()
    assert len(list(cache.glob("model-*.safetensors"))) == 2


def test_a_stopped_comparison_keeps_its_finished_points_and_evaluates_only_the_rest(run, monkeypatch):
    from mia_fast.evaluation import compare
    from mia_fast.evaluation.threat import Options

    kwargs = dict(attacks=["gap", "confidence"], adaptive=False, options=Options(epochs=3, shadows=2), write=False)
    evaluated, real = [], compare.evaluate_point

    def stopped_at_topk(targets, point, names, **kw):
        evaluated.append(point.label)
        if point.label == "topk[k=2]":
            raise KeyboardInterrupt
        return real(targets, point, names, **kw)

    monkeypatch.setattr(compare, "evaluate_point", stopped_at_topk)
    before = set((run / "compare").glob("*.json"))  # other tests' comparisons of this run
    with pytest.raises(KeyboardInterrupt):
        compare.compare_run(run, ["rounding", "topk[k=2]"], **kwargs)
    kept = sorted(p.name.split("-")[0] for p in set((run / "compare").glob("*.json")) - before)
    assert evaluated == ["rounding", "topk[k=2]"] and kept in (["none", "rounding"], ["rounding"])
    monkeypatch.setattr(compare, "evaluate_point", lambda *a, **kw: (evaluated.append(a[1].label), real(*a, **kw))[1])
    first = compare.compare_run(run, ["rounding", "topk[k=2]"], **kwargs)
    assert evaluated[2:] == ["topk[k=2]"]  # rounding read back, not evaluated again
    again = compare.compare_run(run, ["rounding", "topk[k=2]"], **kwargs)
    assert evaluated[2:] == ["topk[k=2]"] and again["defenses"] == first["defenses"]
    assert again["undefended"] == first["undefended"]
    compare.compare_run(run, ["rounding"], **{**kwargs, "attacks": ["gap"]})  # other attacks: another result
    compare.compare_run(run, ["rounding"], **kwargs, fresh=True)
    assert evaluated[3:] == ["rounding", "rounding"]
    assert first["defenses"]["topk[k=2]"]["defense"]["params"] == {"k": 2, "renormalize": True}


@pytest.mark.parametrize("spec, message", [("dropout+l2", "at most one training defense"),
                                           ("aeppt+memguard", "at most one output defense"),
                                           ("dropuot", "unknown defense 'dropuot'")])
def test_compare_refuses_bad_combinations_in_one_line(run, spec, message):
    r = CliRunner().invoke(main, ["compare", str(run), "--defenses", spec])
    assert r.exit_code == 1 and message in r.output and r.output.count("\n") == 1


def test_frontier_rows_take_the_worst_attack_of_each_family():
    from mia_fast.evaluation.compare import frontier_rows

    def m(acc, beyond, tpr=0.01):
        return {"accuracy": acc, "auc_correct_leak": beyond, "tpr_at_0.1%_fpr": tpr}

    summary = {"best_aware_attack": "robustness", "best_aware_accuracy": 0.8, "best_score_accuracy": 0.7,
               "gap_floor": 0.7, "best_aware_tpr_at_0.1%_fpr": 0.02}
    attacks = {"confidence": m(0.7, 0.52), "entropy": m(0.69, 0.56), "mim0": m(0.71, 0.53), "shokri": m(0.7, 0.51),
               "lira": m(0.66, 0.61), "rmia": m(0.7, 0.63), "gap": m(0.7, float("nan"), 0.0),
               "robustness": m(0.8, 0.6), "label_lira": m(0.72, 0.64)}
    defended = {"defense": {"perturbation": {"mean_l1": 0.28, "label_flips": 0}, "key": "rank-template-0123456789"},
                "attacks": {n: {"naive": v, "aware": v} for n, v in attacks.items()},
                "adaptive": {"averaging": m(0.74, 0.58), "rounding": m(0.7, 0.5)}, "summary": summary}
    label_only = json.loads(json.dumps(defended))
    label_only["attacks"]["rmia"] = {"naive": m(0.7, 0.66), "aware": m(0.7, 0.66)}
    label_only["defense"]["key"] = "label-only-0123456789"
    aeppt = json.loads(json.dumps(defended))
    aeppt["defense"]["key"] = "aeppt-0123456789"
    cmp = {"undefended": {"attacks": {n: {"aware": v} for n, v in attacks.items()}, "summary": summary},
           "defenses": {"rank-template": defended, "aeppt": aeppt}}
    none, row, _ = frontier_rows(cmp)
    assert none["defense"] == "none" and row["defense"] == "rank-template" and row["mean_l1"] == 0.28
    assert row["beyond_label_metric"] == 0.56 and row["beyond_label_reference"] == 0.63
    assert row["beyond_label_learned"] == 0.58  # the adaptive MIM0s count as learned attacks
    assert row["beyond_label_label"] == 0.64  # label-only attacks: their own column
    assert abs(row["averaging_gain"] - 0.03) < 1e-12 and row["gap_tpr"] == 0.0 and row["bounded"] == []
    # with label-only in the comparison, a label-keeping defense leaks at least what it leaks (argmax)
    cmp["defenses"]["label-only"] = label_only
    _, template, aeppt, _ = frontier_rows(cmp)
    assert template["beyond_label_reference"] == 0.66 and template["measured"]["beyond_label_reference"] == 0.63
    assert template["bounded"] == ["beyond_label_reference"]
    assert aeppt["beyond_label_reference"] == 0.63 and aeppt["bounded"] == []  # AEPPT can change labels
