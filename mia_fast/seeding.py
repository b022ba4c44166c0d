"""Named random streams: the random draws of the pipeline, the defenses' fitting and the evaluation come
from generators derived from (seed, purpose, index), never from ``seed + 17``. Two purposes, or two
indices of one purpose, never share a stream, so adding a draw somewhere cannot silently reuse another
one's numbers. (The run's splits draw from the run seed itself.)

>>> a = stream(0, "averaging-known", 3)
>>> b = stream(0, "averaging-scored", 3)
>>> bool(torch.rand(4, generator=a).ne(torch.rand(4, generator=b)).all())
True
>>> stream_seed(0, "target") == stream_seed(0, "target")
True
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

#: Every purpose a stream is drawn for, and what it randomises. `stream` refuses other names, so a
#: typo cannot create a stream that collides by accident and the test can check them all.
PURPOSES = {
    "target": "the target model's initialisation and batch order",
    "substitute": "the defender's substitute MIM (AEPPT; index: the refit round)",
    "substitute-refit": "AEPPT's steps on the defender's own outputs while it refits its substitute (2 round + side)",
    "adversary-mim0": "the paper's adversary MIM0 in the demo pipeline",
    "defense-fit": "fitting a deployed output defense on the defender's data",
    "deployed-defense": "the deployed defense's randomness on served outputs (index: which set)",
    "shadow-subsets": "which pool records train each shadow model",
    "shadow-model": "shadow model k's initialisation and batch order (index: k)",
    "attack": "initialisation and batch order of the battery's learned attacks",
    "attacker-defense-fit": "the aware attacker's own copy of the defense, fitted on its shadow data",
    "attacker-defense": "the aware attacker's own copy of the defense on its outputs (index: which set)",
    "noisy-copies": "the robustness attack's noisy queries (index: which set)",
    "noisy-queries-defended": "the deployed defense on the robustness attack's queries (index: which set)",
    "ood-corruption": "MIM3's corrupted copies of known non-members",
    "ood-defended": "the deployed defense on MIM3's corrupted copies",
    "adaptive-fit": "the adversarial-training attack's own defense copy, fitted on known records",
    "adaptive-defense": "that copy on the known records (index: members 0, non-members 1)",
    "averaging-known": "repeated queries of known records (index: 2 * query + side)",
    "averaging-scored": "repeated queries of scored records (index: 2 * query + side)",
    "sweep": "the step-size sweep (index: 4 * sweep point + which set)",
    "loss-curve": "the steps of the Fig. 5 loss curve",
    "hamp-inputs": "HAMP's random inputs",
    "memguard-classifier": "MemGuard's defense classifier",
    "query-key": "the key of a keyed defense's per-query randomness, made when it is fitted",
    "training-defense": "the defender's reference records for training defenses that use some",
    "shadow-reference": "which pool records a shadow model's training defense holds as reference data (index: k)",
    "advreg-inference": "adversarial regularization's inference model (0: initialisation, 1: its batches)",
    "dp-sgd": "DP-SGD's batch sampling (0) and noise (1)",
    "boundary-directions": "the boundary attack's random flip orders / directions (index: which set)",
    "boundary-defended": "the deployed defense on the boundary attack's queries (index: 2 * query + known)",
    "training-randomness": "randomness inside a model while it trains (dropout masks), seeded from its seed",
    "serving": "the served defense's randomness on batch k of `mia-fast serve` (index: k)",
    "defend": "the defense's randomness on batch k of a defended file, `mia-fast defend --seed S` (index: k)",
    "perturbation-subset": "which records input perturbation perturbs (alpha of them)",
    "simulator-model": "input perturbation's simulator model i (index: i, or 1000 * refit + i for its batches)",
    "perturbation-evaluator": "the leakage evaluator's halves and batches (2 * round) and initialisation (2 * round + 1)",
    "perturbation-generator": "a learned perturbation generator's initialisation (0) and batch order (1)",
    "perturbation-candidates": "a generator's random draws in round r (index: r)",
}


def stream_seed(seed: int, purpose: str, index: int = 0) -> int:
    """A 63-bit seed for (seed, purpose, index), from sha256: distinct inputs give unrelated seeds."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown random-stream purpose {purpose!r}; add it to mia_fast.seeding.PURPOSES")
    if index < 0:
        raise ValueError(f"stream index must be >= 0, got {index}")
    digest = hashlib.sha256(f"mia-fast/{int(seed)}/{purpose}/{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def stream(seed: int, purpose: str, index: int = 0) -> torch.Generator:
    """A CPU torch.Generator for (seed, purpose, index); CPU so that any device gets the same numbers."""
    return torch.Generator().manual_seed(stream_seed(seed, purpose, index))


def numpy_stream(seed: int, purpose: str, index: int = 0) -> np.random.Generator:
    """A numpy Generator for (seed, purpose, index)."""
    return np.random.default_rng(stream_seed(seed, purpose, index))
