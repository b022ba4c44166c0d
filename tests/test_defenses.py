"""Every registered output defense: against its definition, and through one parametrized test over the
registry (fit, defend on CPU, shapes, no NaN, save/load, bad hyperparameters)."""
import pickle

import pytest
import torch
from torch import nn

from mia_fast import aeppt, train_substitute
from mia_fast.checkpoint import load_payload
from mia_fast.defenses import (AEPPT, DEFENSES, HAMPOutput, MemGuard, create_defense, defense_names, load_defense,
                               parse_param)
from mia_fast.defenses.output.hamp_output import random_inputs
from mia_fast.defenses.output.memguard import _loss_gradient, memguard_noise, memguard_noise_graph, phase_one_loss
from mia_fast.errors import CheckpointError, InputError
from mia_fast.testing import devices, membership_records, random_probs

#: Small-effort hyperparameters so every defense fits in a second or two.
QUICK = {"aeppt": {"eps": 1e-3, "iters": 20, "mim_epochs": 3},
         "memguard": {"classifier_epochs": 15, "iters": 60, "budget": 0.05},  # small: phase II's coin matters
         "hamp-output": {"bank_size": 200}}
#: One invalid hyperparameter per defense, and what the message says.
BAD = {"aeppt": ({"eps": -1.0}, "aeppt: eps must be >= 0"), "memguard": ({"budget": 0.0}, "memguard: budget must be > 0"),
       "hamp-output": ({"bank_size": 0}, "hamp-output: bank_size must be > 0"),
       "rounding": ({"decimals": -1}, "rounding: decimals must be an integer >= 0"),
       "topk": ({"k": 0}, "topk: k must be an integer >= 1"), "label-only": ({"k": 1}, "unknown hyperparameter 'k'"),
       "rank-template": ({"k": 1}, "rank-template: unknown hyperparameter 'k'")}


@pytest.fixture(scope="module")
def defender_data():
    """Synthetic members (confident) and non-members, a small target and some of its inputs."""
    torch.manual_seed(0)
    target = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 10))
    return membership_records(400, 0, classes=10), target, torch.rand(300, 8)


_FITTED = {}


def _fitted(name, defender_data):
    """Defense ``name`` fitted on the defender's data (once per module: fitting is the slow part)."""
    if name not in _FITTED:
        (m, ml, n, nl), target, inputs = defender_data
        _FITTED[name] = create_defense(name, **QUICK.get(name, {})).fit(m, ml, n, nl, target=target, inputs=inputs,
                                                                        seed=0)
    return _FITTED[name]


def test_every_defense_is_registered_with_a_description():
    assert set(defense_names("output")) == {"aeppt", "memguard", "hamp-output", "rounding", "topk", "label-only",
                                            "rank-template"}
    for cls in DEFENSES.values():
        assert cls.description and cls.__doc__


@pytest.mark.parametrize("name", defense_names("output"))
def test_registry_entry_fits_defends_saves_and_refuses_bad_hyperparameters(name, defender_data, tmp_path):
    defense = _fitted(name, defender_data)
    probs = random_probs(64, 10, torch.Generator().manual_seed(1))
    res = defense.defend(probs, generator=torch.Generator().manual_seed(2))
    out = res.defended
    assert out.shape == probs.shape and out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    assert bool(((out >= 0) & (out <= 1)).all())
    assert torch.allclose(res.l1, (out - probs).abs().sum(1))
    assert res.summary()["n"] == 64 and res.summary()["label_flips"] == int((out.argmax(1) != probs.argmax(1)).sum())
    assert repr(defense).startswith(type(defense).__name__ + "(")
    # a saved defense is the same defense: same answers for the same generator
    defense.save(tmp_path / "d.safetensors")
    again = load_defense(tmp_path / "d.safetensors")
    assert again.params() == defense.params()
    assert torch.equal(again.defend(probs, generator=torch.Generator().manual_seed(2)).defended, out)
    # deterministic defenses answer the same every time; randomized ones differ across generators
    other = defense.defend(probs, generator=torch.Generator().manual_seed(3)).defended
    assert torch.equal(other, out) != defense.randomized
    params, message = BAD[name]
    with pytest.raises(ValueError, match=message) as err:
        create_defense(name, **params)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="row 0 contains NaN"):
        defense.defend(torch.full((2, 10), float("nan")))


@pytest.mark.parametrize("name", [n for n in defense_names("output") if DEFENSES[n].keeps_label])
def test_label_keeping_defenses_keep_every_label(name, defender_data):
    defense = _fitted(name, defender_data)
    probs = torch.cat([random_probs(300, 10, torch.Generator().manual_seed(s), sharpness=k)
                       for s, k in ((4, 0.5), (5, 3.0), (6, 8.0))])
    out = defense.defend(probs, generator=torch.Generator().manual_seed(0)).defended
    assert torch.equal(out.argmax(1), probs.argmax(1))


def test_unfitted_defenses_and_unknown_names_are_refused(defender_data):
    with pytest.raises(RuntimeError, match="not fitted"):
        create_defense("memguard").defend(random_probs(2, 10, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="unknown defense 'memgaurd'; known: aeppt"):
        create_defense("memgaurd")
    (m, ml, n, nl), _, _ = defender_data
    with pytest.raises(InputError, match="hamp-output: fit needs the target model"):
        create_defense("hamp-output").fit(m, ml, n, nl)
    with pytest.raises(ValueError, match="aeppt: eps is not set"):
        AEPPT.from_substitute(train_substitute(m, ml, n, nl, epochs=1, progress=False)[0]).defend(m[:2])


def test_params_parse_to_the_constructor_types():
    assert parse_param("rounding", "decimals", "3") == 3
    assert parse_param("memguard", "budget", "0.25") == 0.25
    assert parse_param("topk", "renormalize", "false") is False
    assert parse_param("aeppt", "eps", "2e-4") == 2e-4 and parse_param("aeppt", "precision", "fp32") == "fp32"
    for name, key, text, message in [("rounding", "decimals", "two", "rounding.decimals: expected int, got 'two'"),
                                     ("topk", "renormalize", "maybe", "expected true or false"),
                                     ("topk", "kk", "1", "topk: unknown hyperparameter 'kk'")]:
        with pytest.raises(ValueError, match=message):
            parse_param(name, key, text)


def test_rounding_is_exact_and_topk_keeps_k_values():
    probs = random_probs(200, 10, torch.Generator().manual_seed(0))
    assert torch.equal(create_defense("rounding", decimals=3).defend(probs).defended, torch.round(probs, decimals=3))
    out = create_defense("topk", k=3).defend(probs).defended
    assert bool(((out > 0).sum(1) == 3).all()) and torch.allclose(out.sum(1), torch.ones(200))
    top = probs.topk(3, dim=1)
    assert torch.allclose(out.gather(1, top.indices), top.values / top.values.sum(1, keepdim=True))
    raw = create_defense("topk", k=3, renormalize=False).defend(probs).defended
    assert torch.equal(raw.gather(1, top.indices), top.values)
    one_hot = create_defense("label-only").defend(probs).defended
    assert torch.equal(one_hot, nn.functional.one_hot(probs.argmax(1), 10).float())


def test_aeppt_defense_is_the_aeppt_op(defender_data):
    (m, ml, n, nl), _, _ = defender_data
    mim, _ = train_substitute(m, ml, n, nl, epochs=3, seed=0, progress=False)
    probs = random_probs(100, 10, torch.Generator().manual_seed(4))
    res = AEPPT.from_substitute(mim, eps=1e-3, iters=30).defend(probs, generator=torch.Generator().manual_seed(9))
    ref = aeppt(probs, mim, 1e-3, 30, generator=torch.Generator().manual_seed(9))
    assert torch.equal(res.defended, ref.adversarial)
    assert torch.equal(res.extras["decision_flipped"], ref.decision_flipped)


def test_aeppt_refits_learn_from_defended_outputs(defender_data):
    """A refitted substitute has seen the first substitute's defended outputs: on records neither has
    seen, it tells the first substitute's answers apart better than the first one, which AEPPT pushed
    across its own boundary."""
    from mia_fast.metrics import attack_metrics
    (m, ml, n, nl), _, _ = defender_data
    fit, held = slice(0, 300), slice(300, None)
    params = {"eps": 5e-3, "iters": 50, "mim_epochs": 5}
    first = create_defense("aeppt", **params).fit(m[fit], ml[fit], n[fit], nl[fit], seed=0)
    refitted = create_defense("aeppt", refits=1, **params).fit(m[fit], ml[fit], n[fit], nl[fit], seed=0)
    again = create_defense("aeppt", refits=1, **params).fit(m[fit], ml[fit], n[fit], nl[fit], seed=0)
    assert refitted.params()["refits"] == 1
    assert all(torch.equal(a, b) for a, b in zip(refitted.substitute.state_dict().values(),
                                                 again.substitute.state_dict().values()))  # seeded
    defended = [first.defend(p[held], generator=torch.Generator().manual_seed(i)).defended
                for i, p in enumerate((m, n))]

    def accuracy(defense):
        with torch.no_grad():
            s_in, s_out = (torch.sigmoid(defense.substitute.logit(p, y[held])).numpy()
                           for p, y in zip(defended, (ml, nl)))
        return attack_metrics(s_in, s_out, threshold=0.5)["accuracy"]

    assert accuracy(refitted) > accuracy(first) + 0.1, (accuracy(first), accuracy(refitted))


def test_memguard_drives_its_classifier_to_one_half_within_its_budget(defender_data):
    defense = _fitted("memguard", defender_data)
    probs = torch.cat([defender_data[0][0][:150], defender_data[0][2][:150]])
    noisy, found = defense.phase_one(probs)
    assert found.float().mean() > 0.8
    with torch.no_grad():
        before, after = defense.classifier(probs), defense.classifier(noisy)
    # where noise was found the classifier cannot tell any more (it was far from 0.5 before)
    assert (before[found] - 0.5).abs().mean() > 0.2
    assert (after[found] - 0.5).abs().max() < 0.2 and (after[found] - 0.5).abs().mean() < 0.05
    assert torch.allclose(noisy.sum(1), torch.ones(len(noisy)), atol=1e-5)
    with torch.no_grad():  # as a server calls it: the noise search still has its gradients
        assert torch.equal(defense.phase_one(probs)[0], noisy)
    assert torch.equal(noisy[~found], probs[~found])
    # phase II: a budget below the noise's size serves it with probability budget / L1
    l1 = (noisy - probs).abs().sum(1)
    small = MemGuard(**{**defense.params(), "budget": float(l1[found].mean()) / 4})
    small.load_state_dict(defense.state_dict())
    served = torch.stack([small.defend(probs, generator=torch.Generator().manual_seed(s)).l1 for s in range(6)])
    assert served.mean() == pytest.approx(small.budget * float(found.float().mean()), rel=0.25)


def test_memguard_batched_equals_a_per_sample_loop(defender_data):
    defense = _fitted("memguard", defender_data)
    probs = torch.cat([defender_data[0][0][:20], defender_data[0][2][:20]])
    args = dict(iters=defense.iters, step=defense.step, c2=defense.c2, c3_init=defense.c3_init, rounds=defense.rounds)
    batched, found = memguard_noise(probs, defense.classifier, **args)
    answers = [memguard_noise(probs[i:i + 1], defense.classifier, **args) for i in range(len(probs))]
    assert torch.equal(torch.cat([f for _, f in answers]), found)
    # equal up to float rounding (batched and one-row products sum in different orders, so a sample may
    # cross 0.5 one step earlier or later)
    diff = (torch.cat([a for a, _ in answers]) - batched).abs()
    assert float((diff <= 1e-5).float().mean()) >= 0.98 and float(diff.max()) <= 0.05


def test_memguard_graph_form_equals_its_autograd_definition(defender_data):
    """The search `torch.export` traces (closed-form gradient, every row under masks) is the autograd one."""
    defense = _fitted("memguard", defender_data)
    probs = torch.cat([defender_data[0][0][:100], defender_data[0][2][:100]])
    z, label = torch.log(probs.clamp_min(1e-12)), probs.argmax(1)
    others = torch.ones_like(probs, dtype=torch.bool).scatter(1, label[:, None], False)
    for scale in (0.0, 0.5):  # at e = 0 the distortion term gives no gradient (rounding noise only)
        e = (scale * torch.randn(probs.shape, generator=torch.Generator().manual_seed(3))).requires_grad_(True)
        autograd, = torch.autograd.grad(
            phase_one_loss(z, e, probs, label, others, defense.classifier, 10.0, 0.1)[2].sum(), e)
        closed = _loss_gradient(z, e.detach(), probs, label, others, defense.classifier, 10.0, torch.tensor(0.1))[2]
        torch.testing.assert_close(closed, autograd, atol=1e-5, rtol=1e-5)
    args = dict(iters=defense.iters, step=defense.step, c2=defense.c2, c3_init=defense.c3_init, rounds=defense.rounds)
    noisy, found = memguard_noise(probs, defense.classifier, **args)
    graph_noisy, graph_found = memguard_noise_graph(probs, defense.classifier, **args)
    assert torch.equal(graph_found, found) and float(found.float().mean()) > 0.8
    assert float(((graph_noisy - noisy).abs() <= 1e-5).all(1).float().mean()) >= 0.99


def test_hamp_output_places_a_random_output_in_the_original_rank_order(defender_data):
    defense = _fitted("hamp-output", defender_data)
    assert defense.bank.shape == (200, 10) and bool((defense.bank[:, :-1] >= defense.bank[:, 1:]).all())
    probs = random_probs(50, 10, torch.Generator().manual_seed(0))
    out = defense.defend(probs, generator=torch.Generator().manual_seed(1)).defended
    values = out.sort(1, descending=True).values
    assert all(bool((defense.bank == v).all(1).any()) for v in values)  # one bank row per answer
    assert torch.equal(out.argsort(1, descending=True), probs.argsort(1, descending=True))  # ranking kept
    coins = random_inputs(torch.tensor([[0.0, 1.0], [1.0, 1.0]]), 1000, torch.Generator().manual_seed(0))
    assert set(coins.unique().tolist()) == {0.0, 1.0} and 0.4 < float(coins.mean()) < 0.6
    box = random_inputs(torch.tensor([[0.0, 2.0], [1.0, 4.0]]), 1000, torch.Generator().manual_seed(0))
    assert bool((box[:, 0] <= 1).all() & (box[:, 1] >= 2).all()) and float(box[:, 1].max()) > 3.9


@pytest.mark.parametrize("device", devices())
def test_randomized_defenses_give_the_same_answers_on_every_device(device, defender_data):
    for name in ("hamp-output", "memguard"):
        defense = _fitted(name, defender_data)
        probs = random_probs(40, 10, torch.Generator().manual_seed(0))
        cpu = defense.defend(probs, generator=torch.Generator().manual_seed(5)).defended
        here = defense.defend(probs.to(device), generator=torch.Generator().manual_seed(5)).defended.cpu()
        assert torch.allclose(here, cpu, atol=1e-5)


def test_defense_checkpoints_load_safely(tmp_path, defender_data):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump([print], f)
    with pytest.raises(CheckpointError, match="not a mia-fast checkpoint"):
        load_defense(tmp_path / "evil.pt")
    d = _fitted("hamp-output", defender_data)
    d.save(tmp_path / "ok.safetensors")
    payload = load_payload(tmp_path / "ok.safetensors", "output-defense")
    assert torch.equal(payload["state_dict"]["bank"], d.bank)
    torch.save(payload, tmp_path / "legacy.pt")  # what mia-fast wrote before safetensors still loads
    assert torch.equal(load_defense(tmp_path / "legacy.pt").bank, d.bank)
    payload["architecture"]["params"] = {"bank_size": -3}
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(CheckpointError, match="not a usable defense \\(hamp-output: bank_size must be > 0"):
        load_defense(tmp_path / "tampered.pt")
    with pytest.raises(CheckpointError, match="no such file"):
        load_defense(tmp_path / "absent.pt")
    assert isinstance(load_defense(tmp_path / "ok.safetensors"), HAMPOutput)


def test_rank_template_serves_the_median_in_each_answers_rank_order(defender_data):
    (m, ml, n, nl), _, _ = defender_data
    defense = _fitted("rank-template", defender_data)
    both = torch.cat([m, n]).sort(1, descending=True).values
    want = both.median(0).values
    assert torch.allclose(defense.templates[0], want / want.sum())
    probs = random_probs(200, 10, torch.Generator().manual_seed(3))
    out = defense.defend(probs).defended
    assert torch.allclose(out.sort(1, descending=True).values, defense.templates.expand(200, -1))  # one vector
    assert torch.equal(out.argsort(1, descending=True), probs.argsort(1, descending=True))  # in each rank order
    per_class = create_defense("rank-template", per_class=True).fit(m, ml, n, nl, seed=0)
    assert per_class.templates.shape == (10, 10)
    predicted = torch.cat([m, n]).argmax(1)
    for c in range(10):  # classes with enough outputs get their own median, the others the global one
        rows = torch.cat([m, n])[predicted == c]
        expected = rows.sort(1, descending=True).values.median(0).values if len(rows) >= 20 else want
        assert torch.allclose(per_class.templates[c], expected / expected.sum())
    with pytest.raises(ValueError, match="no clear top class"):
        create_defense("rank-template").fit(torch.full((4, 2), 0.5), torch.zeros(4).long(), torch.full((4, 2), 0.5),
                                            torch.zeros(4).long())


KEYED = ("aeppt", "memguard", "hamp-output")


@pytest.mark.parametrize("name", KEYED)
def test_keyed_defenses_answer_a_query_the_same_every_time(name, defender_data, tmp_path):
    (m, ml, n, nl), target, inputs = defender_data
    params = {**QUICK[name], "keyed": True}
    if name == "memguard":
        params["budget"] = 0.3  # the coin decides about half of the answers
    fit = lambda seed: create_defense(name, **params).fit(m, ml, n, nl, target=target, inputs=inputs, seed=seed)  # noqa
    defense = fit(0)
    probs = random_probs(120, 10, torch.Generator().manual_seed(7))
    first = defense.defend(probs, generator=torch.Generator().manual_seed(1)).defended
    again = defense.defend(probs, generator=torch.Generator().manual_seed(2)).defended
    assert torch.equal(first, again)  # the generator plays no part: averaging repeated queries gains nothing
    shuffled = torch.randperm(120, generator=torch.Generator().manual_seed(0))
    # nor does the batch (MemGuard's batched search itself sums in a batch-dependent order: close, not equal)
    assert torch.allclose(defense.defend(probs[shuffled]).defended, first[shuffled], atol=1e-5)
    other = fit(1)  # another fit seed, another key: other draws
    assert other.query_key != defense.query_key
    other.load_state_dict(defense.state_dict())  # the same fitted state, only the key differs
    assert not torch.equal(other.defend(probs).defended, first)
    defense.save(tmp_path / "keyed.safetensors")
    assert torch.equal(load_defense(tmp_path / "keyed.safetensors").defend(probs).defended, first)
    payload = load_payload(tmp_path / "keyed.safetensors", "output-defense")
    del payload["state_dict"]["query_key"]
    torch.save(payload, tmp_path / "keyless.pt")
    with pytest.raises(CheckpointError, match="not a usable defense"):
        load_defense(tmp_path / "keyless.pt")


def test_a_keyed_aeppt_without_a_key_is_refused(defender_data):
    (m, ml, n, nl), _, _ = defender_data
    mim = train_substitute(m, ml, n, nl, epochs=1, progress=False)[0]
    with pytest.raises(ValueError, match="query key: expected 32 bytes"):
        AEPPT.from_substitute(mim, eps=1e-3, keyed=True)
