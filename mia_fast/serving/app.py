"""`mia-fast serve`: the run's target behind an output defense, over HTTP (FastAPI).

    POST /v1/predict  {"inputs": [[feature, ...], ...]}        -> {"probabilities": [[...], ...]}
    POST /v1/defend   {"probabilities": [[p, ...], ...]}       -> {"probabilities": [[...], ...]}
    GET  /healthz     {"status": "ok", ...}
    GET  /metrics     Prometheus text: requests, errors, batch sizes, latency

Concurrent requests are micro-batched (`MicroBatcher`): one call of the target and the defense per
batch. Bad input gets a 4xx with one line naming the problem (400 shape, class count, NaN, values
outside [0, 1]; 413 an oversized body; 503 a full queue), an unexpected error a 500; the server stays
up. The defense's randomness for batch k comes from the stream (seed, "serving", k), so a server that
gets the same requests in the same order answers the same (per-query keyed randomness, which would
make a repeated query get the same answer whatever came before, is not built yet).
"""

import json
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch

from ..defenses import OutputDefense
from ..errors import InputError
from ..seeding import stream
from ..training import predict_proba
from ..validation import check_probabilities
from .batcher import MicroBatcher, Overloaded

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class Service:
    """What the server answers with: the target (for /v1/predict; None: /v1/defend only), the fitted
    output defense (None: undefended), the feature shape and class count requests must have."""

    defense: Optional[OutputDefense]
    num_classes: int
    target: Optional[torch.nn.Module] = None
    feature_shape: tuple = ()
    seed: int = 0
    device: str = "cpu"
    batches: int = field(default=0, init=False)
    lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def from_run(cls, run_dir, defense: Optional[str] = None, params: Optional[dict] = None, *,
                 log=lambda m: None) -> "Service":
        """The run's target and ``defense`` (fitted as `mia-fast defend --run` fits it, cached in the run)."""
        from ..checkpoint import checkpoint_file, load_model
        from ..pipeline import RunDir, deploy_defense, load_run_dataset, resolve_defense

        run = RunDir(run_dir)
        cfg = run.config().resolved()
        target, _ = load_model(checkpoint_file(run.path, "target"), "target")
        ds = load_run_dataset(cfg)
        fitted = None
        if defense is not None:
            fitted = deploy_defense(run, resolve_defense(defense, params, cfg), log=log)[0]
        return cls(fitted, ds.num_classes, target, tuple(ds.x.shape[1:]), cfg.seed, cfg.device)

    def __call__(self, kind: str, rows: torch.Tensor) -> torch.Tensor:
        """One batch: the target's probabilities (kind "predict") or the given ones, then the defense."""
        probs = predict_proba(self.target, rows, device=self.device) if kind == "predict" else rows
        if self.defense is None:
            return probs
        with self.lock:  # one batch at a time: the batch index names its random stream
            index, self.batches = self.batches, self.batches + 1
        return self.defense.defend(probs, generator=stream(self.seed, "serving", index)).defended.cpu()

    def features(self, value) -> torch.Tensor:
        rows = _matrix(value, "inputs")
        width = math.prod(self.feature_shape)
        if rows.shape[1] != width:
            raise InputError(f"inputs: rows of {rows.shape[1]} features, the target takes {width}")
        if not bool(torch.isfinite(rows).all()):
            raise InputError(f"inputs: row {int((~torch.isfinite(rows)).any(1).nonzero()[0, 0])} contains NaN or Inf")
        return rows.reshape(len(rows), *self.feature_shape)

    def probabilities(self, value) -> torch.Tensor:
        rows = _matrix(value, "probabilities")
        check_probabilities(rows, num_classes=self.num_classes, name="probabilities")
        return rows


def _matrix(value, name: str) -> torch.Tensor:
    if not isinstance(value, list) or not value or not all(isinstance(row, list) for row in value):
        raise InputError(f"{name}: expected a non-empty list of rows (lists of numbers)")
    try:
        rows = torch.tensor(value, dtype=torch.float32)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name}: rows must be lists of numbers of one length ({str(err).splitlines()[0][:120]})") from None
    if rows.dim() != 2 or rows.shape[1] == 0:
        raise InputError(f"{name}: expected [N, C] rows of numbers, got shape {tuple(rows.shape)}")
    return rows


class _Histogram:
    def __init__(self, buckets):
        self.buckets, self.counts, self.total, self.n = buckets, [0] * len(buckets), 0.0, 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total, self.n = self.total + value, self.n + 1

    def text(self, name: str) -> list:
        lines = [f"# TYPE {name} histogram"]
        lines += [f'{name}_bucket{{le="{b}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        return lines + [f'{name}_bucket{{le="+Inf"}} {self.n}', f"{name}_sum {self.total}", f"{name}_count {self.n}"]


class Metrics:
    """Counters and histograms for /metrics (Prometheus text format 0.0.4)."""

    def __init__(self):
        self.requests: Dict[tuple, int] = {}
        self.latency = _Histogram(LATENCY_BUCKETS)
        self.batch = _Histogram(BATCH_BUCKETS)

    def count(self, endpoint: str, code: int) -> None:
        self.requests[(endpoint, code)] = self.requests.get((endpoint, code), 0) + 1

    def text(self) -> str:
        lines = ["# TYPE mia_fast_requests_total counter"]
        lines += [f'mia_fast_requests_total{{endpoint="{e}",code="{c}"}} {n}' for (e, c), n in sorted(self.requests.items())]
        errors = sum(n for (_, c), n in self.requests.items() if c >= 400)
        lines += ["# TYPE mia_fast_errors_total counter", f"mia_fast_errors_total {errors}"]
        lines += self.latency.text("mia_fast_request_seconds") + self.batch.text("mia_fast_batch_requests")
        return "\n".join(lines) + "\n"


def create_app(service: Service, *, max_batch: int = 64, max_wait_ms: float = 2.0, max_queue: int = 1024,
               max_body_bytes: int = 8 << 20):
    """The FastAPI app serving ``service``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse

    metrics = Metrics()
    batcher = MicroBatcher(service, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                           on_batch=metrics.batch.observe)

    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="mia-fast", lifespan=lifespan)

    def error(endpoint: str, code: int, message: str, started: float):
        metrics.count(endpoint, code)
        metrics.latency.observe(time.perf_counter() - started)
        return JSONResponse({"error": " ".join(message.split())}, status_code=code)

    async def body(request: Request) -> dict:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise _TooLarge()
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > max_body_bytes:
                raise _TooLarge()
        try:
            parsed = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise InputError(f"body: not JSON ({str(err).splitlines()[0][:120]})") from None
        if not isinstance(parsed, dict):
            raise InputError("body: expected a JSON object")
        return parsed

    async def answer(request: Request, endpoint: str, key: str, kind: str, parse):
        started = time.perf_counter()
        try:
            payload = await body(request)
            if key not in payload:
                raise InputError(f"body: expected the key {key!r}")
            rows = parse(payload[key])
            out = await batcher.submit(kind, rows)
        except _TooLarge:
            return error(endpoint, 413, f"body: larger than {max_body_bytes} bytes", started)
        except InputError as err:
            return error(endpoint, 400, str(err), started)
        except Overloaded as err:
            return error(endpoint, 503, f"overloaded: {err}; retry later", started)
        except Exception as err:  # a bug, not the client's fault: say so, stay up
            return error(endpoint, 500, f"internal error: {type(err).__name__}: {err}", started)
        metrics.count(endpoint, 200)
        metrics.latency.observe(time.perf_counter() - started)
        return JSONResponse({"probabilities": out.tolist()})

    if service.target is not None:
        @app.post("/v1/predict")
        async def predict(request: Request):
            return await answer(request, "/v1/predict", "inputs", "predict", service.features)

    @app.post("/v1/defend")
    async def defend(request: Request):
        return await answer(request, "/v1/defend", "probabilities", "defend", service.probabilities)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "defense": None if service.defense is None else service.defense.name,
                "classes": service.num_classes, "waiting": batcher.waiting}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.text(), media_type="text/plain; version=0.0.4")

    return app


class _TooLarge(Exception):
    pass
