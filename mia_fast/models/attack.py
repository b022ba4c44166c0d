"""The adversary's membership-inference models (Xue et al., sec. 5.2 and Table 6)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _mlp(widths: Sequence[int], final_relu: bool) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if final_relu or i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class AttackMIM(nn.Module):
    """Nasr-style three-branch MIM: prediction network, label network, connection network -> sigmoid.

    MIM0 (the paper's adversary): prediction [C, 1024, 512, 64], label [C, 512, 64], connection
    [128, 256, 64, 1], ReLU, trained with binary cross-entropy at lr 1e-3 (`AttackMIM.mim0`).

    >>> mim = AttackMIM.mim0(10)
    >>> p = torch.softmax(torch.randn(3, 10), 1)
    >>> mim(p, p.argmax(1)).shape
    torch.Size([3])
    """

    def __init__(self, num_classes: int, *, prediction: Sequence[int], label: Sequence[int],
                 connection: Sequence[int]):
        super().__init__()
        if prediction[-1] + label[-1] != connection[0]:
            raise ValueError(f"connection input {connection[0]} must equal {prediction[-1]} + {label[-1]}")
        self.num_classes = num_classes
        self.layout = {"prediction": list(prediction), "label": list(label), "connection": list(connection)}
        self.prediction = _mlp([num_classes, *prediction], final_relu=True)
        self.label = _mlp([num_classes, *label], final_relu=True)
        self.connection = _mlp(list(connection) + [1], final_relu=False)

    @classmethod
    def mim0(cls, num_classes: int) -> "AttackMIM":
        return cls(num_classes, prediction=[1024, 512, 64], label=[512, 64], connection=[128, 256, 64])

    def architecture(self) -> dict:
        return {"num_classes": self.num_classes, **self.layout}

    def logit(self, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        onehot = nn.functional.one_hot(labels, self.num_classes).to(probs.dtype)
        return self.connection(torch.cat([self.prediction(probs), self.label(onehot)], 1)).squeeze(1)

    def forward(self, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit(probs, labels))
