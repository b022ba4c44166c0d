"""The exported defended model (AOTInductor package) against the library's eager path, side by side in
one run: compile time, and rows/s of features -> target -> softmax -> defense at a few batch sizes, for
no defense, rounding, AEPPT (the package's unrolled aten loop vs the fused kernel) and MemGuard (the
package's while_loop vs the library's autograd search). The answers of each pair are compared (max
absolute difference).

    python bench/bench_export.py --run runs/location30 [--rows 8192] [--defenses none,memguard] [--out F.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from mia_fast.pipeline import RunDir, load_run_dataset
from mia_fast.serving import Service
from mia_fast.serving.export import DefendedModel, export_defended

SETTINGS = [(None, {}), ("rounding", {"decimals": 2}), ("aeppt", {}), ("memguard", {})]
BATCHES = (64, 1024, 8192)


def rows_per_second(fn, inputs, batch: int, repeats: int = 3) -> float:
    """Best of ``repeats`` passes over ``inputs`` in batches of ``batch`` rows."""
    n, best = len(inputs[0]), float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for start in range(0, n - batch + 1, batch):
            fn(*(t[start:start + batch] for t in inputs))
        best = min(best, time.perf_counter() - started)
    return (n // batch) * batch / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--defenses", default=",".join(name or "none" for name, _ in SETTINGS),
                        help="comma-separated, from: %(default)s")
    parser.add_argument("--repeats", type=int, default=3, help="passes per measurement (the best counts)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    chosen = args.defenses.split(",")
    run = RunDir(args.run)
    ds = load_run_dataset(run.config().resolved())
    x = torch.from_numpy(ds.x[:args.rows]).float()
    x = x.repeat((args.rows + len(x) - 1) // len(x), *[1] * (x.dim() - 1))[:args.rows]
    rows = []
    print(f"{'defense':10s}{'compile s':>10s}" + "".join(f"{'eager ' + str(b):>12s}{'package ' + str(b):>14s}"
                                                       for b in BATCHES) + "  max |diff|   (rows/s)")
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for name, params in [(n, p) for n, p in SETTINGS if (n or "none") in chosen]:
            service = Service.from_run(args.run, name, params, log=lambda m: None)
            model = DefendedModel(service.target, service.defense).eval()
            inputs = (x,)
            if service.defense is not None and service.defense.randomized:
                inputs = (x, torch.rand(len(x), service.defense.uniforms_per_answer,
                                        generator=torch.Generator().manual_seed(0)))
            started = time.perf_counter()
            path = export_defended(service.target, service.defense, x[:2], Path(tmp) / f"{name}.pt2")
            compile_s = time.perf_counter() - started
            package = torch._inductor.aoti_load_package(str(path))
            diff = float((package(*inputs) - model(*inputs)).abs().max())
            speeds = {b: (rows_per_second(model, inputs, b, args.repeats), rows_per_second(package, inputs, b, args.repeats))
                      for b in BATCHES}
            rows.append({"defense": name or "none", "params": params, "compile_seconds": compile_s,
                         "max_abs_difference": diff,
                         "rows_per_second": {str(b): {"eager": e, "package": p} for b, (e, p) in speeds.items()}})
            print(f"{name or 'none':10s}{compile_s:10.1f}" + "".join(f"{e:12,.0f}{p:14,.0f}" for e, p in speeds.values())
                  + f"  {diff:.2g}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                              "cpus": os.cpu_count(), "torch": torch.__version__,
                                              "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
                                              "run": args.run, "rows": args.rows, "repeats": args.repeats,
                                              "results": rows}, indent=2))


if __name__ == "__main__":
    main()
