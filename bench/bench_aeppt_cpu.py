"""Fused CPU AEPPT op vs the plain PyTorch eager loop with autograd, side by side (pytest-benchmark).

    pytest bench/bench_aeppt_cpu.py --benchmark-enable --benchmark-columns=min,median,max,rounds

B = 4096, C = 100, T = 100, eps = 9e-4 (the paper's CIFAR-100 value), default-initialised substitute MIM.
Correctness is checked before timing.
"""
import pytest
import torch

from mia_fast import ops
from mia_fast.models import SubstituteMIM
from mia_fast.ops.reference import aeppt_loop
from mia_fast.testing import random_probs

B, C, T, EPS = 4096, 100, 100, 9e-4


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    mim = SubstituteMIM(C).requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    probs = random_probs(B, C, g)
    steps = torch.rand(T, B, generator=g) * EPS
    fused = ops.aeppt(probs, *mim.fold().weights(), steps)
    eager = aeppt_loop(probs, mim.logit, steps)
    assert float(((fused[0] - eager[0]).abs() <= 1e-5).float().mean()) >= 0.995
    return mim, probs, steps


@pytest.mark.benchmark(group="aeppt-cpu-B4096-C100-T100")
def test_eager_autograd_loop(benchmark, problem):
    mim, probs, steps = problem
    benchmark.pedantic(aeppt_loop, args=(probs, mim.logit, steps), rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="aeppt-cpu-B4096-C100-T100")
def test_fused_cpu_op(benchmark, problem):
    mim, probs, steps = problem
    weights = mim.fold().weights()
    benchmark.pedantic(ops.aeppt, args=(probs, *weights, steps), rounds=5, warmup_rounds=1)
