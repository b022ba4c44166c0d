"""Load test of `mia-fast serve` on loopback: p50 / p99 latency and requests/s, undefended vs defended,
one record per request, concurrency 1 / 16 / 64, side by side in one run. The server runs in its own
process (`mia-fast serve`); the client sends a fixed number of requests and stops by itself. Nothing
leaves 127.0.0.1.

The default client is lean: one keep-alive HTTP/1.1 connection per concurrent request, written and read
with asyncio streams. httpx's AsyncClient (`--client httpx`) costs more CPU per request than the server
does, so on a machine the client shares with the server it measures itself: at concurrency 64 on 2
cores it gave 103 requests/s and a 3.2 s p99 where the lean client gets about 1,000 and 0.2 s.

    python bench/bench_serve.py --run runs/location30 [--defense aeppt] [--requests 1000] [--client lean|httpx]
                                [--out bench/serve.json]
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
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


def summary(latencies: list, codes: dict, requests: int, concurrency: int, seconds: float) -> dict:
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": requests, "seconds": seconds, "requests_per_s": requests / seconds,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "codes": codes}


async def load_lean(port: int, rows: list, requests: int, concurrency: int) -> dict:
    latencies, codes, indices = [], {}, iter(range(requests))

    async def connection():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in indices:  # shared: the connections take the next request until none is left
                body = json.dumps({"inputs": [rows[i % len(rows)]]}).encode()
                started = time.perf_counter()
                writer.write(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                fields = dict(line.lower().split(": ", 1) for line in head[1:] if ": " in line)
                await reader.readexactly(int(fields["content-length"]))
                latencies.append(time.perf_counter() - started)
                code = int(head[0].split()[1])
                codes[code] = codes.get(code, 0) + 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return summary(latencies, codes, requests, concurrency, time.perf_counter() - started)


async def load_httpx(port: int, rows: list, requests: int, concurrency: int) -> dict:
    latencies, codes = [], {}
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(i: int):
            async with gate:
                started = time.perf_counter()
                r = await client.post(f"http://127.0.0.1:{port}/v1/predict", json={"inputs": [rows[i % len(rows)]]})
                latencies.append(time.perf_counter() - started)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        return summary(latencies, codes, requests, concurrency, time.perf_counter() - started)


CLIENTS = {"lean": load_lean, "httpx": load_httpx}


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


def server_http() -> str:
    """What uvicorn's "auto" picks here: httptools and uvloop when installed, else h11 and asyncio."""
    fast = [m for m in ("httptools", "uvloop") if importlib.util.find_spec(m)]
    return ", ".join(fast) if fast else "h11, asyncio"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--defense", default="aeppt")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--client", choices=sorted(CLIENTS), default="lean")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    load = CLIENTS[args.client]
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
            asyncio.run(load(port, rows, 50, 4))  # warm-up
            for concurrency in CONCURRENCY:
                n = args.requests if concurrency > 1 else max(args.requests // 4, 50)
                r = {"defense": defense or "none", "client": args.client, **asyncio.run(load(port, rows, n, concurrency))}
                results.append(r)
                print(f"{r['defense']:10s}{concurrency:12d}{r['requests_per_s']:12.0f}{r['p50_ms']:9.2f}"
                      f"{r['p99_ms']:9.2f}  {r['codes']}", flush=True)
        finally:
            proc.terminate()
            proc.wait(10)
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                                              "server_http": server_http(), "run": args.run, "rows": results},
                                             indent=2))


if __name__ == "__main__":
    main()
