"""`mia-fast defend` on a large .npy file: peak RSS and predictions/s, in a child process. The file is
generated (10 million rows x 30 classes by default, 1.2 GB of float32), and is read and written a batch
at a time with plain file reads and writes (no memory map), so memory stays at the batch, not the file.

    python bench/bench_defend_stream.py [--rows 10000000] [--run runs/location30 --defense aeppt] [--out F]
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_predictions(path: Path, rows: int, classes: int, seed: int = 0) -> None:
    """Plain writes: a memory map here would raise this process' peak RSS, which a child forked from it
    reports as its own (Linux keeps the high-water mark across exec)."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, classes)})
        for start in range(0, rows, 500_000):
            x = rng.random((min(500_000, rows - start), classes), dtype=np.float32) ** 8
            f.write((x / x.sum(1, keepdims=True)).astype(np.float32).tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--run", default=None, help="A run whose defense to use (AEPPT: its substitute and eps).")
    parser.add_argument("--defense", default="rounding")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        predictions, defended = Path(tmp) / "predictions.npy", Path(tmp) / "defended.npy"
        write_predictions(predictions, args.rows, 30)
        command = [sys.executable, "-m", "mia_fast.cli", "defend", "-p", str(predictions), "--defense",
                   args.defense, "--out", str(defended), "--json-out", str(Path(tmp) / "summary.json")]
        if args.run:
            command += ["--run", args.run]
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        summary = json.loads((Path(tmp) / "summary.json").read_text())
        assert np.load(defended, mmap_mode="r").shape == (args.rows, 30)
    result = {"rows": args.rows, "classes": 30, "file_bytes": args.rows * 30 * 4, "defense": args.defense,
              "wall_seconds": wall, "peak_rss_bytes": peak, "predictions_per_s": summary["predictions_per_s"],
              "python": platform.python_version(), "numpy": np.__version__}
    print(f"{args.defense}: {args.rows} x 30 ({result['file_bytes'] / 2**30:.2f} GiB) in {wall:.0f} s wall, "
          f"{summary['predictions_per_s']:,.0f} predictions/s in the defense loop, peak RSS {peak / 2**20:.0f} MiB")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
