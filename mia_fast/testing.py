"""Helpers for tests and benchmarks: the devices to test on, and random MIMs and inputs."""
from __future__ import annotations

from typing import List, Tuple

import torch

from .ops import has_cuda_kernels

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
