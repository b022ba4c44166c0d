"""Rounding the served confidences (Xue et al., AEPPT sec. 5.9, compare with r = 0.01 and 0.001)."""
from __future__ import annotations

import torch

from ..base import OutputDefense, register_defense


@register_defense
class Rounding(OutputDefense):
    """Round every confidence to ``decimals`` places (r = 10^-decimals: 2 -> 0.01, 3 -> 0.001).

    A tie at the top (e.g. 0.501 and 0.499 both rounded to 0.5) can change the argmax; such flips are
    counted in the result's ``label_changed``. Deterministic; needs no fitting.

    >>> Rounding(decimals=2).defend(torch.tensor([[0.8349, 0.1651]])).defended.tolist()
    [[0.8299999833106995, 0.17000000178813934]]
    """

    name = "rounding"
    description = "confidences rounded to a number of decimals"

    def __init__(self, *, decimals: int = 2):
        if not isinstance(decimals, int) or decimals < 0:
            raise ValueError(f"rounding: decimals must be an integer >= 0, got {decimals!r}")
        self.decimals = decimals

    def _defend(self, probs, generator):
        return torch.round(probs, decimals=self.decimals)
