"""Early stopping (Song & Mittal, USENIX Security 2021, sec. 5.3, and Shokri et al. 2017 sec. VIII list it
among the defenses that reduce overfitting): training stops when accuracy on held-out data the defender
owns stops improving, and the best epoch's weights are kept."""
from __future__ import annotations

import copy

from ...training.target import accuracy, train_target
from ..base import TrainingDefense, register_defense


@register_defense
class EarlyStopping(TrainingDefense):
    """Train as usual, measure accuracy on the reference records (held out: never trained on) after every
    epoch, stop after ``patience`` epochs without improvement and restore the best epoch's weights. Every
    training record is still trained on, so the run's membership labels stay true."""

    name = "early-stopping"
    description = "stop at the best epoch on held-out data the defender owns"
    uses = frozenset({"reference"})

    def __init__(self, *, patience: int = 10):
        if patience < 1:
            raise ValueError(f"early-stopping: patience must be >= 1, got {patience!r}")
        self.patience = patience

    def _train(self, model, x, y, *, epochs, lr, seed, device, progress, reference) -> dict:
        x_ref, y_ref = reference
        best = {"accuracy": -1.0, "epoch": -1, "state": None}
        held_out = []

        def after_epoch(epoch, m) -> bool:
            acc = accuracy(m, x_ref, y_ref, device=device)
            held_out.append(acc)
            if acc > best["accuracy"]:
                best.update(accuracy=acc, epoch=epoch, state=copy.deepcopy(m.state_dict()))
            return epoch - best["epoch"] >= self.patience

        history = train_target(model, x, y, epochs=epochs, lr=lr, seed=seed, device=device, progress=progress,
                               after_epoch=after_epoch, desc="target (early stopping)")
        model.load_state_dict(best["state"])
        model.eval()
        return {**history, "held_out_accuracy": held_out, "best_epoch": best["epoch"] + 1,
                "train_accuracy": accuracy(model, x, y, device=device)}
