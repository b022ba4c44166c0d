"""The decision-boundary attack, label-only (Choquette-Choo et al., "Label-Only Membership Inference
Attacks", ICML 2021, sec. 4.2; Li & Zhang, "Membership Leakage in Label-Only Exposures", CCS 2021): a
model's training records lie farther from its decision boundary, and the distance can be found with label
queries alone. Misclassified records are at distance 0.

Binary features: along each of several random orders of the features, the number of leading features
that must be flipped before the label changes. Continuous features: along each of several random
directions, the radius at which the label changes. Both are found by bisection (about log2 of the range
queries per direction; it finds a change point, the first one when the label changes only once along the
way), and the distance is the mean over directions. HopSkipJump's walk along the boundary is not done:
random directions give an upper bound of the distance, which is what this attack thresholds.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .base import Attack
from .metric import _best_threshold

Tensor = torch.Tensor


def boundary_distance(predict_labels: Callable[[Tensor], Tensor], x: Tensor, labels: Tensor, *, kind: str,
                      directions: int, generator: torch.Generator, radius: float = 1.0, steps: int = 12,
                      chunk: int = 1024) -> Tensor:
    """The label-only distance to the decision boundary per record [n] (module docstring).
    ``predict_labels`` maps inputs [m, ...] to labels [m]; ``kind`` "bitflip" or "gaussian"; ``radius``:
    the largest radius searched (gaussian; directions have unit L2 norm). Records go ``chunk`` at a time
    (the search holds ``directions`` copies of each)."""
    if kind not in ("bitflip", "gaussian"):
        raise ValueError(f"kind must be bitflip or gaussian, got {kind!r}")
    return torch.cat([_distance(predict_labels, x[i:i + chunk].float(), labels[i:i + chunk].long(), kind, directions,
                                generator, radius, steps) for i in range(0, len(x), chunk)]) if len(x) else torch.zeros(0)


def _distance(predict_labels, x, labels, kind, directions, generator, radius, steps) -> Tensor:
    n, flat = len(x), x.reshape(len(x), -1)
    features = flat.shape[1]
    correct = predict_labels(x) == labels
    if kind == "bitflip":
        rank = torch.rand(directions, n, features, generator=generator).argsort(-1).argsort(-1)
        low, high = torch.zeros(directions, n), torch.full((directions, n), float(features))
        steps = math.ceil(math.log2(features + 1))
    else:
        d = torch.randn(directions, n, features, generator=generator)
        d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        low, high = torch.zeros(directions, n), torch.full((directions, n), float(radius))
    y = labels.expand(directions, n)
    for _ in range(steps):
        middle = (low + high) / 2
        if kind == "bitflip":
            middle = middle.ceil()
            moved = torch.where(rank < middle[..., None], 1 - flat, flat)
        else:
            moved = flat + middle[..., None] * d
        changed = (predict_labels(moved.reshape(directions * n, *x.shape[1:])).reshape(directions, n) != y)
        high, low = torch.where(changed, middle, high), torch.where(changed, low, middle)
        if kind == "bitflip" and bool((high - low <= 1).all()):
            break
    return torch.where(correct, high.mean(0), torch.zeros(n))


class BoundaryAttack(Attack):
    """Score = the record's ``boundary_distance`` (label-only; `boundary_distance` computes it with
    label queries); ``fit`` picks the threshold with the best accuracy on the known records.

    >>> attack = BoundaryAttack().fit(None, None, None, None, member_boundary_distance=torch.tensor([5., 6.]),
    ...                               nonmember_boundary_distance=torch.tensor([0., 2.]))
    >>> attack.infer(None, None, boundary_distance=torch.tensor([7., 1.])).tolist()
    [True, False]
    """

    def __init__(self):
        self.threshold = 0.5

    def score(self, probs, labels, *, boundary_distance: Tensor) -> np.ndarray:
        return boundary_distance.double().numpy()

    def fit(self, member_probs, member_labels, nonmember_probs, nonmember_labels, *,
            member_boundary_distance: Tensor, nonmember_boundary_distance: Tensor) -> "BoundaryAttack":
        self.threshold, _ = _best_threshold(member_boundary_distance.double().numpy(),
                                            nonmember_boundary_distance.double().numpy())
        return self
