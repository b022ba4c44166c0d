"""AEPPT on the CPU (or a GPU), four ways side by side: the eager autograd loop, the label-folded math
in plain PyTorch, the dense fused kernel and the event-driven one, at B = 4096, T = 100, with the event
statistics of each case beside the times.

    python bench/bench_aeppt_events.py [--run runs/location30] [--rounds 5] [--out F.json] [--device cuda]

Cases: (a) the substitute MIM of a Location-30 run (the README's: --run, or trained here into a
temporary directory with the README's configuration) at the run's eps, on the target's outputs for the
first 4,096 Location-30 records; (b) a default-initialised substitute with C = 100 on random softmax
vectors at eps 9e-4 and 2e-5; (c) where nearly every iteration is an event (random substitutes at large
eps), fused kernels only: the event loop hands such blocks to the dense loop after 8 or 16 iterations,
and this measures what that costs. Each output is checked against the reference before anything is timed;
times are the minimum over rounds, with the methods interleaved round by round. With --device cuda (the
CUDA event kernel: dense forward, backward only for samples whose masks changed) case (a) needs the
Location-30 files or --run, and is left out without them.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from mia_fast import ops
from mia_fast.models import SubstituteMIM
from mia_fast.ops.reference import aeppt_event_counts, aeppt_loop, aeppt_reference
from mia_fast.testing import aeppt_case, random_probs

B, T = 4096, 100
LOCATION_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "location"


def location_case(run_dir):
    """(substitute, probs [4096, 30], eps) of a Location-30 run; trains one when run_dir is None."""
    from mia_fast.checkpoint import checkpoint_file, load_model, load_substitute
    from mia_fast.pipeline import Config, RunDir, load_run_dataset, stage_substitute, stage_target
    from mia_fast.training import predict_proba

    if run_dir is None:
        run_dir = tempfile.mkdtemp(prefix="bench_location30_")
        cfg = Config(dataset="location30", data_dir=str(LOCATION_DIR.resolve()))
        run = RunDir(run_dir, create=True)
        stage_target(run, cfg, progress=False)
        stage_substitute(run, cfg, progress=False)
    run = RunDir(run_dir)
    cfg = run.config().resolved()
    mim, _ = load_substitute(checkpoint_file(run.path, "substitute"))
    target, _ = load_model(checkpoint_file(run.path, "target"), "target")
    ds = load_run_dataset(cfg)
    probs = predict_proba(target, ds.x[:B]).float().contiguous()
    return mim.requires_grad_(False), probs, cfg.eps, str(run_dir)


def random_case(eps):
    torch.manual_seed(0)
    mim = SubstituteMIM(100).requires_grad_(False)
    return mim, random_probs(B, 100, torch.Generator().manual_seed(1)), eps


def methods(mim, weights):
    fused = {"fused dense": lambda p, s: ops.aeppt(p, *weights, s, algorithm="dense"),
             "fused events": lambda p, s: ops.aeppt(p, *weights, s, algorithm="events")}
    if mim is None:
        return fused
    return {"eager autograd loop": lambda p, s: aeppt_loop(p, mim.logit, s),
            "label-folded, eager": lambda p, s: aeppt_reference(p, *weights, s), **fused}


def stress_cases():
    """(name, None, probs, eps, folded weights): random substitutes where nearly every step is an event."""
    for classes, batch, eps in [(1000, 512, 1e-2), (100, B, 1e-2), (10, B, 5e-2)]:
        probs, weights, _ = aeppt_case(classes, batch, T, seed=1, eps=eps)
        yield f"(c) random C={classes}, B={batch}", None, probs, eps, weights


def measure(name, mim, probs, eps, rounds, weights=None, device="cpu"):
    weights = weights if weights is not None else mim.fold().weights()
    steps = torch.rand(T, probs.shape[0], generator=torch.Generator().manual_seed(2)) * eps
    probs, steps, weights = probs.to(device), steps.to(device), [w.to(device) for w in weights]
    mim = mim.to(device) if mim is not None else None
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    run = methods(mim, weights)
    reference = aeppt_reference(probs, *weights, steps)[0]
    for method, fn in run.items():
        close = float(((fn(probs, steps)[0] - reference).abs() <= 1e-5).float().mean())
        assert close >= 0.995, f"{name}: {method} is off the reference ({close:.4f} within 1e-5)"
    times = {m: [] for m in run}
    for r in range(rounds):
        for method, fn in run.items():
            if r >= 2 and method.startswith(("eager", "label")):
                continue  # seconds per call: two rounds are enough
            sync()
            started = time.perf_counter()
            fn(probs, steps)
            sync()
            times[method].append(time.perf_counter() - started)
    events = ops.aeppt_with_events(probs, *weights, steps)[3].float().cpu()
    counts = aeppt_event_counts(probs, *weights, steps).float().cpu()
    best = {m: min(t) for m, t in times.items()}
    return {
        "case": name, "classes": probs.shape[1], "eps": eps, "batch": probs.shape[0], "iters": T,
        "seconds": best, "speedup_events_vs_dense": best["fused dense"] / best["fused events"],
        "events_per_sample": {
            "mask_change_iterations": {"mean": float(events[:, 0].mean()), "median": float(events[:, 0].median())},
            "bound_iterations": {"mean": float(events[:, 1].mean()), "median": float(events[:, 1].median())},
            "exact_refreshes": {"mean": float(events[:, 2].mean()), "median": float(events[:, 2].median())},
        },
        "counts_match_reference": float((events[:, :2] == counts).all(1).float().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="A Location-30 run directory (default: train one here).")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=None, help="JSON results (default bench/aeppt_events_DATE.json).")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    cases, run_dir = [], None
    if args.run is not None or LOCATION_DIR.is_dir():
        mim, probs, eps, run_dir = location_case(args.run)
        cases.append(("(a) Location-30 substitute", mim, probs, eps))
    else:
        print(f"(a) left out: no --run and no Location-30 files in {LOCATION_DIR.resolve()}")
    cases += [("(b) random C=100", *random_case(9e-4)), ("(b) random C=100", *random_case(2e-5)), *stress_cases()]
    results = []
    for case in cases:
        name, model, probs, eps, *weights = case
        results.append(measure(name, model, probs, eps, args.rounds, *weights, device=args.device))
        r = results[-1]
        print(f"{r['case']}, eps {r['eps']:g}: " + ", ".join(f"{m} {s * 1e3:.1f} ms" for m, s in r["seconds"].items())
              + f"; events {r['speedup_events_vs_dense']:.2f}x dense", flush=True)
    print("\n| case | eps | eager autograd | label-folded eager | fused dense | fused events | events vs dense "
          "| mask-change iterations | bound iterations | refreshes |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        s, e = r["seconds"], r["events_per_sample"]
        eager = {m: f"{s[m] * 1e3:.0f} ms" if m in s else "-" for m in ("eager autograd loop", "label-folded, eager")}
        print(f"| {r['case']} | {r['eps']:g} | {eager['eager autograd loop']} | "
              f"{eager['label-folded, eager']} | {s['fused dense'] * 1e3:.1f} ms | {s['fused events'] * 1e3:.1f} ms | "
              f"{r['speedup_events_vs_dense']:.2f}x | {e['mask_change_iterations']['mean']:.1f} "
              f"(median {e['mask_change_iterations']['median']:.0f}) | {e['bound_iterations']['mean']:.1f} | "
              f"{e['exact_refreshes']['mean']:.2f} |")
    out = Path(args.out or Path(__file__).parent / f"aeppt_events_{date.today().isoformat()}.json")
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    out.write_text(json.dumps({"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
                               "device": device,
                               "threads": torch.get_num_threads(), "torch": torch.__version__,
                               "python": platform.python_version(), "location_run": run_dir, "results": results},
                              indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
