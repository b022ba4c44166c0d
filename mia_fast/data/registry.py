"""The datasets mia-fast knows, where it looks for their files, and loading them (never downloads).

Files are looked for in the directory given as ``data_dir`` (``--data-dir``), then in the directories
listed in ``$MIA_FAST_DATA`` (separated by ``:``), then in a dataset's system location (Debian's
dataset-fashion-mnist package). Parsed arrays of the slow text formats are cached as .npz under
``$MIA_FAST_CACHE`` (default ~/.cache/mia-fast), keyed by the source file's path, size and mtime.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from . import formats


class DatasetNotFound(InputError):
    """The files of a dataset are not where mia-fast looked."""


@dataclass
class Dataset:
    """Features ``x`` (float32, images [N, C, H, W] in [0, 1], tabular [N, F]) and labels ``y`` in 0..C-1."""

    name: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int
    kind: str  # "image" or "tabular"
    source: str

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Spec:
    name: str
    num_classes: int
    kind: str
    description: str
    patterns: List[str]                      # what is looked for, relative to a data directory
    find: Callable[[Path], Optional[Tuple]]  # a directory -> how to read it there, or None
    read: Callable[..., Tuple[np.ndarray, np.ndarray]]
    system_dirs: List[str] = field(default_factory=list)
    label_base: int = 0  # the first label in the published files (Purchase, Texas, Location: 1)


def data_dirs(data_dir: Optional[os.PathLike] = None, spec: Optional[Spec] = None) -> List[Path]:
    dirs = [Path(data_dir)] if data_dir else []
    dirs += [Path(p) for p in os.environ.get("MIA_FAST_DATA", "").split(":") if p]
    dirs += [Path(p) for p in (spec.system_dirs if spec else [])]
    return dirs


def _cache_dir() -> Path:
    return Path(os.environ.get("MIA_FAST_CACHE", Path.home() / ".cache" / "mia-fast"))


def _cached(source: Path, member: str, parse: Callable[[], Tuple[np.ndarray, np.ndarray]]):
    """Parse once, then read the .npz; a cache that cannot be written is skipped, not an error."""
    st = source.stat()
    key = hashlib.sha1(f"{source.resolve()}|{st.st_size}|{st.st_mtime_ns}|{member}".encode()).hexdigest()[:20]
    path = _cache_dir() / f"{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return z["x"], z["y"]
    x, y = parse()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, x=x, y=y)
        os.replace(tmp, path)
    except OSError:
        pass
    return x, y


def _first(directory: Path, *relative: str) -> Optional[Path]:
    for rel in relative:
        p = directory / rel
        if p.exists():
            return p
    return None


# --- CIFAR ---------------------------------------------------------------------------------------
def _cifar_finder(folder: str, tarball: str, members: Sequence[str]):
    def find(d: Path):
        if (d / folder).is_dir() and all((d / folder / m).is_file() for m in members):
            return ("dir", d / folder)
        if (d / tarball).is_file():
            return ("tar", d / tarball)
        return None

    return find


def _cifar_reader(folder: str, members: Sequence[str], label_key: str):
    def read(how: str, where: Path):
        if how == "dir":
            blobs = {f"{where}/{m}": (where / m).read_bytes() for m in members}
        else:
            blobs = {f"{where}:{m}": formats.read_member(where, f"{folder}/{m}") for m in members}
        return formats.cifar_arrays(blobs, label_key)

    return read


CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
CIFAR100_FILES = ["train", "test"]


# --- MNIST / Fashion-MNIST -----------------------------------------------------------------------
MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte"]


def _idx_find(subdirs: Sequence[str]):
    def find(d: Path):
        for sub in subdirs:
            base = d / sub if sub else d
            paths = [_first(base, f, f + ".gz") for f in MNIST_FILES]
            if all(paths):
                return ("idx", paths)
        return None

    return find


def _idx_read(how: str, paths: List[Path]):
    tr_x, tr_y, te_x, te_y = (formats.read_idx(p) for p in paths)
    x = np.concatenate([tr_x, te_x]).reshape(-1, 1, 28, 28)
    return x, np.concatenate([tr_y, te_y]).astype(np.int64)


# --- Purchase-100, Texas-100, Location-30 ----------------------------------------------------------
def _purchase_find(d: Path):
    if (d / "purchase100.npz").is_file():
        return ("npz", d / "purchase100.npz")
    p = _first(d, "dataset_purchase", "dataset_purchase/dataset_purchase")
    if p is not None and p.is_file():
        return ("csv", p)
    if (d / "dataset_purchase.tgz").is_file():
        return ("tgz", d / "dataset_purchase.tgz")
    return None


def _purchase_read(how: str, where: Path):
    if how == "npz":
        with np.load(where, allow_pickle=False) as z:
            keys = set(z.files)
            fx = next((k for k in ("features", "X", "x") if k in keys), None)
            fy = next((k for k in ("labels", "Y", "y") if k in keys), None)
            if fx is None or fy is None:
                raise InputError(f"{where}: expected arrays 'features' and 'labels', found {sorted(keys)}")
            x, y = z[fx].astype(np.float32), z[fy]
        # One-hot columns are the CSV's classes 1..100; integer labels in an .npz are taken as 0-based.
        y = y.argmax(1) + 1 if y.ndim == 2 else y + 1
        return x, y.astype(np.int64)
    member = "dataset_purchase"
    return _cached(where, member, lambda: _label_csv(where, None if how == "csv" else member, 600))


def _label_csv(source: Path, member: Optional[str], features: int):
    with formats.open_source(source, member) as stream:
        return formats.read_label_csv(stream, str(source), features)


def _texas_find(d: Path):
    for base in ("texas/100", "dataset_texas/texas/100", "dataset_texas"):
        if (d / base / "feats").is_file() and (d / base / "labels").is_file():
            return ("dir", d / base)
    if (d / "dataset_texas.tgz").is_file():
        return ("tgz", d / "dataset_texas.tgz")
    return None


def _texas_read(how: str, where: Path):
    def parse():
        parts = [(where / "feats", None), (where / "labels", None)] if how == "dir" else \
            [(where, "texas/100/feats"), (where, "texas/100/labels")]
        with formats.open_source(*parts[0]) as feats:
            x = formats.read_csv_rows(feats, f"{where} (feats)")
        with formats.open_source(*parts[1]) as labels:
            y = formats.read_csv_rows(labels, f"{where} (labels)").reshape(-1).astype(np.int64)
        if len(x) != len(y):
            raise InputError(f"{where}: {len(x)} feature rows but {len(y)} labels")
        return x, y

    return _cached(where / "feats" if how == "dir" else where, "texas", parse)


def _location_find(d: Path):
    p = _first(d, "bangkok", "dataset_location/bangkok", "location/bangkok")
    if p is not None and p.is_file():
        return ("csv", p)
    p = _first(d, "dataset_location.tgz", "location/dataset_location.tgz")
    return ("tgz", p) if p is not None else None


def _location_read(how: str, where: Path):
    return _cached(where, "bangkok", lambda: _label_csv(where, None if how == "csv" else "bangkok", 446))


def _digits_read(how: str, where):
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


DATASETS: Dict[str, Spec] = {s.name: s for s in [
    Spec("digits", 10, "tabular", "scikit-learn's bundled 8x8 digits (1,797 images as 64 features); embedded",
         ["(bundled with scikit-learn)"], lambda d: ("bundled", None), _digits_read),
    Spec("location30", 30, "tabular", "Location-30 (Foursquare Bangkok check-ins, 446 binary features)",
         ["dataset_location.tgz", "bangkok", "dataset_location/bangkok"], _location_find, _location_read,
         label_base=1),
    Spec("purchase100", 100, "tabular", "Purchase-100 (600 binary features)",
         ["dataset_purchase", "dataset_purchase.tgz", "purchase100.npz"], _purchase_find, _purchase_read,
         label_base=1),
    Spec("texas100", 100, "tabular", "Texas-100 (6,169 binary features)",
         ["texas/100/{feats,labels}", "dataset_texas/...", "dataset_texas.tgz"], _texas_find, _texas_read,
         label_base=1),
    Spec("cifar10", 10, "image", "CIFAR-10 (python version)",
         ["cifar-10-batches-py/", "cifar-10-python.tar.gz"],
         _cifar_finder("cifar-10-batches-py", "cifar-10-python.tar.gz", CIFAR10_FILES),
         _cifar_reader("cifar-10-batches-py", CIFAR10_FILES, "labels")),
    Spec("cifar100", 100, "image", "CIFAR-100 (python version, fine labels)",
         ["cifar-100-python/", "cifar-100-python.tar.gz"],
         _cifar_finder("cifar-100-python", "cifar-100-python.tar.gz", CIFAR100_FILES),
         _cifar_reader("cifar-100-python", CIFAR100_FILES, "fine_labels")),
    Spec("mnist", 10, "image", "MNIST (idx files, raw or .gz)", ["{train,t10k}-*-idx?-ubyte[.gz]", "mnist/..."],
         _idx_find(["", "mnist", "MNIST/raw"]), _idx_read),
    Spec("fashion-mnist", 10, "image", "Fashion-MNIST (idx files, raw or .gz)",
         ["{train,t10k}-*-idx?-ubyte[.gz]", "fashion-mnist/..."], _idx_find(["", "fashion-mnist", "fashion"]),
         _idx_read, system_dirs=["/usr/share/datasets/fashion-mnist"]),
]}


def _normalise(name: str, x: np.ndarray, y: np.ndarray, num_classes: int, label_base: int, source: str):
    if len(x) != len(y) or len(y) == 0:
        raise InputError(f"{name} at {source}: {len(x)} samples but {len(y)} labels")
    y = y - label_base
    if y.min() < 0 or y.max() >= num_classes:
        raise InputError(f"{name} at {source}: labels {y.min()}..{y.max()} do not fit {num_classes} classes")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    return np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int64)


def locate(name: str, data_dir: Optional[os.PathLike] = None):
    """(how, where) for a dataset's files, or raise DatasetNotFound naming every place looked at."""
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    dirs = data_dirs(data_dir, spec)
    if spec.name == "digits":
        return spec.find(Path("."))
    for d in dirs:
        if d.is_dir():
            found = spec.find(d)
            if found is not None:
                return found
    looked = ", ".join(str(d) for d in dirs) or "(no directory: pass --data-dir or set MIA_FAST_DATA)"
    raise DatasetNotFound(f"{name}: none of {', '.join(spec.patterns)} found in {looked}")


def load_dataset(name: str, data_dir: Optional[os.PathLike] = None) -> Dataset:
    """Load a dataset by name from the published files (see the module doc for where it looks).

    >>> ds = load_dataset("digits")
    >>> ds.x.shape, ds.num_classes, int(ds.y.max())
    ((1797, 64), 10, 9)
    """
    how, where = locate(name, data_dir)
    spec = DATASETS[name]
    x, y = spec.read(how, where)
    source = "scikit-learn" if where is None else str(where if not isinstance(where, list) else where[0].parent)
    x, y = _normalise(name, x, y, spec.num_classes, spec.label_base, source)
    return Dataset(name, x, y, spec.num_classes, spec.kind, source)


def describe(data_dir: Optional[os.PathLike] = None) -> List[dict]:
    """Every dataset: where it was looked for and whether it was found."""
    rows = []
    for name, spec in DATASETS.items():
        try:
            how, where = locate(name, data_dir)
            found = "scikit-learn" if where is None else str(where if not isinstance(where, list) else where[0].parent)
        except DatasetNotFound:
            found = None
        looked = [str(d) for d in data_dirs(data_dir, spec)] if name != "digits" else ["(bundled)"]
        rows.append({"name": name, "classes": spec.num_classes, "kind": spec.kind, "description": spec.description,
                     "looked_in": looked, "found": found})
    return rows
