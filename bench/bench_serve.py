"""Load test of `mia-fast serve` on loopback: p50 / p99 latency and requests/s, undefended vs defended,
one record per request, concurrency 1 / 16 / 64, side by side in one run. The server runs in its own
process (`mia-fast serve`); the client is a bounded asyncio httpx client that sends a fixed number of
requests and stops by itself. Nothing leaves 127.0.0.1.

    python bench/bench_serve.py --run runs/location30 [--defense aeppt] [--requests 1000] [--out bench/serve.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch

CONCURRENCY = (1, 16, 64)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, rows: list, requests: int, concurrency: int) -> dict:
    latencies, codes = [], {}
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(i: int):
            async with gate:
                started = time.perf_counter()
                r = await client.post(f"{url}/v1/predict", json={"inputs": [rows[i % len(rows)]]})
                latencies.append(time.perf_counter() - started)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        seconds = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": requests, "seconds": seconds, "requests_per_s": requests / seconds,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "codes": codes}


def serve(run: str, defense: str | None, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "mia_fast.cli", "serve", "--run", run, "--port", str(port)]
    proc = subprocess.Popen(command + (["--defense", defense] if defense else []), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600  # a defense fitted for the first time takes a while
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().strip().splitlines()[-1:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--defense", default="aeppt")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from mia_fast.pipeline import RunDir, load_run_dataset

    run = RunDir(args.run)
    ds = load_run_dataset(run.config().resolved())
    rows = torch.from_numpy(ds.x[run.splits().nonmembers[:256]]).reshape(256, -1).tolist()
    results = []
    print(f"{'defense':10s}{'concurrency':>12s}{'requests/s':>12s}{'p50 ms':>9s}{'p99 ms':>9s}  codes")
    for defense in (None, args.defense):
        port = free_port()
        proc = serve(args.run, defense, port)
        try:
            asyncio.run(load(f"http://127.0.0.1:{port}", rows, 50, 4))  # warm-up
            for concurrency in CONCURRENCY:
                n = args.requests if concurrency > 1 else max(args.requests // 4, 50)
                r = {"defense": defense or "none", **asyncio.run(load(f"http://127.0.0.1:{port}", rows, n, concurrency))}
                results.append(r)
                print(f"{r['defense']:10s}{concurrency:12d}{r['requests_per_s']:12.0f}{r['p50_ms']:9.2f}"
                      f"{r['p99_ms']:9.2f}  {r['codes']}", flush=True)
        finally:
            proc.terminate()
            proc.wait(10)
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                                              "run": args.run, "rows": results}, indent=2))


if __name__ == "__main__":
    main()
