"""Adaptive attacks of Xue et al., sec. 5.8 (Table 8), as wrappers around another attack. The
adversarial-training and repeated-query averaging attacks change the data an attack sees, not the
attack, and live in `mia_fast.evaluation.battery`."""
from __future__ import annotations

import numpy as np
import torch

from .base import Attack


class Flipped(Attack):
    """Flip attack: call a record a member exactly when ``attack`` calls it a non-member (the adversary
    expects AEPPT to have pushed every decision across the boundary).

    >>> from mia_fast.attacks import MetricAttack
    >>> p = torch.tensor([[0.9, 0.1], [0.6, 0.4]])
    >>> Flipped(MetricAttack("correctness")).infer(p, torch.tensor([0, 1])).tolist()
    [False, True]
    """

    def __init__(self, attack: Attack):
        self.attack = attack
        self.threshold = -attack.threshold

    def fit(self, *args, **kwargs) -> "Flipped":
        self.attack.fit(*args, **kwargs)
        self.threshold = -self.attack.threshold
        return self

    def score(self, probs, labels, **kwargs) -> np.ndarray:
        # -s >= -t is s <= t: the tie s == t goes to "member" in both; ties are measure-zero for real scores.
        return -self.attack.score(probs, labels, **kwargs)


class Rounded(Attack):
    """Rounding attack: round every confidence to ``decimals`` places before fitting and scoring, to wash out
    small perturbations (Xue et al. use 3 decimals).

    >>> from mia_fast.attacks import MetricAttack
    >>> a = Rounded(MetricAttack("confidence"), decimals=1)
    >>> a.attack.score = lambda p, y: p[:, 0].numpy()  # show what the wrapped attack receives
    >>> a.score(torch.tensor([[0.46, 0.54]]), torch.tensor([0])).round(6).tolist()
    [0.5]
    """

    def __init__(self, attack: Attack, *, decimals: int = 3):
        self.attack, self.decimals = attack, decimals
        self.threshold = attack.threshold

    def fit(self, member_probs, member_labels, nonmember_probs, nonmember_labels, **kwargs) -> "Rounded":
        self.attack.fit(torch.round(member_probs, decimals=self.decimals), member_labels,
                        torch.round(nonmember_probs, decimals=self.decimals), nonmember_labels, **kwargs)
        self.threshold = self.attack.threshold
        return self

    def score(self, probs, labels, **kwargs) -> np.ndarray:
        return self.attack.score(torch.round(probs, decimals=self.decimals), labels, **kwargs)
