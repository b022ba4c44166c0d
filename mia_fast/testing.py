"""Helpers for tests and benchmarks: the devices to test on, and random MIMs and inputs."""
from __future__ import annotations

from typing import List, Tuple

import torch

from .ops import has_cuda_kernels
from .ops.reference import aeppt_loop, folded_logit

Tensor = torch.Tensor


def devices() -> List[str]:
    """'cpu', plus 'cuda' when a GPU and the CUDA kernels are there."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() and has_cuda_kernels() else [])


def random_folded_weights(classes: int, generator: torch.Generator, *, hidden: int = 256,
                          connection_hidden: int = 64) -> Tuple[Tensor, ...]:
    """Weights of a random label-folded MIM, scaled like a default-initialised one."""
    g = generator
    return (torch.randn(hidden, classes, generator=g) / classes ** 0.5, torch.randn(hidden, generator=g) * 0.1,
            torch.randn(connection_hidden, hidden, generator=g) / hidden ** 0.5,
            torch.randn(classes, connection_hidden, generator=g) * 0.3,
            torch.randn(connection_hidden, generator=g) / connection_hidden ** 0.5, torch.randn(1, generator=g) * 0.1)


def random_probs(batch: int, classes: int, generator: torch.Generator, *, sharpness: float = 3.0) -> Tensor:
    """Softmax vectors of random logits; larger ``sharpness`` gives more confident predictions."""
    return torch.softmax(torch.randn(batch, classes, generator=generator) * sharpness, 1)


def aeppt_case(classes: int, batch: int, iters: int, seed: int, *, eps: float = 1e-3):
    """A seeded AEPPT problem: (probs [B, C], folded weights, steps [T, B] = eps * U(0, 1))."""
    g = torch.Generator().manual_seed(seed)
    weights = random_folded_weights(classes, g)
    probs = random_probs(batch, classes, g)
    steps = torch.rand(iters, batch, generator=g) * eps
    return probs, weights, steps


def membership_records(n: int, seed: int, *, classes: int = 10, member_sharpness: float = 4.0,
                       nonmember_sharpness: float = 1.5):
    """Synthetic (member probs, labels, non-member probs, labels): members are predicted more confidently,
    as by an overfit target. Labels are the argmax."""
    g = torch.Generator().manual_seed(seed)
    members = random_probs(n, classes, g, sharpness=member_sharpness)
    nonmembers = random_probs(n, classes, g, sharpness=nonmember_sharpness)
    return members, members.argmax(1), nonmembers, nonmembers.argmax(1)


def path_ties(probs: Tensor, weights, steps: Tensor, options=(False, False, False), *, rel: float = 1e-6) -> Tensor:
    """Samples whose reference path passes a float32 tie [B] (bool): at some iteration a ReLU
    pre-activation, the logit or a component of the input gradient is, in float64, within ``rel`` of 0
    relative to its row (a few float32 ulps), so summation order alone decides a mask or a sign there.
    Two correct float32 implementations may part ways at such a point."""
    w = [t.double() for t in weights]
    labels = probs.argmax(1)
    ties = torch.zeros(probs.shape[0], dtype=torch.bool)

    def near(a: Tensor) -> Tensor:
        return (a.abs() <= rel * a.abs().amax(1, keepdim=True)).any(1)

    def on_step(t: int, adv: Tensor) -> None:
        p = adv.detach().double()
        a1 = p @ w[0].T + w[1]
        a2 = torch.relu(a1) @ w[2].T + w[3][labels]
        z = torch.relu(a2) @ w[4] + w[5]
        g1 = ((a2 > 0).double() * w[4]) @ w[2]
        v = ((a1 > 0).double() * g1) @ w[0]
        ties.logical_or_(near(a1) | near(a2) | near(v) | (z.abs() <= rel * (1 + torch.relu(a2).abs().sum(1))))

    def logit(p: Tensor, lab: Tensor) -> Tensor:
        return folded_logit(p, lab, *weights)

    preserve_label, stop_when_flipped, _ = options
    aeppt_loop(probs, logit, steps, preserve_label=preserve_label, stop_when_flipped=stop_when_flipped,
               on_step=on_step)
    return ties
