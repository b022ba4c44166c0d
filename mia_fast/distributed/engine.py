"""Where independent work units run: in this process (the default) or as Ray tasks.

A work unit is a plain function ``fn(item, shared)`` of one item and of data every unit shares (the
pool of a shadow-model run, a fitted defense). Its randomness must come from named streams of the
item, never from state left by an earlier unit, so the results do not depend on where or in which
order the units ran. One more thing decides a float result on the CPU: the number of threads a
reduction is split over. Every unit therefore runs with the caller's torch thread count, and a Ray task
asks Ray for that many CPUs, so a Ray run gives bit for bit what the in-process run gives.

>>> engine = create_engine()
>>> list(engine.map(lambda item, shared: item * shared, [1, 2, 3], shared=10))
[10, 20, 30]
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
from tqdm.auto import tqdm

from ..errors import InputError


class LocalEngine:
    """Runs the units one after another in this process."""

    name = "local"

    def map(self, fn: Callable[[Any, Any], Any], items: Iterable, *, shared: Any = None, desc: Optional[str] = None,
            total: Optional[int] = None, progress: bool = False, max_in_flight: Optional[int] = None) -> Iterator:
        """``fn(item, shared)`` for each item, in the items' order (lazily: one result at a time)."""
        for item in tqdm(items, desc=desc, total=total, disable=not progress, leave=False):
            yield fn(item, shared)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _run_unit(fn, item, shared, threads: int):
    torch.set_num_threads(threads)
    return fn(item, shared)


class RayEngine(LocalEngine):
    """Runs the units as Ray tasks: on a local Ray instance started here (``address=None``; stopped again by
    `close`) or on the cluster at ``address`` (``"auto"``: the one this machine belongs to). Each task gets
    ``threads`` CPUs and torch threads (default: this process' torch thread count), the shared data goes
    into Ray's object store once, and at most ``max_in_flight`` tasks are queued at a time (default: twice
    the cluster's CPUs over ``threads``), so a long stream of units is held in memory a window at a time.
    Every node needs mia-fast installed (the tasks import it)."""

    name = "ray"

    def __init__(self, *, address: Optional[str] = None, threads: Optional[int] = None,
                 num_cpus: Optional[int] = None):
        try:
            import ray
        except ImportError as exc:
            raise InputError("--ray needs Ray: pip install 'mia-fast[ray]' (or pip install ray)") from exc
        self._ray, self.threads = ray, int(threads or torch.get_num_threads())
        if self.threads < 1:
            raise InputError(f"threads per Ray task must be >= 1, got {self.threads}")
        self._started = not ray.is_initialized()
        if self._started:
            # Workers log to their own files; the driver's progress bar is what the user watches.
            ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        if cpus < self.threads:
            raise InputError(f"Ray: the cluster has {cpus} CPUs, fewer than the {self.threads} threads each task "
                             "runs with (torch.set_num_threads, or OMP_NUM_THREADS)")
        self.slots = max(1, cpus // self.threads)
        self._task = ray.remote(_run_unit).options(num_cpus=self.threads)

    def map(self, fn, items, *, shared=None, desc=None, total=None, progress=False, max_in_flight=None):
        ray = self._ray
        shared_ref, limit = ray.put(shared), max_in_flight or 2 * self.slots
        pending: deque = deque()
        bar = tqdm(desc=desc, total=total, disable=not progress, leave=False)
        try:
            for item in items:
                pending.append(self._task.remote(fn, item, shared_ref, self.threads))
                if len(pending) >= limit:
                    yield ray.get(pending.popleft())
                    bar.update()
            while pending:
                yield ray.get(pending.popleft())
                bar.update()
        finally:
            bar.close()
            for ref in pending:  # a consumer that stopped early (an error) leaves no work running
                ray.cancel(ref)

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
            self._started = False


def create_engine(*, ray: bool = False, address: Optional[str] = None, threads: Optional[int] = None,
                  num_cpus: Optional[int] = None) -> LocalEngine:
    """The in-process engine, or a `RayEngine` when ``ray`` or an ``address`` is given (what `--ray` and
    `--ray-address` ask for)."""
    if ray or address:
        return RayEngine(address=address, threads=threads, num_cpus=num_cpus)
    if threads is not None or num_cpus is not None:
        raise InputError("threads and num_cpus are Ray options: add --ray or --ray-address")
    return LocalEngine()
