"""Readers for the published file formats of the datasets (no downloads, no arbitrary unpickling)."""
from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

from ..errors import InputError


class _RestrictedUnpickler(pickle.Unpickler):
    """CIFAR's python pickles hold dicts of bytes, lists and numpy arrays: allow exactly those."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset pickle")


def load_cifar_pickle(data: bytes, what: str) -> dict:
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as err:
        raise InputError(f"{what}: not a CIFAR python pickle ({err})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{what}: expected a dict in the CIFAR pickle, got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def cifar_arrays(batches: Dict[str, bytes], label_key: str) -> Tuple[np.ndarray, np.ndarray]:
    """Concatenate CIFAR batches: images [N, 3, 32, 32] uint8 and labels [N]."""
    xs, ys = [], []
    for name, data in batches.items():
        d = load_cifar_pickle(data, name)
        if "data" not in d or label_key not in d:
            raise InputError(f"{name}: CIFAR pickle lacks 'data' or '{label_key}'")
        xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[label_key], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def read_idx(path: Path) -> np.ndarray:
    """An MNIST-style idx file (raw or .gz): magic 0x0000 0x08 ndim, then big-endian dims, then uint8."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise InputError(f"{path}: not an idx file of unsigned bytes")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise InputError(f"{path}: header says {tuple(dims)} but holds {body.size} values")
    return body.reshape(tuple(dims))


def read_label_csv(text: str, what: str, features: int | None = None) -> Tuple[np.ndarray, np.ndarray]:
    """CSV without header, label first (optionally quoted), then binary features (Purchase, Location)."""
    rows = [line for line in text.splitlines() if line.strip()]
    if not rows:
        raise InputError(f"{what}: empty file")
    try:
        table = np.array([[float(v.strip().strip('"')) for v in line.split(",")] for line in rows], dtype=np.float32)
    except ValueError as err:
        raise InputError(f"{what}: not a numeric CSV ({err})") from None
    if features is not None and table.shape[1] != features + 1:
        raise InputError(f"{what}: expected 1 label + {features} features per row, got {table.shape[1]} columns")
    return table[:, 1:], table[:, 0].astype(np.int64)


def read_member(archive: Path, member: str) -> bytes:
    """One file out of a .tgz / .tar.gz, found by its path suffix."""
    with tarfile.open(archive, "r:*") as tar:
        for info in tar.getmembers():
            if info.isfile() and (info.name == member or info.name.endswith("/" + member)):
                f = tar.extractfile(info)
                return f.read()
    raise InputError(f"{archive}: has no member {member}")
