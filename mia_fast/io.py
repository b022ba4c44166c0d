"""Reading arrays and writing outputs atomically (.npy, or .pt holding one tensor)."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union

import numpy as np
import torch

from .errors import InputError

PathLike = Union[str, os.PathLike]
SUFFIXES = (".npy", ".pt")


def _suffix(path: PathLike, what: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"{what} {path}: unsupported file type {suffix or '(none)'}; use .npy or .pt")
    return suffix


def load_array(path: PathLike, *, what: str = "file", mmap: bool = False) -> Union[np.ndarray, torch.Tensor]:
    """Load a .npy array (memory-mapped with ``mmap``; never unpickled) or a .pt tensor (weights_only)."""
    path = Path(path)
    suffix = _suffix(path, what)
    if not path.is_file():
        raise InputError(f"{what} {path}: no such file")
    try:
        if suffix == ".npy":
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # numpy and torch raise many types for corrupt files
        raise InputError(f"{what} {path}: cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    if isinstance(obj, dict) and len(obj) == 1:
        obj = next(iter(obj.values()))
    if not isinstance(obj, torch.Tensor):
        raise InputError(f"{what} {path}: expected a tensor, found {type(obj).__name__}")
    return obj


def as_tensor(array: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
    """A tensor of ``array`` (numpy arrays, memory-mapped ones too, are copied into writable memory)."""
    return array if isinstance(array, torch.Tensor) else torch.from_numpy(np.array(array))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` (with the permissions a
    plain open() would give), on error it is removed."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise InputError(f"output {path}: directory {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent or ".")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_array(path: PathLike, array: Union[np.ndarray, torch.Tensor]) -> None:
    """Write a .npy or .pt file atomically."""
    suffix = _suffix(path, "output")
    with atomic_path(path) as tmp:
        if suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, array.numpy() if isinstance(array, torch.Tensor) else array, allow_pickle=False)
        else:
            torch.save(as_tensor(array), tmp)
