"""Label-only LiRA: the gap attack made per record with shadow models (Carlini et al., "Membership Inference
Attacks From First Principles", S&P 2022, offline LiRA; Watson et al., "On the Importance of Difficulty
Calibration in Membership Inference Attacks", ICLR 2022).

The target answers a record with a label, right or wrong. A member is labelled right with probability
p_in (the target's accuracy on the attacker's known members); a non-member with the record's own
probability q(x) of being labelled right by a model that did not train on it. The attacker owns its
shadow models, so it reads q(x) off their full outputs, not off their labels: the margin
log p_y - log max_{j != y} p_j of each shadow that did not train on x (positive exactly when it labels
x right) is fitted with a Gaussian, as LiRA fits its scaled confidence, and q(x) = Phi(mu / sigma).
The score is the log likelihood ratio of the observed label. A right label on a record that models
rarely get right says "member"; the gap attack, which counts every right label the same, cannot see that.

It reads only the served label, so no output defense that keeps the labels changes what it sees.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .lira import ReferenceGaussian

Tensor = torch.Tensor
_TINY = 1e-30
_CLAMP = 1e-6  # q(x) and p_in stay inside (0, 1): a log ratio, not an infinity, for an unlikely label


def label_margin(probs: Tensor, labels: Tensor) -> Tensor:
    """log p_y - log max_{j != y} p_j on [..., n, C] with labels [n]: positive iff the label y is the
    strict argmax.

    >>> [round(v, 4) for v in label_margin(torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3]]), torch.tensor([0, 0])).exp().tolist()]
    [1.6667, 0.4]
    """
    p = probs.double().clamp(0, 1)
    index = labels.long().expand(p.shape[:-1])[..., None]
    py = p.gather(-1, index)[..., 0]
    rival = p.scatter(-1, index, -1.0).max(-1).values
    return torch.log(py.clamp_min(_TINY)) - torch.log(rival.clamp_min(_TINY))


class LabelLiRA(ReferenceGaussian):
    """score(x) = log Pr(label | member) / Pr(label | non-member), from the served label only.

    ``score`` and ``fit`` take the attacker's own (undefended) shadow outputs on the same records as
    ``reference`` [K, n, C] and optionally ``reference_mask`` [K, n] (True where shadow k did not train on
    record n), as `LiRAOffline` does (`ReferenceGaussian`: the margins' pooled variance is fitted on the
    known records). ``fit`` also sets p_in (the share of the known members the target labels right,
    smoothed by half a record).

    >>> ref = torch.tensor([[[0.9, 0.1], [0.3, 0.7]], [[0.8, 0.2], [0.4, 0.6]]])  # 2 shadows, 2 records
    >>> attack = LabelLiRA()
    >>> attack.p_in = 0.99
    >>> served = torch.tensor([[0.6, 0.4], [0.6, 0.4]])  # both labelled 0, the true label
    >>> s = attack.score(served, torch.tensor([0, 0]), reference=ref)
    >>> bool(s[1] > s[0])  # record 1 is usually labelled wrong: a right label there says "member"
    True
    """

    statistic = staticmethod(label_margin)
    name = "label-only LiRA"

    def __init__(self, *, global_variance: bool = True):
        super().__init__(global_variance=global_variance)
        self.p_in = 1.0 - _CLAMP

    def right_probability(self, labels: Tensor, reference: Tensor, reference_mask: Optional[Tensor] = None) -> Tensor:
        """q(x): the chance that a model which did not train on x labels it right, per record [n]."""
        mu, sigma = self.out_stats(labels, reference, reference_mask)
        return torch.special.ndtr(mu / sigma).clamp(_CLAMP, 1 - _CLAMP)

    def score(self, probs: Tensor, labels: Tensor, *, reference: Tensor,
              reference_mask: Optional[Tensor] = None) -> np.ndarray:
        q = self.right_probability(labels, reference, reference_mask)
        right = probs.argmax(1) == labels.long()
        p_in = torch.tensor(self.p_in, dtype=torch.float64)
        return torch.where(right, p_in.log() - q.log(), (1 - p_in).log() - (1 - q).log()).numpy()

    def fit(self, member_probs, member_labels, nonmember_probs, nonmember_labels, *, member_reference: Tensor,
            nonmember_reference: Tensor, member_reference_mask: Optional[Tensor] = None,
            nonmember_reference_mask: Optional[Tensor] = None) -> "LabelLiRA":
        right = (member_probs.argmax(1) == member_labels.long()).double()
        self.p_in = float(((right.sum() + 0.5) / (len(right) + 1)).clamp(_CLAMP, 1 - _CLAMP))
        return super().fit(member_probs, member_labels, nonmember_probs, nonmember_labels,
                           member_reference=member_reference, nonmember_reference=nonmember_reference,
                           member_reference_mask=member_reference_mask,
                           nonmember_reference_mask=nonmember_reference_mask)
