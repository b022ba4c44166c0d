"""Defending a file of confidence vectors in bounded memory: what `mia-fast defend` and a server call."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..distributed import LocalEngine
from ..errors import InputError
from ..io import as_tensor, atomic_path, load_array
from ..seeding import stream
from ..validation import check_probabilities
from .base import OutputDefense


def defend_file(defense: OutputDefense, predictions, out, *, batch: int = 4096, device: str = "cpu",
                seed: int = 0, allow_unnormalized: bool = False, progress: bool = False, engine=None) -> dict:
    """Defend the [N, C] confidence vectors in ``predictions`` (.npy, memory-mapped, or .pt) batch by
    batch and write them to ``out`` (.npy or .pt) atomically: on any error nothing is left there.
    Every batch is validated (finite, in [0, 1], rows sum to 1 unless ``allow_unnormalized``). Batch k
    draws its randomness from the stream (seed, "defend", k), so the batches are independent work units:
    ``engine`` (`mia_fast.distributed`; default: this process) may defend them anywhere, e.g. as Ray tasks,
    and the file is the same. Returns the summary: n, classes, mean/max L1, label flips, the defense's
    own rates, timing."""
    out_path = Path(out)
    if out_path.suffix.lower() not in (".npy", ".pt"):
        raise InputError(f"--out {out}: unsupported file type {out_path.suffix or '(none)'}; use .npy or .pt")
    if batch < 1:
        raise InputError(f"batch must be >= 1, got {batch}")
    data = load_array(predictions, what="predictions", mmap=True)  # a memmap only for its shape and dtype
    rows = _row_reader(Path(predictions), data)
    if data.ndim != 2:
        raise InputError(f"predictions {predictions}: expected a 2-D [N, C] array, got shape {tuple(data.shape)}")
    n, c = data.shape
    if n == 0:
        raise InputError(f"predictions {predictions}: empty input, shape {tuple(data.shape)}")
    expected = getattr(defense, "num_classes", None)
    if expected is not None and c != expected:
        raise InputError(f"predictions {predictions}: has {c} classes but the {defense.name} defense expects {expected}")

    def batches():
        for k, start in enumerate(range(0, n, batch)):
            part = as_tensor(rows(start, min(start + batch, n)))
            if not part.is_floating_point():
                raise InputError(f"predictions {predictions}: expected float probabilities, got dtype {part.dtype}")
            check_probabilities(part, num_classes=expected, allow_unnormalized=allow_unnormalized,
                                name="predictions", row_offset=start)
            yield k, part

    l1_sum, l1_max, flips, extras = 0.0, 0.0, 0, {}
    kept = []
    started = time.perf_counter()
    with atomic_path(out_path) as tmp:
        sink = open(tmp, "wb") if out_path.suffix.lower() == ".npy" else None
        if sink is not None:
            np.lib.format.write_array_header_1_0(sink, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                        "fortran_order": False, "shape": (n, c)})
        results = (engine or LocalEngine()).map(_defend_batch, batches(), shared=(defense, str(device), seed),
                                                desc="defend", total=-(-n // batch), progress=progress)
        for adv, l1, changed, batch_extras in results:
            if sink is not None:
                sink.write(adv.numpy().astype(np.float32, copy=False).tobytes())
            else:
                kept.append(adv)
            l1_sum += float(l1.sum())
            l1_max = max(l1_max, float(l1.max()))
            flips += int(changed.sum())
            for key, total in batch_extras.items():
                extras[key] = extras.get(key, 0.0) + total
        if sink is not None:
            sink.close()
        else:
            torch.save(torch.cat(kept), tmp)
    elapsed = time.perf_counter() - started
    return {"n": n, "classes": c, "defense": defense.name, "params": defense.params(), "device": str(device),
            "seed": seed, "mean_l1": l1_sum / n, "max_l1": l1_max, "label_flips": flips,
            **{f"{key}_rate": total / n for key, total in extras.items()},
            "seconds": elapsed, "predictions_per_s": n / elapsed if elapsed > 0 else float("inf")}


def _defend_batch(item, shared):
    """One batch: (k, rows) -> (defended rows, L1 per row, label changed per row, the defense's counts)."""
    (k, part), (defense, device, seed) = item, shared
    res = defense.defend(part.to(device), generator=stream(seed, "defend", k), check_inputs=False)
    return (res.defended.cpu(), res.l1.cpu(), res.label_changed.cpu(),
            {key: float(value.float().sum()) for key, value in res.extras.items()})


def _row_reader(path: Path, data):
    """rows(start, stop) of the input. A C-ordered .npy is read with plain file reads rather than through
    its memory map, whose touched pages would count in the process' memory up to the whole file."""
    if not isinstance(data, np.memmap) or data.ndim != 2 or not data.flags.c_contiguous:
        return lambda start, stop: data[start:stop]
    row_bytes, offset = data.shape[1] * data.dtype.itemsize, data.offset

    def rows(start: int, stop: int) -> np.ndarray:
        with open(path, "rb") as f:
            f.seek(offset + start * row_bytes)
            return np.fromfile(f, dtype=data.dtype, count=(stop - start) * data.shape[1]).reshape(stop - start, -1)

    return rows
