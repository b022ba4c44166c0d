"""HAMP's training (Chen & Pattabiraman, "Overconfidence is a Dangerous Thing: Mitigating Membership
Inference Attacks by Enforcing Less Confident Prediction", NDSS 2024, sec. IV-A/B): the target learns
high-entropy soft labels and is rewarded for high-entropy outputs, so members are not predicted with the
overconfidence that gives them away. `hamp` (the named combination) adds HAMP's output step."""
from __future__ import annotations

import math

import torch
from torch import nn

from ...training.target import train_target
from ..base import TrainingDefense, register_defense


def soft_label_confidence(num_classes: int, entropy_fraction: float) -> float:
    """The true-class probability p of the soft label [p at y, (1 - p) / (C - 1) elsewhere] whose entropy
    is ``entropy_fraction`` * log C (bisection on p in [1/C, 1], where the entropy falls as p grows; HAMP's
    code steps p down from 1 by 0.01 until the entropy reaches the threshold).

    >>> round(soft_label_confidence(30, 0.5), 3)  # HAMP's 0.01 steps stop at 0.68
    0.681
    """
    def entropy(p: float) -> float:
        rest = (1 - p) / (num_classes - 1)
        return -(p * math.log(p) + (num_classes - 1) * (rest * math.log(rest) if rest > 0 else 0.0))

    goal, low, high = entropy_fraction * math.log(num_classes), 1.0 / num_classes, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if entropy(middle) >= goal else (low, middle)
    return low


@register_defense
class HAMPTraining(TrainingDefense):
    """Train on soft labels (true class p from `soft_label_confidence` at ``entropy_fraction`` = HAMP's
    gamma, the rest spread evenly) with the loss KL(soft label || output) - ``entropy_weight`` * H(output);
    the KL term averaged over batch and classes as HAMP's code does, whose Location-30 setting is
    gamma 0.5 and alpha 0.001 (the defaults). HAMP's own optimizer (SGD, momentum 0.99) is not copied: the
    target is trained as the run trains every target (Adam at the run's learning rate)."""

    name = "hamp-training"
    description = "HAMP's training: high-entropy soft labels plus an entropy reward (Chen & Pattabiraman 2024)"

    def __init__(self, *, entropy_fraction: float = 0.5, entropy_weight: float = 0.001):
        if not 0 < entropy_fraction < 1 or entropy_weight < 0:
            raise ValueError(f"hamp-training: need 0 < entropy_fraction < 1 and entropy_weight >= 0, got "
                             f"{entropy_fraction!r}, {entropy_weight!r}")
        self.entropy_fraction, self.entropy_weight = entropy_fraction, entropy_weight

    def _train(self, model, x, y, *, epochs, lr, seed, device, progress, reference) -> dict:
        num_classes = int(model.to(device)(x[:1].to(device)).shape[1])
        p = soft_label_confidence(num_classes, self.entropy_fraction)
        rest = (1 - p) / (num_classes - 1)

        def loss_fn(logits, labels, epoch):
            soft = torch.full_like(logits, rest).scatter_(1, labels[:, None], p)
            log_probs = torch.log_softmax(logits, 1)
            kl = nn.functional.kl_div(log_probs, soft, reduction="sum") / soft.numel()
            entropy = -(log_probs.exp() * log_probs).sum(1).mean()
            return kl - self.entropy_weight * entropy

        history = train_target(model, x, y, epochs=epochs, lr=lr, seed=seed, device=device, progress=progress,
                               loss_fn=loss_fn, desc="target (HAMP training)")
        return {**history, "soft_label_confidence": p}
