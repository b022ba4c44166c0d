"""The rank template's op (`place_in_rank_order`) against its plain-PyTorch reference (stable argsort +
scatter) and against AEPPT's fused op on the same answers, side by side; and what a key costs AEPPT
(the keyed hash of every query, then SplitMix64 for its T steps).

    python bench/bench_rank_order.py [--json bench/rank_order_DATE.json] [--device cuda]

On CUDA only the op and its reference are timed (the device is synchronised inside each timing).

Correctness first: the op equals the reference bit for bit on the timed inputs. Minimum of 5 rounds,
methods interleaved round by round.
"""
import argparse
import json
import platform
import time

import torch

from mia_fast import ops
from mia_fast.defenses.keyed import keyed_uniform, new_key
from mia_fast.defenses.output.aeppt import aeppt, draw_steps
from mia_fast.models.substitute import SubstituteMIM
from mia_fast.ops.reference import place_in_rank_order_reference
from mia_fast.testing import random_probs


def interleaved(methods, rounds, batch, classes, device="cpu"):
    """One row per method: the minimum over ``rounds`` rounds, the methods run in turn within a round."""
    times = {name: float("inf") for name in methods}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(rounds):
        for name, fn in methods.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[name] = min(times[name], time.perf_counter() - t)
    return [{"B": batch, "C": classes, "method": name, "min_s": t, "rows_per_s": batch / t} for name, t in times.items()]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    rows = []
    for batch, classes in [(65536, 30), (65536, 100), (4096, 1000)]:
        g = torch.Generator().manual_seed(classes)
        probs = random_probs(batch, classes, g).contiguous()
        values = probs.median(0).values.sort(descending=True).values.expand(batch, -1).contiguous()
        probs, values = probs.to(args.device), values.to(args.device)
        assert torch.equal(ops.place_in_rank_order(probs, values), place_in_rank_order_reference(probs, values))
        methods = {f"place_in_rank_order (fused {args.device.upper()} op)": lambda: ops.place_in_rank_order(probs, values),
                   "argsort + scatter (reference)": lambda: place_in_rank_order_reference(probs, values)}
        rows += interleaved(methods, args.rounds, batch, classes, args.device)
    if args.device == "cuda":
        return finish(rows, args)
    # AEPPT on the same kind of answers (C = 30, the run's T = 100), unkeyed and keyed
    batch, classes, iters = 16384, 30, 100
    probs = random_probs(batch, classes, torch.Generator().manual_seed(0)).contiguous()
    torch.manual_seed(0)
    mim, key = SubstituteMIM(classes), new_key(0)
    methods = {"AEPPT fused op, T=100 (generator steps)": lambda: aeppt(probs, mim, 2.5e-4, iters,
                                                                    generator=torch.Generator().manual_seed(0)),
               "AEPPT fused op, T=100 (keyed steps)": lambda: aeppt(probs, mim, 2.5e-4, iters, query_key=key),
               "keyed steps alone (hash + SplitMix64)": lambda: keyed_uniform(probs, key, iters),
               "generator steps alone": lambda: draw_steps(iters, batch, 2.5e-4,
                                                           generator=torch.Generator().manual_seed(0))}
    rows += interleaved(methods, args.rounds, batch, classes)
    finish(rows, args)


def finish(rows, args):
    meta = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    for r in rows:
        print(f"B={r['B']:6d} C={r['C']:5d}  {r['method']:42s} {r['min_s']:.4f} s  {r['rows_per_s']:,.0f} rows/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
