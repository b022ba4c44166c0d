"""Dynamic micro-batching: concurrent requests share one call of the model and the defense.

Requests wait in a bounded queue; one worker takes up to ``max_batch`` of them (or what arrived within
``max_wait_ms`` of the first), concatenates the rows of each kind, runs one call per kind in a thread and
hands every request its own rows back. A full queue refuses at once (`Overloaded`: the server answers
503) instead of growing.
"""
from __future__ import annotations

import asyncio
from typing import Callable, List, Optional, Tuple

import torch


class Overloaded(Exception):
    """The queue is full: the request is refused, not queued."""


class MicroBatcher:
    """``run(kind, rows) -> rows`` on batches of requests; `submit` is called from the event loop."""

    def __init__(self, run: Callable[[str, torch.Tensor], torch.Tensor], *, max_batch: int = 64,
                 max_wait_ms: float = 2.0, max_queue: int = 1024,
                 on_batch: Optional[Callable[[int], None]] = None):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch and max_queue must be >= 1 and max_wait_ms >= 0, got {max_batch}, "
                             f"{max_queue}, {max_wait_ms}")
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000
        self.max_queue, self.on_batch = max_queue, on_batch
        self.queue: Optional[asyncio.Queue] = None
        self.worker: Optional[asyncio.Task] = None

    def start(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.max_queue)
        self.worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            try:
                await self.worker
            except asyncio.CancelledError:
                pass

    @property
    def waiting(self) -> int:
        return self.queue.qsize() if self.queue is not None else 0

    async def submit(self, kind: str, rows: torch.Tensor) -> torch.Tensor:
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((kind, rows, future))
        except asyncio.QueueFull:
            raise Overloaded(f"queue full ({self.max_queue} requests waiting)") from None
        return await future

    async def _collect(self) -> List[Tuple[str, torch.Tensor, asyncio.Future]]:
        items = [await self.queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(items) < self.max_batch:
            if not self.queue.empty():
                items.append(self.queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self.queue.get(), left))
            except asyncio.TimeoutError:
                break
        return items

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            if self.on_batch is not None:
                self.on_batch(len(items))
            for kind in dict.fromkeys(k for k, _, _ in items):  # one call per kind, in arrival order
                group = [(rows, future) for k, rows, future in items if k == kind]
                try:
                    out = await loop.run_in_executor(None, self.run, kind, torch.cat([r for r, _ in group]))
                except Exception as err:  # every request of the batch gets the error, the worker goes on
                    for _, future in group:
                        if not future.done():
                            future.set_exception(err)
                    continue
                start = 0
                for rows, future in group:
                    if not future.done():  # a client that went away has cancelled its future
                        future.set_result(out[start:start + len(rows)])
                    start += len(rows)
