"""Attacks and metrics: they find membership where there is some, and none where there is none."""
import numpy as np
import pytest
import torch

from mia_fast import aeppt, train_substitute
from mia_fast.attacks import MetricAttack, NNAttack, metric_scores
from mia_fast.metrics import attack_metrics, per_class_metrics, tpr_at_fpr
from mia_fast.testing import membership_records


def test_metric_scores_match_their_definitions():
    p = torch.tensor([[0.7, 0.2, 0.1]])
    y = torch.tensor([1])
    assert metric_scores("confidence", p, y)[0] == pytest.approx(0.2)
    assert metric_scores("correctness", p, y)[0] == 0
    assert metric_scores("entropy", p, y)[0] == pytest.approx(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1))
    mentr = -(1 - 0.2) * np.log(0.2) - 0.7 * np.log(0.3) - 0.1 * np.log(0.9)
    assert metric_scores("modified_entropy", p, y)[0] == pytest.approx(-mentr)
    with pytest.raises(ValueError, match="metric must be"):
        MetricAttack("loss")


@pytest.mark.parametrize("metric", ["confidence", "entropy", "modified_entropy"])
def test_metric_attacks_find_a_confidence_gap_and_not_its_absence(metric):
    fit, test = membership_records(800, 0), membership_records(800, 1)
    leak = MetricAttack(metric).fit(*fit).evaluate(*test)
    assert leak["accuracy"] > 0.7 and leak["auc"] > 0.8  # measured: 0.77/0.84, 0.86/0.93, 0.73/0.82
    same_fit, same_test = membership_records(800, 2, member_sharpness=2.0, nonmember_sharpness=2.0), membership_records(800, 3, member_sharpness=2.0, nonmember_sharpness=2.0)
    none = MetricAttack(metric).fit(*same_fit).evaluate(*same_test)
    assert 0.4 < none["accuracy"] < 0.6 and 0.4 < none["auc"] < 0.6


@pytest.mark.parametrize("kind", ["mim0", "mim1", "mim2"])
def test_nn_attacks_learn_membership(kind):
    attack = NNAttack(kind, epochs=15).fit(*membership_records(600, 4))
    res = attack.evaluate(*membership_records(600, 5))
    assert res["accuracy"] > 0.75, res
    assert "kind='" + kind in repr(attack)
    with pytest.raises(RuntimeError, match="not fitted"):
        NNAttack(kind).score(*membership_records(2, 6)[:2])


def test_threshold_free_metrics():
    rng = np.random.default_rng(0)
    m, o = rng.normal(1, 1, 5000), rng.normal(0, 1, 5000)
    res = attack_metrics(m, o, threshold=0.5)
    assert res["auc"] == pytest.approx(0.76, abs=0.02) and res["advantage"] == pytest.approx(0.38, abs=0.03)
    flipped = attack_metrics(-m, -o, threshold=-0.5)
    assert flipped["auc"] < 0.5 and flipped["auc_leak"] == pytest.approx(res["auc"])
    assert 0 < tpr_at_fpr(m, o, 0.01) < tpr_at_fpr(m, o, 0.1) < 1
    per = per_class_metrics(m, np.arange(5000) % 3, o, np.arange(5000) % 3)
    assert sorted(per) == [0, 1, 2] and all(0.6 < v["accuracy"] < 0.75 for v in per.values())


def test_a_recalibrated_attacker_sees_through_a_naive_evaluation():
    """Defense-aware calibration (the paper's threat model gives the attacker the algorithm): a metric
    attack fitted on defended outputs of its own records, against one fitted on undefended outputs."""
    defender, _ = train_substitute(*membership_records(1500, 10), epochs=15, seed=1, progress=False)
    gen = torch.Generator().manual_seed(0)

    def defended(records):
        m, ml, o, ol = records
        return (aeppt(m, defender, 3e-3, generator=gen).adversarial, ml,
                aeppt(o, defender, 3e-3, generator=gen).adversarial, ol)

    known, scored = membership_records(800, 11), defended(membership_records(800, 12))
    naive = MetricAttack("confidence").fit(*known).evaluate(*scored)
    aware = MetricAttack("confidence").fit(*defended(known)).evaluate(*scored)
    assert naive["accuracy"] < aware["accuracy"]
