"""RMIA offline (Zarifzadeh, Liu, Mahdavi and Shokri, "Low-Cost High-Power Membership Inference Attacks",
ICML 2024; the attack ML Privacy Meter is built on): a record is a member when its likelihood ratio
Pr(x | theta) / Pr(x) beats that of many population records z, Pr(.) averaged over reference models.

Pr(x | theta) is the target's true-class probability; offline, only reference models that did not train
on x exist, so Pr(x) = ((1 + a) * mean_OUT p(x) + (1 - a)) / 2 (the paper's linear approximation of the
missing IN models, ``a`` as in LeakPro's default 0.33); score(x) = the fraction of population records z
with (Pr(x|theta)/Pr(x)) / (Pr(z|theta)/Pr(z)) > ``gamma`` (1, as in ML Privacy Meter). The population
is the attacker's known non-members.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .base import Attack
from .metric import _best_threshold

Tensor = torch.Tensor


class RMIAOffline(Attack):
    """``score`` and ``fit`` take ``reference`` [K, n, C] (shadow outputs on the same records) and
    optionally ``reference_mask`` [K, n] (True where shadow k did not train on record n), as LiRA does.
    ``fit`` keeps the population's ratios and picks the threshold with the best accuracy on the known records.

    >>> ref = torch.full((4, 3, 2), 0.5)
    >>> attack = RMIAOffline()
    >>> attack.population = torch.tensor([1.0, 1.2, 1.3])  # sorted ratios of the population
    >>> attack.score(torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9]]), torch.tensor([0, 0, 0]), reference=ref).tolist()
    [1.0, 0.0, 0.0]
    """

    def __init__(self, *, a: float = 0.33, gamma: float = 1.0):
        if not 0 <= a <= 1 or not gamma > 0:
            raise ValueError(f"RMIA: need 0 <= a <= 1 and gamma > 0, got a={a}, gamma={gamma}")
        self.a, self.gamma = a, gamma
        self.threshold = 0.5
        self.population: Optional[Tensor] = None

    def ratio(self, probs: Tensor, labels: Tensor, reference: Tensor,
              reference_mask: Optional[Tensor] = None) -> Tensor:
        """Pr(x | theta) / Pr(x) per record."""
        y = labels.long()
        p_target = probs.double().gather(1, y[:, None])[:, 0]
        p_ref = reference.double().gather(2, y[None, :, None].expand(reference.shape[0], -1, 1))[..., 0]  # [K, n]
        mask = torch.ones_like(p_ref, dtype=torch.bool) if reference_mask is None else reference_mask.bool()
        if not bool(mask.any(0).all()):
            raise ValueError("RMIA: every record needs at least one reference model that did not train on it")
        p_out = torch.where(mask, p_ref, 0.0).sum(0) / mask.sum(0)
        return p_target / (0.5 * ((1 + self.a) * p_out + (1 - self.a))).clamp_min(1e-30)

    def score(self, probs: Tensor, labels: Tensor, *, reference: Tensor,
              reference_mask: Optional[Tensor] = None) -> np.ndarray:
        if self.population is None:
            raise RuntimeError("RMIA: fit() first (it keeps the population's ratios)")
        ratio = self.ratio(probs, labels, reference, reference_mask)
        below = torch.searchsorted(self.population.double().contiguous(), (ratio / self.gamma).contiguous())
        return (below.double() / len(self.population)).numpy()

    def fit(self, member_probs, member_labels, nonmember_probs, nonmember_labels, *, member_reference: Tensor,
            nonmember_reference: Tensor, member_reference_mask: Optional[Tensor] = None,
            nonmember_reference_mask: Optional[Tensor] = None) -> "RMIAOffline":
        def usable(mask, n):  # a known record that trained every reference model has no OUT estimate
            return torch.ones(n, dtype=torch.bool) if mask is None else mask.bool().any(0)

        keep_out = usable(nonmember_reference_mask, len(nonmember_labels))
        self.population = torch.sort(self.ratio(
            nonmember_probs[keep_out], nonmember_labels[keep_out], nonmember_reference[:, keep_out],
            None if nonmember_reference_mask is None else nonmember_reference_mask[:, keep_out])).values
        keep_in = usable(member_reference_mask, len(member_labels))
        s_in = self.score(member_probs[keep_in], member_labels[keep_in], reference=member_reference[:, keep_in],
                          reference_mask=None if member_reference_mask is None else member_reference_mask[:, keep_in])
        s_out = self.score(nonmember_probs[keep_out], nonmember_labels[keep_out],
                           reference=nonmember_reference[:, keep_out],
                           reference_mask=None if nonmember_reference_mask is None
                           else nonmember_reference_mask[:, keep_out])
        self.threshold, _ = _best_threshold(s_in, s_out)
        return self
