"""LiRA offline (Carlini et al., "Membership Inference Attacks From First Principles", S&P 2022, sec. IV-C).

For each record, the attacker fits a Gaussian to the logit-scaled confidence of shadow models that were
NOT trained on it, and asks how far into that distribution's upper tail the target's value lies.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .base import Attack
from .metric import _best_threshold

Tensor = torch.Tensor
_TINY = 1e-30


def scaled_confidence(probs: Tensor, labels: Tensor) -> Tensor:
    """phi(p) = log p_y - log sum_{j != y} p_j, the logit of the true-class confidence (computed without
    forming 1 - p_y, which rounds to 0 for confident predictions). Works on [..., n, C] with labels [n].

    >>> round(float(scaled_confidence(torch.tensor([[0.75, 0.25]]), torch.tensor([0]))), 6)  # log 3
    1.098612
    """
    p = probs.double().clamp(0, 1)
    index = labels.long().expand(p.shape[:-1])[..., None]
    py = p.gather(-1, index)[..., 0]
    rest = p.sum(-1) - py
    return torch.log(py.clamp_min(_TINY)) - torch.log(rest.clamp_min(_TINY))


def out_gaussian(phi: Tensor, mask: Optional[Tensor], *, global_variance: bool, attack: str) -> tuple:
    """Mean and standard deviation per record [n] of a shadow statistic ``phi`` [K, n] over the shadow
    models that did not train on it (``mask`` [K, n] True there; None: all of them), with one pooled
    variance for all the records given when ``global_variance`` (Carlini et al., sec. VI-A)."""
    mask = torch.ones_like(phi, dtype=torch.bool) if mask is None else mask.bool()
    if not bool(mask.any(0).all()):
        raise ValueError(f"{attack}: every record needs at least one shadow model that did not train on it")
    count = mask.sum(0).double()
    mu = torch.where(mask, phi, 0.0).sum(0) / count
    dev2 = torch.where(mask, (phi - mu) ** 2, 0.0)
    if global_variance:  # one degree of freedom per record goes to its mean
        var = (dev2.sum() / (mask.sum() - (count > 0).sum()).clamp_min(1)).expand_as(mu)
    else:
        var = dev2.sum(0) / (count - 1).clamp_min(1)
    return mu, var.clamp_min(1e-8).sqrt()


class ReferenceGaussian(Attack):
    """An attack on a per-record Gaussian of a shadow statistic (``statistic(reference, labels)`` [K, n])
    over the shadow models that did not train on the record: LiRA and label-only LiRA.

    ``score`` and ``fit`` take the shadow models' outputs on the same records as ``reference`` [K, n, C]
    and, optionally, ``reference_mask`` [K, n] (True where shadow k did not train on record n; records
    that trained a shadow must not count as its OUT samples). With few shadow models one variance for all
    records is more stable than per-record ones (Carlini et al., sec. VI-A): ``global_variance=True``.
    ``fit`` pools that variance over all the attacker's known records, members and non-members together,
    and keeps it (``sigma``): a variance pooled over whatever is scored in one call would differ between
    a call on members and one on non-members, and that difference alone would tell them apart. Unfitted,
    ``score`` pools over the records it is given: score members and non-members in one call. ``fit``
    then picks the decision threshold (best accuracy on the known records, skipping those that trained
    every shadow).
    """

    statistic = staticmethod(scaled_confidence)
    name = "LiRA"

    def __init__(self, *, global_variance: bool = True):
        self.global_variance = global_variance
        self.threshold = 0.5
        self.sigma: Optional[float] = None

    def out_stats(self, labels: Tensor, reference: Tensor, reference_mask: Optional[Tensor] = None) -> tuple:
        """(mu, sigma) per record of the statistic over the OUT shadows (sigma: the fitted one when set)."""
        mu, sigma = out_gaussian(self.statistic(reference, labels), reference_mask,
                                 global_variance=self.global_variance, attack=self.name)
        if self.global_variance and self.sigma is not None:
            sigma = torch.full_like(mu, self.sigma)
        return mu, sigma

    def fit(self, member_probs, member_labels, nonmember_probs, nonmember_labels, *, member_reference: Tensor,
            nonmember_reference: Tensor, member_reference_mask: Optional[Tensor] = None,
            nonmember_reference_mask: Optional[Tensor] = None):
        self.sigma = None
        if self.global_variance:  # pooled over the known records, members and non-members together
            mask = torch.cat([torch.ones(r.shape[:2], dtype=torch.bool) if m is None else m.bool()
                              for r, m in ((member_reference, member_reference_mask),
                                           (nonmember_reference, nonmember_reference_mask))], 1)
            keep = mask.any(0)  # a known record that trained every shadow has no OUT samples
            if not bool(keep.any()):
                raise ValueError(f"{self.name}: no known record has a shadow model that did not train on it")
            _, sigma = out_gaussian(self.statistic(torch.cat([member_reference, nonmember_reference], 1)[:, keep],
                                                   torch.cat([member_labels, nonmember_labels])[keep]),
                                    mask[:, keep], global_variance=True, attack=self.name)
            self.sigma = float(sigma[0])
        self.threshold, _ = _best_threshold(
            scores_with_out(self, member_probs, member_labels, member_reference, member_reference_mask),
            scores_with_out(self, nonmember_probs, nonmember_labels, nonmember_reference, nonmember_reference_mask))
        return self


def scores_with_out(attack, probs: Tensor, labels: Tensor, reference: Tensor, mask: Optional[Tensor]) -> np.ndarray:
    """``attack.score`` on the records with at least one shadow model that did not train on them: a known
    record that trained every shadow has no OUT distribution, so it cannot inform a threshold."""
    keep = torch.ones(len(labels), dtype=torch.bool) if mask is None else mask.bool().any(0)
    return attack.score(probs[keep], labels[keep], reference=reference[:, keep],
                        reference_mask=None if mask is None else mask[:, keep])


class LiRAOffline(ReferenceGaussian):
    """Offline LiRA: score = Phi((phi_target - mu_out) / sigma_out) per record (higher = member), phi the
    logit-scaled confidence (`scaled_confidence`); references, masks, variance and ``fit`` as
    `ReferenceGaussian` says.

    >>> g = torch.Generator().manual_seed(0)
    >>> ref = torch.softmax(torch.randn(8, 2, 3, generator=g), -1)     # 8 shadows, 2 records
    >>> target = torch.tensor([[0.98, 0.01, 0.01], [0.30, 0.40, 0.30]])
    >>> s = LiRAOffline().score(target, torch.tensor([0, 0]), reference=ref)
    >>> bool(s[0] > 0.9), bool(s[1] < s[0])
    (True, True)
    """

    def score(self, probs: Tensor, labels: Tensor, *, reference: Tensor,
              reference_mask: Optional[Tensor] = None) -> np.ndarray:
        mu, sigma = self.out_stats(labels, reference, reference_mask)
        z = (scaled_confidence(probs, labels) - mu) / sigma
        return torch.special.ndtr(z).numpy()
