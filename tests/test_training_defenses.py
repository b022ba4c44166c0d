"""Training-time defenses: each changes training as its definition says, and a silently disabled one fails
a metric band on real data (digits)."""
import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from mia_fast.defenses import create_defense, defense_names, parse_spec
from mia_fast.defenses.training.hamp_training import soft_label_confidence
from mia_fast.models import TabularMLP
from mia_fast.training import accuracy, predict_proba, train_model, train_target


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    x = torch.from_numpy(x / 16.0).float()
    y = torch.from_numpy(y).long()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return {"train": (x[order[:150]], y[order[:150]]), "test": (x[order[150:450]], y[order[150:450]]),
            "reference": (x[order[450:600]], y[order[450:600]])}


def _train(digits, name=None, epochs=60, lr=1e-3, **params):
    defense = create_defense(name, **params) if name else None
    kwargs = {"in_features": 64, "num_classes": 10}
    kwargs = defense.architecture(kwargs) if defense else kwargs
    torch.manual_seed(0)
    model = TabularMLP(**kwargs)
    history = train_model(model, *digits["train"], defense=defense, reference=digits["reference"], epochs=epochs,
                          lr=lr, seed=0)
    gap = accuracy(model, *digits["train"]) - accuracy(model, *digits["test"])
    return model, history, gap


@pytest.fixture(scope="module")
def plain(digits):
    return _train(digits)


def test_every_training_defense_is_registered_with_keyword_only_validated_hyperparameters():
    assert set(defense_names("training")) == {"dropout", "l2", "early-stopping", "advreg", "dp-sgd",
                                              "hamp-training", "relaxloss", "input-perturbation"}
    with pytest.raises(ValueError, match="p must be in"):
        create_defense("dropout", p=1.5)
    with pytest.raises(ValueError, match="weight_decay must be > 0"):
        create_defense("l2", weight_decay=0)
    with pytest.raises(TypeError):
        type(create_defense("advreg"))(3.0)  # keyword-only
    assert parse_spec("hamp").names == ("hamp-training", "hamp-output")
    assert parse_spec("dp-sgd+aeppt").names == ("dp-sgd", "aeppt")
    with pytest.raises(ValueError, match="at most one training defense"):
        parse_spec("dropout+l2")


def test_dropout_is_active_in_train_mode_only(digits):
    model, _, _ = _train(digits, "dropout", epochs=2, p=0.5)
    x = digits["test"][0][:8]
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    with pytest.raises(ValueError, match="dropout rates"):
        train_model(TabularMLP(64, 10), *digits["train"], defense=create_defense("dropout"), epochs=1, lr=1e-3, seed=0)


def test_dropout_masks_come_from_the_training_seed_not_from_what_ran_before(digits):
    def trained(draws_before):
        torch.manual_seed(0)
        model = TabularMLP(64, 10, dropout=0.5)
        torch.rand(draws_before)  # whatever else used the process-wide generator
        train_model(model, *digits["train"], defense=create_defense("dropout"), epochs=3, lr=1e-3, seed=0)
        return model

    assert all(torch.equal(a, b) for a, b in zip(trained(1).parameters(), trained(7).parameters()))


def test_l2_weight_decay_shrinks_the_weights(digits, plain):
    norm = lambda m: float(sum((p ** 2).sum() for p in m.parameters()))  # noqa: E731
    decayed, _, _ = _train(digits, "l2", weight_decay=0.05)
    assert norm(decayed) < 0.7 * norm(plain[0])


def test_early_stopping_keeps_the_best_held_out_epoch(digits):
    model, history, _ = _train(digits, "early-stopping", epochs=80, patience=5)
    held_out = history["held_out_accuracy"]
    assert history["epochs_run"] == len(held_out) <= 80
    assert history["best_epoch"] == int(np.argmax(held_out)) + 1
    assert accuracy(model, *digits["reference"]) == pytest.approx(max(held_out))
    # stopped (measured: after epoch 34, best 29): patience epochs without improvement
    assert history["epochs_run"] < 80 and history["epochs_run"] - history["best_epoch"] == 5


def test_adversarial_regularization_alternates_the_min_max_game(digits, plain):
    model, history, _ = _train(digits, "advreg", epochs=30, attack_steps=3, warmup_epochs=2, privacy_weight=3.0)
    batches_per_epoch = math.ceil(150 / 128)
    assert history["adversarial_classifier_steps"] == 28 * batches_per_epoch
    assert history["inference_steps"] == 3 * history["adversarial_classifier_steps"]
    assert history["inference_gain"][:2] == [0.0, 0.0] and history["inference_gain"][-1] < 0  # after warmup
    assert 0.4 < history["inference_accuracy"][-1] <= 1
    # the privacy term keeps members from the overconfidence the inference model sees (measured: 0.90 mean
    # confidence on training records, undefended 0.996); with the term silently off it would stay there
    confidence = lambda m: float(predict_proba(m, digits["train"][0]).max(1).values.mean())  # noqa: E731
    assert confidence(plain[0]) > 0.99 and confidence(model) < 0.95


def test_dp_sgd_reports_the_epsilon_it_spent_and_at_small_epsilon_narrows_the_gap(digits, plain):
    model, history, gap = _train(digits, "dp-sgd", epochs=15, epsilon=1.0)
    assert 0.5 < history["epsilon"] <= 1.0 + 1e-6 and history["noise_multiplier"] > 0.5
    # metric band: undefended, 150 digits are learnt by heart (train 100%, gap 10 points); DP-SGD at epsilon 1
    # does not memorise them (measured: gap 5.7 points, train accuracy well below 100%)
    assert accuracy(plain[0], *digits["train"]) == 1.0 and plain[2] > 0.06
    assert gap < 0.75 * plain[2] and accuracy(model, *digits["train"]) < 0.9


def test_dp_sgd_ghost_clipping_trains_what_opacus_per_sample_gradients_train(digits):
    # ghost clipping (the default) computes the same per-sample clipping as Opacus' materialised per-sample
    # gradients ("hooks"); and when the bound binds for every sample (per-sample gradient norms are far
    # above 1e-2) only the clipped directions count: noise scales with the bound too, and Adam ignores a
    # common scale, so bounds 1e-4 and 1e-2 train the same model
    quick = {"epochs": 2, "epsilon": 8.0, "accountant": "gdp"}
    ghost, _, _ = _train(digits, "dp-sgd", max_grad_norm=1e-4, **quick)
    hooks, _, _ = _train(digits, "dp-sgd", max_grad_norm=1e-4, grad_sample_mode="hooks", **quick)
    wider, _, _ = _train(digits, "dp-sgd", max_grad_norm=1e-2, **quick)
    x = digits["test"][0]
    assert torch.allclose(predict_proba(ghost, x), predict_proba(hooks, x), atol=1e-4)
    assert torch.allclose(predict_proba(ghost, x), predict_proba(wider, x), atol=1e-3)


def test_hamp_training_learns_high_entropy_outputs(digits, plain):
    p = soft_label_confidence(10, 0.5)
    rest = (1 - p) / 9
    assert -(p * math.log(p) + 9 * rest * math.log(rest)) == pytest.approx(0.5 * math.log(10), rel=1e-6)
    model, history, _ = _train(digits, "hamp-training", entropy_fraction=0.5)
    entropy = lambda m: float(torch.special.entr(predict_proba(m, digits["train"][0])).sum(1).mean())  # noqa
    assert entropy(model) > 0.8 * 0.5 * math.log(10) > 5 * entropy(plain[0])
    assert accuracy(model, *digits["train"]) > 0.9  # the labels are still learned


def _flatness(model, x, y) -> float:
    """Mean normalised entropy of the non-true-class probabilities (1: spread evenly)."""
    p = predict_proba(model, x)
    rest = p[torch.nn.functional.one_hot(y, p.shape[1]) == 0].view(len(y), -1)
    rest = rest / rest.sum(1, keepdim=True)
    return float((torch.special.entr(rest).sum(1) / math.log(rest.shape[1])).mean())


def test_relaxloss_holds_the_training_loss_near_alpha_and_flattens_the_posteriors(digits, plain):
    model, _, _ = _train(digits, "relaxloss")  # alpha 0.8, posteriors flattened to at most 0.3
    loss = lambda m: float(torch.nn.functional.cross_entropy(torch.log(predict_proba(m, digits["train"][0])),  # noqa
                                                             digits["train"][1]))
    assert loss(plain[0]) < 0.1
    assert 0.5 < loss(model) < 1.2  # measured 0.82
    # without the flattening step (only |L - alpha|) the wrong classes keep their similarity structure:
    # measured normalised entropy 0.70 (plain training 0.57), RelaxLoss 0.93
    torch.manual_seed(0)
    alpha_only = TabularMLP(64, 10)
    train_target(alpha_only, *digits["train"], epochs=60, lr=1e-3, seed=0, progress=False,
                 loss_fn=lambda logits, y, epoch: (torch.nn.functional.cross_entropy(logits, y) - 0.8).abs())
    assert _flatness(model, *digits["train"]) > 0.88 > 0.78 > _flatness(alpha_only, *digits["train"])


def test_train_target_with_a_training_defense_records_it_and_its_epsilon(tmp_path):
    import json

    from click.testing import CliRunner

    from mia_fast.checkpoint import load_model
    from mia_fast.cli import main

    run = tmp_path / "dp"
    r = CliRunner().invoke(main, ["train-target", "--run-dir", str(run), "--target-epochs", "3", "--defense", "dp-sgd",
                                  "--param", "epsilon=2", "--param", "epochs=3"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["training_defense"] == "dp-sgd" and cfg["training_params"]["epsilon"] == 2.0
    meta = load_model(run / "target.safetensors", "target")[1]["meta"]
    assert 1.0 < meta["epsilon"] <= 2.0 + 1e-6 and meta["training_defense"]["name"] == "dp-sgd"
    r = CliRunner().invoke(main, ["train-target", "--run-dir", str(tmp_path / "x"), "--param", "p=0.5"])
    assert r.exit_code == 1 and "--param needs --defense" in r.output
    r = CliRunner().invoke(main, ["train-target", "--run-dir", str(tmp_path / "y"), "--defense", "dropout",
                                  "--param", "p=2"])
    assert r.exit_code == 1 and "p must be in (0, 1)" in r.output and not (tmp_path / "y").exists()


def test_a_defended_target_is_trained_once_per_base_split(tmp_path):
    import json

    from mia_fast.pipeline import Config, RunDir, defended_target, stage_target

    base = RunDir(tmp_path / "run", create=True)
    stage_target(base, Config(dataset="digits", target_epochs=2), log=lambda m: None, progress=False)
    variant = defended_target(base, create_defense("l2"), log=lambda m: None)
    stamp = (variant.path / "target.json").stat().st_mtime_ns
    assert defended_target(base, create_defense("l2"), log=lambda m: None).path == variant.path
    assert (variant.path / "target.json").stat().st_mtime_ns == stamp
    assert variant.splits() == base.splits() and variant.config().training_defense == "l2"
    stage_target(base, Config(dataset="digits", target_epochs=2, seed=1), log=lambda m: None, progress=False)
    again = defended_target(base, create_defense("l2"), log=lambda m: None)  # the base run changed: retrained
    assert (again.path / "target.json").stat().st_mtime_ns != stamp
    assert again.splits() == base.splits() and json.loads((again.path / "config.json").read_text())["seed"] == 1
