"""Neural-network attacks: the paper's MIM0, MIM1 and MIM2 (Xue et al., sec. 5.2, Table 6) and Shokri et
al.'s per-class attack models (S&P 2017, sec. V.C)."""
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


class PerClassMLP(nn.Module):
    """Shokri et al.'s attack: one network per class (input: the prediction vector; one hidden layer of 64
    ReLU units; sigmoid output), stored as stacked weights so all classes train in one pass. Each record
    only touches its own class's weights, so this is exactly C independent networks.

    >>> PerClassMLP(3)(torch.softmax(torch.randn(4, 3), 1), torch.tensor([0, 1, 2, 0])).shape
    torch.Size([4])
    """

    def __init__(self, num_classes: int, hidden: int = 64):
        super().__init__()
        self.num_classes = num_classes
        scale1, scale2 = num_classes ** -0.5, hidden ** -0.5
        self.w1 = nn.Parameter(torch.empty(num_classes, num_classes, hidden).uniform_(-scale1, scale1))
        self.b1 = nn.Parameter(torch.empty(num_classes, hidden).uniform_(-scale1, scale1))
        self.w2 = nn.Parameter(torch.empty(num_classes, hidden).uniform_(-scale2, scale2))
        self.b2 = nn.Parameter(torch.empty(num_classes).uniform_(-scale2, scale2))

    def logit(self, probs, labels):
        h = torch.relu(torch.einsum("bi,bih->bh", probs, self.w1[labels]) + self.b1[labels])
        return (h * self.w2[labels]).sum(1) + self.b2[labels]

    def forward(self, probs, labels):
        return torch.sigmoid(self.logit(probs, labels))


KINDS = ("mim0", "mim1", "mim2", "shokri")


class NNAttack(Attack):
    """A membership model trained on the attacker's known records (BCE, Adam lr 1e-3, as the paper).

    kind: "mim0" (three-branch, sec. 5.2), "mim1" (fully connected [1024, 512, 256, 1]), "mim2" (MIM0
    trained with an L2 loss on its sigmoid output), or "shokri" (`PerClassMLP`; fit it on shadow-model
    outputs, see `train_shadow_models`). MIM3 is MIM0 fitted on non-members from another distribution
    than the substitute's: that is a choice of data passed to ``fit``, not of model.
    """

    def __init__(self, kind: str = "mim0", *, epochs: int = 100, lr: float = 1e-3, batch_size: int = 128,
                 seed: int = 0, device: str = "cpu"):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
        self.kind, self.epochs, self.lr, self.batch_size = kind, epochs, lr, batch_size
        self.seed, self.device = seed, device
        self._model = None

    def fit(self, member_probs, member_labels, nonmember_probs, nonmember_labels) -> "NNAttack":
        c = member_probs.shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = {"mim1": FullyConnectedMIM, "shokri": PerClassMLP}.get(self.kind, AttackMIM.mim0)(c)
        self._model, _ = train_substitute(member_probs, member_labels, nonmember_probs, nonmember_labels,
                                          epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, seed=self.seed,
                                          device=self.device,
                                          progress=False, model=model, desc=self.kind,
                                          loss="l2" if self.kind == "mim2" else "bce")
        return self

    @classmethod
    def from_model(cls, model: nn.Module, kind: str = "mim0") -> "NNAttack":
        """An attack around an already trained membership model (e.g. a run's mim0.safetensors)."""
        attack = cls(kind)
        attack._model = model.eval()
        return attack

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            raise RuntimeError(f"{self!r} is not fitted: call fit() first")
        return self._model

    @torch.no_grad()
    def score(self, probs, labels) -> np.ndarray:
        return self.model(probs.float(), labels.long()).numpy()
