"""Shadow-model training in this process vs as Ray tasks: wall time of the shadow models LiRA and the
other calibrated attacks train, with the torch threads per unit fixed, side by side in one run. Each
setting runs `mia-fast attack RUN lira --defense rounding --shadows N` in a child process on a fresh copy
of the run (no cached shadows), and the shadow models of settings with the same threads per unit are
compared tensor for tensor.

    python bench/bench_shadows.py --run runs/location30 [--shadows 8] [--out bench/shadows.json]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file

# (name, torch threads per unit, extra CLI arguments)
SETTINGS = [("in process", 2, []), ("in process", 1, []), ("ray", 1, ["--ray"])]


def shadow_digests(run: Path) -> list:
    """A digest of each shadow model's tensors (the files also hold when they were written)."""
    (cache,) = (run / "shadows").iterdir()
    digests = []
    for path in sorted(cache.glob("model-*.safetensors")):
        tensors = load_file(path)
        digest = hashlib.sha256()
        for name in sorted(tensors):
            digest.update(name.encode() + tensors[name].numpy().tobytes())
        digests.append(digest.hexdigest())
    return digests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--shadows", type=int, default=8)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows, digests = [], {}
    print(f"{'engine':12s}{'threads/unit':>14s}{'shadows s':>11s}{'wall s':>9s}  same models as in process")
    for name, threads, extra in SETTINGS:
        with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
            run = Path(tmp) / "run"
            shutil.copytree(args.run, run, ignore=shutil.ignore_patterns("shadows", "evaluation*", "compare*"))
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            started = time.perf_counter()
            done = subprocess.run(["mia-fast", "attack", str(run), "lira", "--defense", "rounding",
                                   "--shadows", str(args.shadows), *extra], env=env, capture_output=True, text=True)
            wall = time.perf_counter() - started
            if done.returncode:
                raise SystemExit(f"{name}: {done.stderr.strip().splitlines()[-1]}")
            shadow_s = float(re.search(r"shadow models on .*?: (\d+) s", done.stderr + done.stdout).group(1))
            models = shadow_digests(run)
        if name == "in process":
            digests[threads], same = models, None
        else:
            same = digests.get(threads) == models
        rows.append({"engine": name, "threads_per_unit": threads, "shadows": args.shadows, "shadow_seconds": shadow_s,
                     "wall_seconds": wall, "same_models_as_in_process": same})
        print(f"{name:12s}{threads:14d}{shadow_s:11.0f}{wall:9.1f}  {'' if same is None else same}", flush=True)
    if args.out:
        import ray
        import torch
        Path(args.out).write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                              "cpus": os.cpu_count(), "torch": torch.__version__,
                                              "ray": ray.__version__, "date": time.strftime("%Y-%m-%d"),
                                              "run": args.run, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
