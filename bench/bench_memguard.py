"""MemGuard's phase I batched over samples (mia-fast's `memguard_noise`, one loop with per-sample masks)
vs a per-sample loop with the original implementation's structure (Jia et al.'s code searches the noise
for one query at a time), side by side (pytest-benchmark).

    pytest bench/bench_memguard.py --benchmark-enable --benchmark-columns=min,median,max,rounds

B = 256 answers, C = 30 (Location-30), a defense classifier trained for 30 epochs on synthetic member
and non-member outputs; default search settings (300 steps of 0.1, c2 = 10, c3 = 0.1 -> 1 -> 10).
Correctness first: the batched search finds noise for the same samples as the per-sample loop, and the
same answers up to float rounding (batched and one-row products sum in different orders; over up to 900
normalised steps a sample may cross 0.5 one step earlier or later): at least 98% of values within 1e-5,
none off by more than 0.05 (one step).
"""
import pytest
import torch

from mia_fast.defenses import MemGuard
from mia_fast.defenses.output.memguard import memguard_noise
from mia_fast.testing import membership_records

B, C = 256, 30


@pytest.fixture(scope="module")
def problem():
    m, ml, n, nl = membership_records(1000, 0, classes=C)
    defense = MemGuard(classifier_epochs=30).fit(m, ml, n, nl)
    probs = torch.cat([m[: B // 2], n[: B // 2]])
    args = dict(iters=defense.iters, step=defense.step, c2=defense.c2, c3_init=defense.c3_init, rounds=defense.rounds)
    batched, found = memguard_noise(probs, defense.classifier, **args)
    looped, looped_found = per_sample(probs, defense.classifier, args)
    diff = (batched - looped).abs()
    assert torch.equal(found, looped_found) and float((diff <= 1e-5).float().mean()) >= 0.98
    assert float(diff.max()) <= 0.05
    return defense, probs, args


def per_sample(probs, classifier, args):
    answers = [memguard_noise(probs[i:i + 1], classifier, **args) for i in range(len(probs))]
    return torch.cat([a for a, _ in answers]), torch.cat([f for _, f in answers])


@pytest.mark.benchmark(group="memguard-phase1-B256-C30")
def test_per_sample_loop(benchmark, problem):
    defense, probs, args = problem
    benchmark.pedantic(per_sample, args=(probs, defense.classifier, args), rounds=3, warmup_rounds=0)


@pytest.mark.benchmark(group="memguard-phase1-B256-C30")
def test_batched(benchmark, problem):
    defense, probs, args = problem
    benchmark.pedantic(memguard_noise, args=(probs, defense.classifier), kwargs=args, rounds=3, warmup_rounds=1)
