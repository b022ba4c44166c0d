"""What every membership-inference attack offers: fit on known members/non-members, then score."""
from __future__ import annotations

import numpy as np
import torch

Tensor = torch.Tensor


class Attack:
    """Base class. ``fit`` learns from the attacker's known members and non-members (confidence vectors
    and labels, exactly as the target served them: pass defended outputs for a defense-aware attacker);
    ``score`` returns a membership score per record (higher = member); ``infer`` thresholds it. Attacks
    that need more than the confidence vector take it as keyword arguments of ``score`` and ``fit``
    (`LiRAOffline`: the shadow models' outputs on the same records; `RobustnessAttack`: the labels of
    noisy queries)."""

    threshold: float = 0.5

    def fit(self, member_probs: Tensor, member_labels: Tensor, nonmember_probs: Tensor,
            nonmember_labels: Tensor) -> "Attack":
        return self

    def score(self, probs: Tensor, labels: Tensor, **context) -> np.ndarray:
        raise NotImplementedError

    def infer(self, probs: Tensor, labels: Tensor, **context) -> np.ndarray:
        """Member (True) or not per record; ``context`` as for ``score`` (LiRA's ``reference``, ...)."""
        return self.score(probs, labels, **context) >= self.threshold

    def evaluate(self, member_probs: Tensor, member_labels: Tensor, nonmember_probs: Tensor,
                 nonmember_labels: Tensor) -> dict:
        """`attack_metrics` on scored records, at this attack's own decision threshold (for attacks that
        need only the confidence vectors and labels)."""
        from ..metrics import attack_metrics

        return attack_metrics(self.score(member_probs, member_labels), self.score(nonmember_probs, nonmember_labels),
                              threshold=self.threshold)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"
