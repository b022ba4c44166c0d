"""`mia-fast reproduce`: named experiments of the paper, beside the paper's numbers where they exist."""
import json

import numpy as np

import pytest
from click.testing import CliRunner

from mia_fast.cli import main
from mia_fast.evaluation.battery import Options
from mia_fast.evaluation.reproduce import PAPER, _table2

TINY = ["--target-epochs", "20", "--mim-epochs", "3", "--iters", "10", "--epochs", "3"]


@pytest.mark.parametrize("experiment", ["table2", "step-size", "adaptive", "adversary", "mims", "classes",
                                        "comparison"])
def test_reproduce_runs_an_experiment_and_saves_its_numbers(tmp_path, experiment):
    run = tmp_path / experiment
    r = CliRunner().invoke(main, ["reproduce", experiment, "--run-dir", str(run), *TINY, "--queries", "2"])
    assert r.exit_code == 0, r.output
    saved = json.loads((run / f"reproduce-{experiment}.json").read_text())
    assert saved["experiment"] == experiment and saved["config"]["dataset"] == "digits"
    assert f"{experiment} on digits" in r.output and "paper" not in r.output  # digits is not the paper's
    if experiment == "step-size":
        assert saved["step_size_sweep"][0]["eps"] == 0
    if experiment == "adaptive":
        assert set(saved["adaptive"]) == {"flip", "rounding", "adversarial_training", "averaging"}
    if experiment == "mims":
        assert set(saved["attacks"]) == {"mim0", "mim1", "mim2", "mim3"} and (run / "mims_cdf.png").is_file()
    if experiment == "classes":  # digits has 10: merged into 2, and as it is
        assert set(saved) >= {"2", "10"}
        assert json.loads((run / "classes-2" / "config.json").read_text())["classes"] == 2
        assert set(np.load(run / "classes-2" / "outputs" / "members_labels.npy").tolist()) == {0, 1}
    if experiment == "comparison":  # Fig. 9's five defenses and Bai et al.'s Table 3 rows, one comparison
        names = [r["defense"] for r in saved["rows"]]
        assert names == ["none", "rounding r=0.001", "rounding r=0.01", "dropout", "min-max (advreg)", "aeppt",
                         "dp-sgd epsilon=50"]
        dp = saved["rows"][-1]
        assert 40 < dp["epsilon"] <= 50 + 1e-6 and (run / "compare.png").is_file()
        assert "Fig. 9 shape" in r.output and "Table 3" in r.output
    if experiment == "adversary":
        assert set(saved) >= {"0.25", "0.5", "0.75"} and (run / "adversary_cdf.png").read_bytes()[:4] == b"\x89PNG"
        assert len(json.loads((run / "adversary-0.25" / "splits.json").read_text())["adversary_members"]) == 25


def test_reproduce_prints_the_papers_numbers_for_its_datasets():
    results = {"dataset": "purchase100",
               "target": {"train_accuracy": {"without": 0.99, "with": 0.99},
                          "test_accuracy": {"without": 0.8, "with": 0.8}},
               "mim0": {s: {"accuracy": 0.7, "precision": 0.6, "recall": 0.9} for s in ("without", "with")}}
    lines, _ = _table2(None, results, Options(), print)
    assert "paper" in lines[0] and f"{PAPER['table2']['purchase100']['test_with']:.1f}%" in "\n".join(lines)


def test_reproduce_rejects_unknown_experiments_and_taken_directories(tmp_path):
    r = CliRunner().invoke(main, ["reproduce", "table9"])
    assert r.exit_code != 0 and "table9" in r.output
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep")
    r = CliRunner().invoke(main, ["reproduce", "table2", "--run-dir", str(tmp_path / "taken")])
    assert r.exit_code != 0 and "exists and is not empty" in r.output
    assert (tmp_path / "taken" / "x").read_text() == "keep"
