"""L2 regularization (Shokri et al., "Membership Inference Attacks against Machine Learning Models", S&P
2017, sec. VIII): a penalty on the weights' squared norm, in the optimizer, against overfitting."""
from __future__ import annotations

from ...training.target import train_target
from ..base import TrainingDefense, check_positive, register_defense


@register_defense
class WeightDecay(TrainingDefense):
    """Adam with L2 weight decay ``weight_decay`` (the gradient of weight_decay/2 * ||w||^2 added to
    every step), otherwise the target's usual training."""

    name = "l2"
    description = "L2 weight decay in the target's optimizer (Shokri et al. 2017)"

    def __init__(self, *, weight_decay: float = 1e-3):
        check_positive(self.name, weight_decay=weight_decay)
        self.weight_decay = weight_decay

    def _train(self, model, x, y, *, epochs, lr, seed, device, progress, reference) -> dict:
        return train_target(model, x, y, epochs=epochs, lr=lr, seed=seed, device=device, progress=progress,
                            weight_decay=self.weight_decay, desc="target (L2)")
