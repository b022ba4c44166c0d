"""Neural-network attacks: the paper's MIM0, MIM1 and MIM2 (Xue et al., sec. 5.2, Table 6)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..models.attack import AttackMIM
from ..training.substitute import train_substitute
from .base import Attack


class FullyConnectedMIM(nn.Module):
    """MIM1: one fully connected network [C + C, 1024, 512, 256, 1] on the prediction and one-hot label."""

    def __init__(self, num_classes: int, hidden=(1024, 512, 256)):
        super().__init__()
        self.num_classes = num_classes
        widths, layers = [2 * num_classes, *hidden], []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(widths[-1], 1))

    def logit(self, probs, labels):
        onehot = nn.functional.one_hot(labels, self.num_classes).to(probs.dtype)
        return self.net(torch.cat([probs, onehot], 1)).squeeze(1)

    def forward(self, probs, labels):
        return torch.sigmoid(self.logit(probs, labels))


class NNAttack(Attack):
    """A membership model trained on the attacker's known records (BCE, Adam lr 1e-3, as the paper).

    kind: "mim0" (three-branch, sec. 5.2), "mim1" (fully connected [1024, 512, 256, 1]), or "mim2" (MIM0
    trained with an L2 loss on its sigmoid output). MIM3 is MIM0 fitted on non-members from another
    distribution than the substitute's: that is a choice of data passed to ``fit``, not of model.
    """

    def __init__(self, kind: str = "mim0", *, epochs: int = 100, lr: float = 1e-3, seed: int = 0,
                 device: str = "cpu"):
        if kind not in ("mim0", "mim1", "mim2"):
            raise ValueError(f"kind must be mim0, mim1 or mim2, got {kind!r}")
        self.kind, self.epochs, self.lr, self.seed, self.device = kind, epochs, lr, seed, device
        self._model = None

    def fit(self, member_probs, member_labels, nonmember_probs, nonmember_labels) -> "NNAttack":
        c = member_probs.shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = FullyConnectedMIM(c) if self.kind == "mim1" else AttackMIM.mim0(c)
        self._model, _ = train_substitute(member_probs, member_labels, nonmember_probs, nonmember_labels,
                                          epochs=self.epochs, lr=self.lr, seed=self.seed, device=self.device,
                                          progress=False, model=model, desc=self.kind,
                                          loss="l2" if self.kind == "mim2" else "bce")
        return self

    @torch.no_grad()
    def score(self, probs, labels) -> np.ndarray:
        if self._model is None:
            raise RuntimeError(f"{self!r} is not fitted: call fit() first")
        return self._model(probs.float(), labels.long()).numpy()
