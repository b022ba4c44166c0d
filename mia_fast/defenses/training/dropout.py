"""Dropout (Salem et al., "ML-Leaks: Model and Data Independent Membership Inference Attacks and Defenses
on Machine Learning Models", NDSS 2019, sec. VII-A): random units of the hidden layers are zeroed while
training, which reduces overfitting and with it the membership signal."""
from __future__ import annotations

import torch  # noqa: F401  (the doctests use it)
from torch import nn

from ...training.target import train_target
from ..base import TrainingDefense, register_defense


@register_defense
class Dropout(TrainingDefense):
    """Dropout with probability ``p`` after every hidden activation of the target (active in train mode
    only; served outputs come from the full network).

    >>> from mia_fast.models import TabularMLP
    >>> Dropout(p=0.5).architecture({"in_features": 4, "num_classes": 2})
    {'in_features': 4, 'num_classes': 2, 'dropout': 0.5}
    >>> sum(isinstance(m, torch.nn.Dropout) for m in TabularMLP(4, 2, dropout=0.5).modules())
    3
    """

    name = "dropout"
    description = "dropout in the target's hidden layers (Salem et al. 2019)"

    def __init__(self, *, p: float = 0.5):
        if not 0 < p < 1:
            raise ValueError(f"dropout: p must be in (0, 1), got {p!r}")
        self.p = p

    def architecture(self, kwargs: dict) -> dict:
        return {**kwargs, "dropout": self.p}

    def _train(self, model, x, y, *, epochs, lr, seed, device, progress, reference) -> dict:
        rates = {m.p for m in model.modules() if isinstance(m, nn.Dropout)}
        if rates != {self.p}:
            raise ValueError(f"dropout: the model's dropout rates are {sorted(rates) or 'none'}, not {self.p}; build "
                             "it from defense.architecture(...)")
        return train_target(model, x, y, epochs=epochs, lr=lr, seed=seed, device=device, progress=progress,
                            desc="target (dropout)")
