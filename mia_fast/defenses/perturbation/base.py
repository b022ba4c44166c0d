"""What every perturbation generator of the input-perturbation framework offers (Bai et al. 2021,
sec. 5.1), and the distance it is held to.

A generator proposes K perturbed copies of each record it is given: ``propose(x, y, k) -> [N, K, ...]``,
always inside the data range. ``strength`` in (0, 1] is the floor of the perturbation's size as a
fraction of the eps radius (sqrt(eps) for squared L2, eps for L2): the framework's feedback raises it
when the simulated leakage is too high. Loss-minimising selection alone would drive the perturbation to
zero (the least-perturbed copy has the lowest loss), so this floor is where the privacy comes from.
``fit(simulator, evaluator, x, y)`` lets a generator learn against the simulator and the evaluator
(AdvGAN trains its networks there; FGSM and OPTMARGIN work from the simulator per call).
"""
from __future__ import annotations

import math
from typing import ClassVar, Dict, Type

import torch

from ..base import hyperparameters, param_type, register_in

Tensor = torch.Tensor

#: Distances of the eps threshold: squared L2 (the only unit in which the paper's thresholds, 50-200 on
#: MNIST's 784 pixels in [0, 1] and 23 on CIFAR-10, are reachable) and L2.
DISTANCES = ("squared-l2", "l2")


def check_distance(distance: str) -> None:
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")


def radius(eps: float, distance: str) -> float:
    """The L2 radius of the eps ball: sqrt(eps) for squared L2, eps for L2."""
    check_distance(distance)
    return math.sqrt(eps) if distance == "squared-l2" else float(eps)


class Generator:
    """Base class: ``name`` (the registry's), keyword-only hyperparameters, ``strength`` set by the
    feedback, ``eps`` / ``distance`` / ``data_range`` set by the framework before ``fit``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(self):
        self.strength = 0.25
        self.eps, self.distance, self.data_range = 1.0, "squared-l2", (0.0, 1.0)

    def configure(self, *, eps: float, distance: str, data_range=(0.0, 1.0), strength: float = 0.25) -> "Generator":
        check_distance(distance)
        self.eps, self.distance, self.data_range, self.strength = float(eps), distance, tuple(data_range), strength
        return self

    @property
    def radius(self) -> float:
        """The L2 radius of the eps ball."""
        return radius(self.eps, self.distance)

    def clip(self, x: Tensor) -> Tensor:
        return x.clamp(*self.data_range)

    def fit(self, simulator, evaluator, x: Tensor, y: Tensor, *, seed: int = 0, progress: bool = False) -> "Generator":
        """Learn against the simulator and the evaluator; nothing by default."""
        return self

    def propose(self, simulator, x: Tensor, y: Tensor, k: int, *, generator: torch.Generator) -> Tensor:
        """K perturbed copies of each record: [N, K, *x.shape[1:]], inside the data range."""
        raise NotImplementedError

    def params(self) -> dict:
        return {k: getattr(self, k) for k in hyperparameters(type(self))}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"


GENERATORS: Dict[str, Type[Generator]] = {}


def register_generator(cls: Type[Generator]) -> Type[Generator]:
    """Class decorator: make ``cls`` creatable by its ``name``."""
    return register_in(GENERATORS, cls, "generator")


def parse_generator_params(name: str, text: str) -> dict:
    """Typed hyperparameters of generator ``name`` from "key=value key=value" (space-separated).

    >>> parse_generator_params("advgan", "epochs=2 lr=0.01")
    {'epochs': 2, 'lr': 0.01}
    >>> parse_generator_params("fgsm", "steps=2")
    Traceback (most recent call last):
    ...
    ValueError: generator fgsm: unknown hyperparameter 'steps'; it takes: spread
    """
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; known: {', '.join(GENERATORS)}")
    cls = GENERATORS[name]
    known = hyperparameters(cls)
    out = {}
    for pair in text.split():
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"generator {name}: expected key=value, got {pair!r}")
        if key not in known:
            raise ValueError(f"generator {name}: unknown hyperparameter {key!r}; it takes: {', '.join(known)}")
        kind = param_type(cls, key)
        try:
            out[key] = kind(value)
        except ValueError:
            raise ValueError(f"generator {name}: {key} expects {kind.__name__}, got {value!r}") from None
    return out


def create_generator(name: str, **params) -> Generator:
    """A new generator ``name`` (one-line ValueError for an unknown name).

    >>> create_generator("fgsm")
    FGSM(spread=1.0)
    >>> create_generator("pgd")
    Traceback (most recent call last):
    ...
    ValueError: unknown generator 'pgd'; known: advgan, fgsm, optmargin
    """
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; known: {', '.join(GENERATORS)}")
    return GENERATORS[name](**params)
