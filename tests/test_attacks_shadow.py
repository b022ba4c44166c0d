"""Shadow-model, LiRA, label-only and adaptive attacks: each finds membership where there is some."""
import numpy as np
import pytest
import torch

from mia_fast.attacks import (Flipped, LabelLiRA, LiRAOffline, MetricAttack, NNAttack, PerClassMLP, RobustnessAttack, Rounded,
                              noisy_copies, query_labels, scaled_confidence, shadow_records, train_shadow_models)
from mia_fast.attacks.label_only import noise_kind_for
from mia_fast.metrics import attack_metrics
from mia_fast.models import TabularMLP
from mia_fast.ops.reference import aeppt_loop
from mia_fast.testing import membership_records


def _probs_with_confidence(phi: torch.Tensor, classes: int = 4) -> torch.Tensor:
    """Vectors whose logit-scaled confidence in class 0 is ``phi`` (the rest spread evenly)."""
    p0 = torch.sigmoid(phi.double())
    return torch.cat([p0[..., None], ((1 - p0) / (classes - 1))[..., None].expand(*p0.shape, classes - 1)], -1)


def test_scaled_confidence_inverts_the_logit_and_survives_saturation():
    phi = torch.tensor([-3.0, 0.0, 2.5])
    assert torch.allclose(scaled_confidence(_probs_with_confidence(phi), torch.zeros(3, dtype=torch.long)),
                          phi.double(), atol=1e-9)
    saturated = scaled_confidence(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    assert torch.isfinite(saturated).all() and saturated[0] > 60 and saturated[1] < -60


def test_lira_scores_by_each_records_own_out_distribution():
    g = torch.Generator().manual_seed(0)
    n, k = 400, 8
    record_mean = torch.randn(n, generator=g) * 3  # records differ a lot in how confident OUT models are
    ref_phi = record_mean + torch.randn(k, n, generator=g) * 0.3
    member = torch.rand(n, generator=g) < 0.5
    target_phi = record_mean + torch.randn(n, generator=g) * 0.3 + 1.0 * member
    labels = torch.zeros(n, dtype=torch.long)
    lira = LiRAOffline().score(_probs_with_confidence(target_phi), labels, reference=_probs_with_confidence(ref_phi))
    m = attack_metrics(lira[member.numpy()], lira[~member.numpy()])
    raw = attack_metrics(target_phi[member].numpy(), target_phi[~member].numpy())  # the same score without references
    assert m["auc"] > 0.9 and raw["auc"] < 0.7  # measured 0.99 vs 0.58


def test_lira_ignores_shadows_that_trained_on_the_record():
    labels = torch.zeros(1, dtype=torch.long)
    ref = _probs_with_confidence(torch.tensor([[0.0], [0.2], [9.0]]))  # shadow 2 trained on the record
    target = _probs_with_confidence(torch.tensor([1.0]))
    lira = LiRAOffline(global_variance=False)
    masked = lira.score(target, labels, reference=ref, reference_mask=torch.tensor([[True], [True], [False]]))
    unmasked = lira.score(target, labels, reference=ref)
    assert masked[0] > 0.99 and unmasked[0] < 0.5
    with pytest.raises(ValueError, match="at least one shadow model"):
        lira.score(target, labels, reference=ref, reference_mask=torch.zeros(3, 1, dtype=torch.bool))
    # fitting skips known records that trained every shadow (they have no OUT distribution)
    two = lambda a, b: torch.cat([a, b], 1)  # noqa: E731
    ref2 = two(ref, _probs_with_confidence(torch.tensor([[0.0], [0.1], [0.2]])))
    mask2 = torch.tensor([[True, False], [True, False], [False, False]])
    probs2 = torch.cat([target, _probs_with_confidence(torch.tensor([5.0]))])
    low = _probs_with_confidence(torch.tensor([-1.0]))
    lira.fit(probs2, torch.zeros(2, dtype=torch.long), low, labels, member_reference=ref2,
             nonmember_reference=ref[:, :1], member_reference_mask=mask2)
    assert 0 < lira.threshold < 1


def _two_class(margin: torch.Tensor) -> torch.Tensor:
    """Two-class vectors whose margin log p_0 - log p_1 is ``margin`` (true class 0)."""
    p0 = torch.sigmoid(margin.double())
    return torch.stack([p0, 1 - p0], -1)


def test_label_lira_finds_hard_records_labelled_right_from_labels_alone():
    g = torch.Generator().manual_seed(0)
    n, k = 4000, 6
    hardness = torch.randn(n, generator=g) * 1.5  # how far a model that did not train on x gets it right
    reference = _two_class(hardness + torch.randn(k, n, generator=g))
    member = torch.rand(n, generator=g) < 0.5
    # members are nearly always labelled right; non-members as often as OUT models label them right
    right = torch.where(member, torch.rand(n, generator=g) < 0.98, torch.rand(n, generator=g) < torch.special.ndtr(hardness))
    served = _two_class(torch.where(right, 1.0, -1.0))
    labels = torch.zeros(n, dtype=torch.long)
    half = torch.arange(n) < n // 2
    attack = LabelLiRA().fit(served[half & member], labels[half & member], served[half & ~member],
                             labels[half & ~member], member_reference=reference[:, half & member],
                             nonmember_reference=reference[:, half & ~member])
    assert 0.97 < attack.p_in < 0.99
    test = ~half
    scores = attack.score(served[test], labels[test], reference=reference[:, test])
    m = attack_metrics(scores[member[test].numpy()], scores[~member[test].numpy()],
                       member_correct=right[test & member].numpy(), nonmember_correct=right[test & ~member].numpy())
    gap = attack_metrics(right[test & member].double().numpy(), right[test & ~member].double().numpy())
    assert m["auc_correct"] > 0.65 and m["auc"] > gap["auc"] + 0.05, (m["auc_correct"], m["auc"], gap["auc"])
    # label-only: other confidence values with the same labels give the same scores
    rescaled = _two_class(torch.where(right, 4.0, -0.3))[test]
    assert np.array_equal(attack.score(rescaled, labels[test], reference=reference[:, test]), scores)


def test_label_lira_skips_shadows_that_trained_on_the_record():
    labels = torch.zeros(1, dtype=torch.long)
    reference = _two_class(torch.tensor([[-2.0], [-2.5], [6.0]]))  # only shadow 2 trained on it and got it right
    attack = LabelLiRA(global_variance=False)
    attack.p_in = 0.9
    right = _two_class(torch.tensor([1.0]))
    masked = attack.score(right, labels, reference=reference, reference_mask=torch.tensor([[True], [True], [False]]))
    unmasked = attack.score(right, labels, reference=reference)
    assert masked[0] > 2 and masked[0] > unmasked[0]
    with pytest.raises(ValueError, match="at least one shadow model"):
        attack.score(right, labels, reference=reference, reference_mask=torch.zeros(3, 1, dtype=torch.bool))



@pytest.mark.parametrize("attack", [LiRAOffline, LabelLiRA])
def test_fitted_reference_attacks_score_a_record_whatever_is_scored_with_it(attack):
    """The pooled variance comes from fitting: scoring members and non-members in separate calls (as the
    battery does) must not give each group its own variance, which alone would separate them."""
    g = torch.Generator().manual_seed(1)
    n, k = 200, 6
    hard = torch.rand(n, generator=g) < 0.5  # hard records vary more across shadows
    reference = _two_class(torch.randn(k, n, generator=g) * torch.where(hard, 4.0, 0.5) + 2.0)
    served = _two_class(torch.full((n,), 3.0))  # the same answer for every record: nothing to find
    labels = torch.zeros(n, dtype=torch.long)
    fitted = attack().fit(served[:100], labels[:100], served[100:], labels[100:], member_reference=reference[:, :100],
                          nonmember_reference=reference[:, 100:])
    together = fitted.score(served, labels, reference=reference)
    assert np.allclose(fitted.score(served[hard], labels[hard], reference=reference[:, hard]), together[hard.numpy()])
    unfitted = attack()
    if attack is LabelLiRA:
        unfitted.p_in = fitted.p_in
    apart = unfitted.score(served[hard], labels[hard], reference=reference[:, hard])
    assert not np.allclose(apart, together[hard.numpy()])  # pooled over the call: only the hard records



def test_fitted_pooled_variance_is_unbiased_with_few_out_shadows():
    """Each record's mean costs one degree of freedom: with 6 shadows, about 3 of them OUT per known
    record, dividing by the OUT count would put sigma near 0.85 for unit-variance shadows."""
    g = torch.Generator().manual_seed(2)
    k, n = 6, 2000
    phi = torch.randn(n, generator=g)[None] * 3 + torch.randn(k, n, generator=g)
    reference = _two_class(phi)
    mask = torch.rand(k, n, generator=g) < 0.5
    mask[0] = ~mask[1:].any(0) | mask[0]  # every record keeps at least one OUT shadow
    labels = torch.zeros(n, dtype=torch.long)
    served = _two_class(torch.zeros(n))
    for attack in (LiRAOffline(), LabelLiRA()):
        attack.fit(served[:1000], labels[:1000], served[1000:], labels[1000:], member_reference=reference[:, :1000],
                   nonmember_reference=reference[:, 1000:], member_reference_mask=mask[:, :1000],
                   nonmember_reference_mask=mask[:, 1000:])
        assert 0.95 < attack.sigma < 1.05, (type(attack).__name__, attack.sigma)


def test_per_class_networks_are_independent():
    net = PerClassMLP(3)
    probs = torch.softmax(torch.randn(5, 3), 1)
    net.logit(probs, torch.zeros(5, dtype=torch.long)).sum().backward()
    assert net.w1.grad[1:].abs().sum() == 0 and net.w2.grad[1:].abs().sum() == 0 and net.w1.grad[0].abs().sum() > 0


def test_shokri_attack_learns_membership():
    fit, test = membership_records(600, 0), membership_records(600, 1)
    m = NNAttack("shokri", epochs=30).fit(*fit).evaluate(*test)
    assert m["accuracy"] > 0.7, m


def test_shadow_models_record_what_trained_them():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 5, generator=g), torch.randint(0, 3, (60,), generator=g)
    make = lambda: TabularMLP(5, 3, hidden=(8,))  # noqa: E731
    a = train_shadow_models(make, x, y, num_shadows=3, train_size=20, epochs=2, seed=4, progress=False)
    b = train_shadow_models(make, x, y, num_shadows=3, train_size=20, epochs=2, seed=4, progress=False)
    assert a.in_mask.sum(1).tolist() == [20, 20, 20] and torch.equal(a.in_mask, b.in_mask)
    probs = a.predict(x)
    assert probs.shape == (3, 60, 3) and torch.equal(probs, b.predict(x))
    m, ml, n, nl = shadow_records(probs, y, a.in_mask)
    assert len(m) == 60 and len(n) == 120 and torch.equal(m[:20], probs[0][a.in_mask[0]])
    with pytest.raises(ValueError, match="train_size"):
        train_shadow_models(make, x, y, num_shadows=1, train_size=60, progress=False)


def test_noisy_copies_and_the_robustness_attack():
    g = torch.Generator().manual_seed(0)
    binary = (torch.rand(50, 200, generator=g) < 0.3).float()
    flipped = noisy_copies(binary, kind="bitflip", strength=0.1, copies=4, generator=g)
    assert set(flipped.unique().tolist()) == {0.0, 1.0}
    assert 0.08 < float((flipped != binary).float().mean()) < 0.12
    assert noise_kind_for(binary) == "bitflip" and noise_kind_for(binary + 0.5) == "gaussian"
    gauss = noisy_copies(binary, kind="gaussian", strength=0.5, copies=4, generator=g)
    assert abs(float((gauss - binary).std()) - 0.5) < 0.02
    with pytest.raises(ValueError, match="kind must be"):
        noisy_copies(binary, kind="blur", strength=0.1, copies=1, generator=g)

    predict = lambda x: torch.nn.functional.one_hot((x.sum(1) > 60).long(), 2).float()  # noqa: E731
    answered = query_labels(predict, flipped)
    assert answered.shape == (4, 50) and torch.equal(answered[1], predict(flipped[1]).argmax(1))

    labels = torch.zeros(50, dtype=torch.long)
    keep_in = (torch.rand(20, 25, generator=g) < 0.9).long()   # members keep their label 90% of the time
    keep_out = (torch.rand(20, 25, generator=g) < 0.6).long()  # non-members 60%
    noisy_in, noisy_out = 1 - keep_in, 1 - keep_out
    attack = RobustnessAttack().fit(None, labels[:25], None, labels[25:], member_noisy_labels=noisy_in,
                                    nonmember_noisy_labels=noisy_out)
    assert 0.6 < attack.threshold <= 0.9
    s_in = attack.score(None, labels[:25], noisy_labels=noisy_in)
    assert attack_metrics(s_in, attack.score(None, labels[25:], noisy_labels=noisy_out),
                          threshold=attack.threshold)["accuracy"] > 0.9


def test_flip_inverts_every_decision_and_rounding_washes_out_small_perturbations():
    fit, test = membership_records(400, 0), membership_records(400, 1)
    inner = MetricAttack("confidence").fit(*fit)
    plain, flipped = inner.evaluate(*test), Flipped(inner).evaluate(*test)
    assert flipped["accuracy"] == pytest.approx(1 - plain["accuracy"], abs=2 / 800)
    assert flipped["auc"] == pytest.approx(1 - plain["auc"])
    p, y = test[0], test[1]
    nudged = (p + (torch.rand(p.shape, generator=torch.Generator().manual_seed(2)) - 0.5) * 1e-6).clamp(0, 1)
    rounded = Rounded(MetricAttack("confidence"), decimals=3).fit(*fit)
    agree = rounded.score(p, y) == rounded.score(nudged, y)
    assert agree.mean() > 0.99 and not np.array_equal(inner.score(p, y), inner.score(nudged, y))


def test_aeppt_loop_reports_every_iteration():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(6, 4, generator=g) * 3, 1)
    w = torch.randn(4, generator=g)
    seen = []
    adv, _, _ = aeppt_loop(probs, lambda p, labels: p @ w, torch.full((5, 6), 1e-2),
                           on_step=lambda t, state: seen.append((t, state.clone())))
    assert [t for t, _ in seen] == [0, 1, 2, 3, 4, 5]
    assert torch.equal(seen[0][1], probs) and torch.equal(seen[-1][1], adv)


def test_boundary_distance_finds_where_the_label_changes():
    from mia_fast.attacks import boundary_distance

    x = torch.zeros(3, 40)
    labels = torch.tensor([0, 0, 1])  # the third record is misclassified: distance 0
    flips = lambda z: (z.sum(1) >= 7).long()  # noqa: E731  the label changes at the 7th flipped bit
    d = boundary_distance(flips, x, labels, kind="bitflip", directions=4, generator=torch.Generator().manual_seed(0))
    assert d.tolist() == [7.0, 7.0, 0.0]
    radius = lambda z: (z.norm(dim=1) > 0.3).long()  # noqa: E731  a ball of radius 0.3 around the records
    d = boundary_distance(radius, x, labels, kind="gaussian", directions=4, radius=1.0,
                          generator=torch.Generator().manual_seed(0), steps=20)
    assert torch.allclose(d[:2], torch.tensor([0.3, 0.3]), atol=1e-4) and d[2] == 0


def test_rmia_ranks_records_against_the_population():
    from mia_fast.attacks import RMIAOffline

    g = torch.Generator().manual_seed(0)
    ref = torch.softmax(torch.randn(6, 200, 4, generator=g), -1)  # reference models, OUT for every record
    labels = torch.randint(0, 4, (200,), generator=g)
    base = ref.mean(0)
    members = base.clone()
    members[torch.arange(200), labels] += 0.3  # members: the target is more confident than the references
    members = members / members.sum(1, keepdim=True)
    attack = RMIAOffline().fit(members[:100], labels[:100], base[:100], labels[:100], member_reference=ref[:, :100],
                               nonmember_reference=ref[:, :100])
    s_in = attack.score(members[100:], labels[100:], reference=ref[:, 100:])
    s_out = attack.score(base[100:], labels[100:], reference=ref[:, 100:])
    assert s_in.mean() > 0.9 and s_out.mean() < 0.7 and ((s_in >= 0) & (s_in <= 1)).all()
    assert (attack.infer(members[100:], labels[100:], reference=ref[:, 100:]).mean()
            > attack.infer(base[100:], labels[100:], reference=ref[:, 100:]).mean() + 0.5)
