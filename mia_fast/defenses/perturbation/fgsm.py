"""FGSM (Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015),
as Bai et al. use it (eqs. 7-8): x_adv = clip(x + s * sign(grad_x J(f; x, y)), data range)."""
from __future__ import annotations

import math

import torch

from .base import Generator, register_generator


@register_generator
class FGSM(Generator):
    """K candidates per record, one per step s_k on an even grid whose unclipped L2 size s_k * sqrt(D)
    runs from the feedback floor, strength * R, to min(1, strength * (1 + ``spread``)) * R (R: the eps
    radius, D: the record's dimensions). The gradient is of the
    cross-entropy against the true label averaged over the simulator's models, taken once per record.
    Clipping to the data range can only shrink a candidate's distance."""

    name = "fgsm"
    description = "fast gradient sign method (Goodfellow et al. 2015)"

    def __init__(self, *, spread: float = 1.0):
        super().__init__()
        if spread < 0:
            raise ValueError(f"fgsm: spread must be >= 0, got {spread!r}")
        self.spread = spread

    def step_sizes(self, dims: int, k: int) -> torch.Tensor:
        """The K per-pixel steps s_k."""
        low = self.strength
        high = min(1.0, self.strength * (1 + self.spread))
        sizes = torch.linspace(low, high, k) if k > 1 else torch.tensor([low])
        return sizes * self.radius / math.sqrt(dims)

    def propose(self, simulator, x, y, k, *, generator):
        direction = simulator.input_gradient(x, y).sign()
        steps = self.step_sizes(x[0].numel(), k).view(1, k, *([1] * (x.dim() - 1)))
        return self.clip(x[:, None] + steps * direction[:, None])
