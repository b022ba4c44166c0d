"""Target models of the AEPPT experiments (Xue et al., sec. 5.2)."""
from __future__ import annotations

from typing import Sequence

import torch  # noqa: F401  (the doctests use it)
from torch import nn


def _dropout(p: float) -> list:
    """A dropout layer after each hidden activation when ``p`` > 0 (the dropout defense, Salem et al.
    2019); none otherwise, so models without it keep their parameter names."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    return [nn.Dropout(p)] if p > 0 else []


class TabularMLP(nn.Module):
    """Fully connected [F, 1024, 512, 256, C] with Tanh: the paper's Purchase model (also Location, Texas).

    >>> TabularMLP(600, 100)(torch.zeros(2, 600)).shape
    torch.Size([2, 100])
    """

    def __init__(self, in_features: int, num_classes: int, *, hidden: Sequence[int] = (1024, 512, 256),
                 dropout: float = 0.0):
        super().__init__()
        layers, width = [], in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.Tanh(), *_dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(nn.Flatten(), *layers)

    def forward(self, x):
        return self.net(x)


class AlexNet32(nn.Module):
    """AlexNet-style CNN for 32x32 RGB images, the paper's CIFAR-100 target.

    >>> AlexNet32(100)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 100])
    """

    def __init__(self, num_classes: int, in_channels: int = 3, *, dropout: float = 0.0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 192, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(256 * 4 * 4, 1024), nn.ReLU(),
                                        *_dropout(dropout), nn.Linear(1024, 512), nn.ReLU(), *_dropout(dropout),
                                        nn.Linear(512, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class SmallCNN28(nn.Module):
    """Small CNN for 28x28 grey images (MNIST, Fashion-MNIST).

    >>> SmallCNN28(10)(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(self, num_classes: int, in_channels: int = 1, *, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), *_dropout(dropout), nn.Linear(128, num_classes))

    def forward(self, x):
        return self.net(x)


def target_for(kind: str, input_shape: Sequence[int], num_classes: int) -> tuple:
    """(architecture name, kwargs) of the paper's target model for data of this shape."""
    if kind == "image" and tuple(input_shape[-2:]) == (32, 32):
        return "alexnet32", {"num_classes": num_classes, "in_channels": int(input_shape[0])}
    if kind == "image" and tuple(input_shape[-2:]) == (28, 28):
        return "smallcnn28", {"num_classes": num_classes, "in_channels": int(input_shape[0])}
    features = 1
    for s in input_shape:
        features *= int(s)
    return "mlp", {"in_features": features, "num_classes": num_classes}


TARGETS = {"mlp": TabularMLP, "alexnet32": AlexNet32, "smallcnn28": SmallCNN28}
