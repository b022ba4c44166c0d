"""Label-only attacks (Choquette-Choo et al., "Label-Only Membership Inference Attacks", ICML 2021).

The gap attack (sec. 4.1; Yeom et al.) calls a record a member when the target labels it correctly: that
is `MetricAttack("correctness")`. The robustness attack (sec. 4.3-4.4) queries the target on noisy copies
of a record and counts how many keep the true label: a model is more robust around its training points.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .base import Attack
from .metric import _best_threshold

Tensor = torch.Tensor

NOISE_KINDS = ("gaussian", "bitflip")


def noisy_copies(x: Tensor, *, kind: str, strength: float, copies: int, generator: torch.Generator) -> Tensor:
    """``copies`` noisy versions of each record: [copies, n, ...].

    kind "gaussian": x + strength * N(0, 1) (images); "bitflip": each binary feature flipped with
    probability ``strength`` (binary tabular data such as Location-30, Purchase-100, Texas-100).

    >>> x = torch.zeros(2, 1000)
    >>> flipped = noisy_copies(x, kind="bitflip", strength=0.1, copies=3, generator=torch.Generator().manual_seed(0))
    >>> flipped.shape, 0.07 < float(flipped.mean()) < 0.13
    (torch.Size([3, 2, 1000]), True)
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(NOISE_KINDS)}; got {kind!r}")
    if strength < 0 or copies < 1:
        raise ValueError(f"need strength >= 0 and copies >= 1; got strength={strength}, copies={copies}")
    x = x.float()
    shape = (copies, *x.shape)
    if kind == "gaussian":
        return x + strength * torch.randn(shape, generator=generator)
    flip = torch.rand(shape, generator=generator) < strength
    return torch.where(flip, 1 - x, x.expand(shape))


def noise_kind_for(x: Tensor) -> str:
    """"bitflip" when every feature is 0 or 1, else "gaussian"."""
    return "bitflip" if bool(((x == 0) | (x == 1)).all()) else "gaussian"


def query_labels(predict: Callable[[Tensor], Tensor], noisy: Tensor) -> Tensor:
    """Labels the (possibly defended) target returns for noisy copies [copies, n, ...]: [copies, n]."""
    copies, n = noisy.shape[:2]
    return predict(noisy.reshape(copies * n, *noisy.shape[2:])).argmax(1).reshape(copies, n)


class RobustnessAttack(Attack):
    """Score = fraction of noisy copies the target still labels correctly (label-only: the confidence
    values are never used). ``score``/``fit`` take ``noisy_labels`` [copies, n], the labels the target
    returned for each record's noisy copies (`noisy_copies` + `query_labels`); ``fit`` picks the threshold
    with the best accuracy on the attacker's known records.

    >>> attack = RobustnessAttack()
    >>> labels = torch.tensor([1, 1])
    >>> attack.score(None, labels, noisy_labels=torch.tensor([[1, 0], [1, 1], [1, 0], [0, 1]])).tolist()
    [0.75, 0.5]
    """

    def __init__(self):
        self.threshold = 0.5

    def score(self, probs, labels: Tensor, *, noisy_labels: Tensor) -> np.ndarray:
        return (noisy_labels == labels.long()[None]).double().mean(0).numpy()

    def fit(self, member_probs, member_labels, nonmember_probs, nonmember_labels, *, member_noisy_labels: Tensor,
            nonmember_noisy_labels: Tensor) -> "RobustnessAttack":
        self.threshold, _ = _best_threshold(self.score(member_probs, member_labels, noisy_labels=member_noisy_labels),
                                            self.score(nonmember_probs, nonmember_labels,
                                                       noisy_labels=nonmember_noisy_labels))
        return self
