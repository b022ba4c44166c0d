"""Input perturbation's cost, side by side in one run: the fused selection op against its plain-PyTorch
reference, and `mia-fast protect-data` (Algorithm 1 with its defaults) per generator on Fashion-MNIST
(Debian's dataset-fashion-mnist; 2,500 records, 5 simulator models of the small CNN, 25 epochs) or, with
``--dataset digits``, on the embedded digits.

    python bench/bench_input_perturbation.py [--dataset fashion-mnist] [--generators fgsm,advgan,optmargin]
                                             [--param advgan=epochs=2] [--out bench/input_perturbation.json]
                                             [--keep DIR]

Prints the selection timings, then per generator: total seconds, the initial simulator fit, seconds per
round, records perturbed / kept original, mean distance, and the evaluator's accuracy before and after.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch

from mia_fast import ops
from mia_fast.defenses import create_defense
from mia_fast.ops.reference import select_within_distance_reference
from mia_fast.pipeline import Config, stage_protect


def _best_of(fn, repeats=5) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def bench_selection() -> list:
    rows = []
    for n, k, d in [(2500, 9, 784), (5000, 9, 3072), (50000, 9, 64)]:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(n, d, generator=g)
        cand = (x[:, None] + 0.05 * torch.randn(n, k, d, generator=g)).clamp(0, 1)
        losses, valid = torch.rand(n, k, generator=g), torch.rand(n, k, generator=g) > 0.2
        eps = float(((cand - x[:, None]) ** 2).sum(-1).median())
        fused = _best_of(lambda: ops.select_within_distance(x, cand, losses, eps, valid, True))
        ref = _best_of(lambda: select_within_distance_reference(x, cand, losses, eps, valid, True))
        rows.append({"n": n, "k": k, "d": d, "fused_s": fused, "reference_s": ref, "speedup": ref / fused})
        print(f"select_within_distance N={n} K={k} D={d}: fused {1e3 * fused:.1f} ms, reference {1e3 * ref:.1f} ms "
              f"({ref / fused:.1f}x)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--generators", default="fgsm,advgan,optmargin")
    parser.add_argument("--param", action="append", default=[], metavar="GENERATOR=KEY=VALUE",
                        help="a generator hyperparameter, e.g. advgan=epochs=2 (repeat)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--keep", default=None, metavar="DIR", help="keep each run's upload, report and figure in "
                        "DIR/GENERATOR (default: a temporary directory)")
    args = parser.parse_args()
    generator_params: dict = {}
    for item in args.param:
        name, _, pair = item.partition("=")
        generator_params.setdefault(name, []).append(pair)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    selection = bench_selection()
    runs = []
    cfg = Config(dataset=args.dataset)
    for name in args.generators.split(","):
        defense = create_defense("input-perturbation", generator=name,
                                 generator_params=" ".join(generator_params.get(name, [])))
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(args.keep) / name if args.keep else Path(scratch)
            started = time.perf_counter()
            summary = stage_protect(out, cfg, defense, log=lambda m: print(m, flush=True), progress=False)
            seconds = time.perf_counter() - started
        rounds = summary["rounds"]
        row = {"generator": name, "generator_params": defense.generator_params, "seconds": seconds,
               "rounds": len(rounds), "round_seconds": [r["seconds"] for r in rounds],
               "simulator_fit_seconds": seconds - sum(r["seconds"] for r in rounds),
               "perturbed": summary["perturbed"], "fallbacks": summary["fallbacks"],
               "mean_distance": summary["mean_distance"], "evaluator_before": summary["before"]["accuracy"],
               "evaluator_after": summary["after"]["accuracy"]}
        runs.append(row)
        print(f"{name} {defense.generator_params}: {seconds:.0f} s ({row['simulator_fit_seconds']:.0f} s before the "
              f"rounds, rounds {', '.join(f'{s:.0f}' for s in row['round_seconds'])} s); {row['perturbed']} perturbed, "
              f"{row['fallbacks']} kept original, mean distance {row['mean_distance']:.3g}; evaluator "
              f"{row['evaluator_before']:.3f} -> {row['evaluator_after']:.3f}", flush=True)
    result = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": platform.platform(), "dataset": args.dataset, "selection": selection, "protect_data": runs,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
