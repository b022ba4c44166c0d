"""Readers for the published file formats of the datasets (no downloads, no arbitrary unpickling)."""
from __future__ import annotations

import contextlib
import gzip
import io
import pickle
import tarfile
from pathlib import Path
from typing import IO, Dict, Iterator, Optional, Tuple

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


CHUNK_BYTES = 1 << 20  # text parsed at a time: bounded, whatever the row width
_SEPARATOR = np.zeros(256, dtype=bool)
_SEPARATOR[[ord(","), ord("\n")]] = True
_DIGIT = np.zeros(256, dtype=bool)
_DIGIT[ord("0"):ord("9") + 1] = True


def _unsigned_int_rows(raw: bytes) -> Optional[np.ndarray]:
    """[rows, width] float32 of whole lines holding only unsigned integers of at most 7 digits (optionally
    quoted; exact in float32), as the binary features and labels of Purchase, Texas and Location are, read
    straight from the bytes; None when the text holds anything else (numpy's reader takes it then)."""
    b = np.frombuffer(raw.replace(b'"', b"").replace(b"\r", b""), dtype=np.uint8)
    if b.size == 0 or b[-1] != ord("\n"):
        return None
    separator = _SEPARATOR[b]
    if not (separator | _DIGIT[b]).all():
        return None
    ends = np.flatnonzero(separator)  # one per field
    widths = ends - np.concatenate(([0], ends[:-1] + 1))
    if widths.min() < 1 or widths.max() > 7:  # blank lines, empty fields or long numbers
        return None
    newlines = np.flatnonzero(b[ends] == ord("\n"))
    per_row = np.diff(newlines, prepend=-1)
    if (per_row != per_row[0]).any():
        return None
    values = (b[ends - 1] - 48).astype(np.float32)  # every field's last digit, then the k-th last where it has one
    longer = np.flatnonzero(widths > 1)
    for k in range(1, int(widths.max())):
        longer = longer[widths[longer] > k]
        values[longer] += (b[ends[longer] - 1 - k] - 48) * np.float32(10 ** k)
    return values.reshape(len(newlines), per_row[0])


def _general_rows(lines: list, what: str, where: str) -> Optional[np.ndarray]:
    try:
        body = [row for row in (line.decode("utf-8") for line in lines) if row.strip()]
        return np.loadtxt(body, delimiter=",", quotechar='"', dtype=np.float32, ndmin=2) if body else None
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{what}: not a numeric CSV in {where} ({str(err).splitlines()[0][:160]})") from None


def read_csv_rows(stream: IO[bytes], what: str) -> np.ndarray:
    """The float32 rows of a comma-separated binary stream (values optionally quoted, blank lines
    skipped), about a megabyte at a time: unsigned integers straight from the bytes, anything else by
    numpy's C reader. Peak memory about twice the array, never a Python object per value."""
    blocks, width, line = [], None, 1
    while True:
        lines = stream.readlines(CHUNK_BYTES)
        if not lines:
            break
        where = f"lines {line}-{line + len(lines) - 1}"
        raw = b"".join(lines)
        block = _unsigned_int_rows(raw if raw.endswith(b"\n") else raw + b"\n")
        if block is None:
            block = _general_rows(lines, what, where)
        if block is not None:
            width = block.shape[1] if width is None else width
            if block.shape[1] != width:
                raise InputError(f"{what}: rows of {width} and of {block.shape[1]} values ({where})")
            blocks.append(block)
        line += len(lines)
    if not blocks:
        raise InputError(f"{what}: empty file")
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def read_label_csv(stream: IO[bytes], what: str, features: int | None = None) -> Tuple[np.ndarray, np.ndarray]:
    """CSV without header, label first (optionally quoted), then binary features (Purchase, Location)."""
    table = read_csv_rows(stream, what)
    if features is not None and table.shape[1] != features + 1:
        raise InputError(f"{what}: expected 1 label + {features} features per row, got {table.shape[1]} columns")
    return table[:, 1:], table[:, 0].astype(np.int64)


@contextlib.contextmanager
def open_source(source: Path, member: Optional[str] = None) -> Iterator[IO[bytes]]:
    """A binary stream of a file, or of one member of a .tgz / .tar.gz (found by its path suffix), read as
    it is parsed rather than into memory first."""
    if member is None:
        with open(source, "rb") as f:
            yield f
        return
    with tarfile.open(source, "r:*") as tar:
        for info in tar.getmembers():
            if info.isfile() and (info.name == member or info.name.endswith("/" + member)):
                with tar.extractfile(info) as f:
                    yield f
                return
    raise InputError(f"{source}: has no member {member}")


def read_member(archive: Path, member: str) -> bytes:
    """One file out of a .tgz / .tar.gz, found by its path suffix."""
    with open_source(archive, member) as f:
        return f.read()
