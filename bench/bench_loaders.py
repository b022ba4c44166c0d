"""Loading a Texas-100-format file (comma-separated 0/1 features, labels one per line), as a new user
would: wall time and peak memory of `load_dataset("texas100", DIR)`, in a fresh process so that its
peak RSS is the loader's. The file is generated (15,000 rows x 6,169 features by default, the size a
user reported at 4.6 GB and 16 s with the earlier per-value Python parser).

    python bench/bench_loaders.py [--rows 15000] [--out bench/loaders.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

FEATURES = 6169
CHILD = """
import json, resource, sys, time, tracemalloc
from mia_fast.data import load_dataset
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the interpreter, numpy and torch
tracemalloc.start()
started = time.perf_counter()
ds = load_dataset("texas100", sys.argv[1])
seconds = time.perf_counter() - started
traced = tracemalloc.get_traced_memory()[1]
print(json.dumps({"seconds": seconds, "rows": len(ds), "array_bytes": ds.x.nbytes, "traced_peak_bytes": traced,
                  "rss_before_bytes": before, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def write_texas(folder: Path, rows: int, seed: int = 0) -> int:
    """feats and labels under folder/texas/100; returns the size of feats in bytes."""
    base = folder / "texas" / "100"
    base.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    with open(base / "feats", "wb") as f:
        for start in range(0, rows, 1000):
            n = min(1000, rows - start)
            text = np.full((n, 2 * FEATURES), ord(","), dtype=np.uint8)
            text[:, 0::2] = ord("0") + (rng.random((n, FEATURES)) < 0.05)
            text[:, -1] = ord("\n")
            f.write(text.tobytes())
    (base / "labels").write_text("\n".join(map(str, rng.integers(1, 101, rows))) + "\n")
    return (base / "feats").stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=15000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        size = write_texas(Path(tmp), args.rows)
        env = {"MIA_FAST_CACHE": str(Path(tmp) / "cache")}  # a fresh parse, not the .npz cache
        out = subprocess.run([sys.executable, "-c", CHILD, tmp], capture_output=True, text=True, check=True,
                             env={**__import__("os").environ, **env})
    result = {"file_bytes": size, "features": FEATURES, **json.loads(out.stdout.strip().splitlines()[-1]),
              "python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine()}
    mib = 2 ** 20
    print(f"texas100 format, {result['rows']} x {FEATURES}: {size / mib:.0f} MiB of text -> "
          f"{result['array_bytes'] / mib:.0f} MiB float32 in {result['seconds']:.1f} s; peak RSS "
          f"{result['peak_rss_bytes'] / mib:.0f} MiB ({result['rss_before_bytes'] / mib:.0f} MiB before loading), traced peak {result['traced_peak_bytes'] / mib:.0f} MiB "
          f"({result['traced_peak_bytes'] / result['array_bytes']:.2f}x the array)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
