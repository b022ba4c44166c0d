"""Top-k confidences (Shokri et al., "Membership Inference Attacks against Machine Learning Models",
S&P 2017, sec. VIII: restrict the prediction vector to the top k classes)."""
from __future__ import annotations

import torch

from ..base import OutputDefense, register_defense


@register_defense
class TopK(OutputDefense):
    """Keep the ``k`` largest confidences, zero the rest, and (``renormalize``) rescale them to sum to 1.
    The label and the order of the kept classes stay. Deterministic; needs no fitting.

    >>> TopK(k=2).defend(torch.tensor([[0.5, 0.1, 0.3, 0.1]])).defended.tolist()
    [[0.625, 0.0, 0.375, 0.0]]
    """

    name = "topk"
    description = "the k largest confidences, renormalised (Shokri et al.)"
    keeps_label = True

    def __init__(self, *, k: int = 3, renormalize: bool = True):
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"topk: k must be an integer >= 1, got {k!r}")
        self.k, self.renormalize = k, bool(renormalize)

    def _defend(self, probs, generator):
        k = min(self.k, probs.shape[1])
        top = probs.topk(k, dim=1)
        out = torch.zeros_like(probs).scatter_(1, top.indices, top.values)
        return out / out.sum(1, keepdim=True).clamp_min(1e-30) if self.renormalize else out
