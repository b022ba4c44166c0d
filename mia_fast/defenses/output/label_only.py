"""Label only: serve the predicted label and nothing else (the limit of every output defense; Choquette-Choo
et al., "Label-Only Membership Inference Attacks", ICML 2021, show what still leaks)."""
from __future__ import annotations

import torch

from ..base import OutputDefense, register_defense


@register_defense
class LabelOnly(OutputDefense):
    """One-hot of the argmax. Only label-only attacks (gap, robustness) still have a signal.

    >>> LabelOnly().defend(torch.tensor([[0.2, 0.7, 0.1]])).defended.tolist()
    [[0.0, 1.0, 0.0]]
    """

    name = "label-only"
    description = "one-hot of the predicted label"
    keeps_label = True

    def __init__(self):
        pass

    def _defend(self, probs, generator):
        return torch.nn.functional.one_hot(probs.argmax(1), probs.shape[1]).to(probs.dtype)
