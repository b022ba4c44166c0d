"""Dataset loaders on tiny files written in the exact published formats, plus the real files when present."""
import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from mia_fast.data import DatasetNotFound, describe, load_dataset, make_splits
from mia_fast.errors import InputError

SHARED_LOCATION = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "location"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIA_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MIA_FAST_DATA", raising=False)


def _tar(path: Path, members: dict):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _cifar_batch(n, label_key, rng):
    return pickle.dumps({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         label_key.encode(): rng.integers(0, 10, n).tolist(), b"batch_label": b"x"})


@pytest.mark.parametrize("packed", [False, True])
def test_cifar10_directory_and_tarball(tmp_path, packed):
    rng = np.random.default_rng(0)
    files = {f"data_batch_{i}": _cifar_batch(4, "labels", rng) for i in range(1, 6)}
    files["test_batch"] = _cifar_batch(3, "labels", rng)
    if packed:
        _tar(tmp_path / "cifar-10-python.tar.gz", {f"cifar-10-batches-py/{k}": v for k, v in files.items()})
    else:
        (tmp_path / "cifar-10-batches-py").mkdir()
        for k, v in files.items():
            (tmp_path / "cifar-10-batches-py" / k).write_bytes(v)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.x.shape == (23, 3, 32, 32) and ds.x.dtype == np.float32 and 0 <= ds.x.min() <= ds.x.max() <= 1
    first = pickle.loads(files["data_batch_1"])
    np.testing.assert_allclose(ds.x[0].reshape(-1), first[b"data"][0] / 255.0, rtol=1e-6)
    assert ds.y[:4].tolist() == first[b"labels"] and ds.kind == "image"


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "cifar-100-python").mkdir()
    for name, n in [("train", 5), ("test", 2)]:
        blob = pickle.dumps({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                             b"fine_labels": [99, 0, 5, 7, 1][:n], b"coarse_labels": [0] * n})
        (tmp_path / "cifar-100-python" / name).write_bytes(blob)
    ds = load_dataset("cifar100", tmp_path)
    assert ds.x.shape == (7, 3, 32, 32) and ds.y.tolist() == [99, 0, 5, 7, 1, 99, 0] and ds.num_classes == 100


def test_cifar_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "cifar-100-python").mkdir()
    for name in ("train", "test"):
        (tmp_path / "cifar-100-python" / name).write_bytes(pickle.dumps({b"data": Evil(), b"fine_labels": [0]}))
    with pytest.raises(InputError, match="refusing to load builtins.print"):
        load_dataset("cifar100", tmp_path)


def _idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape) + array.tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_raw_and_gz(tmp_path, gz):
    rng = np.random.default_rng(2)
    parts = {"train-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
             "train-labels-idx1-ubyte": np.array([1, 2, 3, 4, 5], dtype=np.uint8),
             "t10k-images-idx3-ubyte": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
             "t10k-labels-idx1-ubyte": np.array([9, 0], dtype=np.uint8)}
    for name, arr in parts.items():
        data = _idx(arr)
        (tmp_path / (name + (".gz" if gz else ""))).write_bytes(gzip.compress(data) if gz else data)
    ds = load_dataset("mnist", tmp_path)
    assert ds.x.shape == (7, 1, 28, 28) and ds.y.tolist() == [1, 2, 3, 4, 5, 9, 0]
    np.testing.assert_allclose(ds.x[5, 0], parts["t10k-images-idx3-ubyte"][0] / 255.0, rtol=1e-6)


def test_idx_with_wrong_size_is_refused(tmp_path):
    bad = _idx(np.zeros((3, 28, 28), dtype=np.uint8))[:-10]
    for name in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]:
        (tmp_path / name).write_bytes(bad)
    with pytest.raises(InputError, match="header says"):
        load_dataset("mnist", tmp_path)


def _purchase_csv(rows=6):
    rng = np.random.default_rng(3)
    labels = rng.integers(1, 101, rows)
    feats = rng.integers(0, 2, (rows, 600))
    text = "\n".join(",".join([str(l)] + [str(v) for v in f]) for l, f in zip(labels, feats)) + "\n"
    return text, labels, feats


@pytest.mark.parametrize("layout", ["csv", "tgz", "npz"])
def test_purchase100_layouts(tmp_path, layout):
    text, labels, feats = _purchase_csv()
    if layout == "csv":
        (tmp_path / "dataset_purchase").write_text(text)
    elif layout == "tgz":
        _tar(tmp_path / "dataset_purchase.tgz", {"dataset_purchase": text.encode()})
    else:
        np.savez(tmp_path / "purchase100.npz", features=feats.astype(np.float32), labels=np.eye(100)[labels - 1])
    ds = load_dataset("purchase100", tmp_path)
    assert ds.x.shape == (6, 600) and ds.y.tolist() == (labels - 1).tolist()
    np.testing.assert_array_equal(ds.x, feats.astype(np.float32))


def test_parsed_csv_is_cached(tmp_path):
    text, labels, _ = _purchase_csv()
    (tmp_path / "dataset_purchase").write_text(text)
    first = load_dataset("purchase100", tmp_path)
    assert list((tmp_path / "cache").glob("*.npz"))
    again = load_dataset("purchase100", tmp_path)
    np.testing.assert_array_equal(first.x, again.x)


@pytest.mark.parametrize("layout", ["dir", "dataset_texas", "tgz"])
def test_texas100_layouts(tmp_path, layout):
    rng = np.random.default_rng(4)
    feats = rng.integers(0, 2, (4, 6169))
    labels = np.array([1, 100, 50, 3])
    feats_text = "\n".join(",".join(map(str, f)) for f in feats) + "\n"
    labels_text = "\n".join(map(str, labels)) + "\n"
    if layout == "tgz":
        _tar(tmp_path / "dataset_texas.tgz", {"texas/100/feats": feats_text.encode(),
                                              "texas/100/labels": labels_text.encode()})
    else:
        base = tmp_path / ("texas/100" if layout == "dir" else "dataset_texas/texas/100")
        base.mkdir(parents=True)
        (base / "feats").write_text(feats_text)
        (base / "labels").write_text(labels_text)
    ds = load_dataset("texas100", tmp_path)
    assert ds.x.shape == (4, 6169) and ds.y.tolist() == [0, 99, 49, 2]


def test_location30_tarball_with_quoted_labels(tmp_path):
    rows = ['"1",' + ",".join(["0"] * 445 + ["1"]), '"30",' + ",".join(["1"] * 446), '"7",' + ",".join(["0"] * 446)]
    _tar(tmp_path / "dataset_location.tgz", {"bangkok": ("\n".join(rows) + "\n").encode()})
    ds = load_dataset("location30", tmp_path)
    assert ds.x.shape == (3, 446) and ds.y.tolist() == [0, 29, 6] and ds.x[0, -1] == 1 and ds.x[1].sum() == 446


def test_wrong_column_count_is_a_clear_error(tmp_path):
    _tar(tmp_path / "dataset_location.tgz", {"bangkok": b'"1",0,1\n'})
    with pytest.raises(InputError, match="expected 1 label \\+ 446 features per row, got 3 columns"):
        load_dataset("location30", tmp_path)


def test_ragged_or_non_numeric_rows_name_the_lines(tmp_path):
    text = "1," + ",".join(["0"] * 600) + "\n" + "2," + ",".join(["1"] * 599) + "\n"
    (tmp_path / "dataset_purchase").write_text(text)
    with pytest.raises(InputError, match="dataset_purchase: not a numeric CSV in lines 1-2"):
        load_dataset("purchase100", tmp_path)
    (tmp_path / "dataset_purchase").write_text("1," + ",".join(["x"] * 600) + "\n")
    with pytest.raises(InputError, match="not a numeric CSV in lines 1-1"):
        load_dataset("purchase100", tmp_path)


@pytest.mark.parametrize("kind", ["binary", "integers", "quoted", "floats", "blank-lines", "crlf"])
def test_csv_rows_equal_numpys_reader(kind, monkeypatch):
    """The integer fast path and numpy's reader give the same rows, chunk boundaries included."""
    from mia_fast.data import formats

    monkeypatch.setattr(formats, "CHUNK_BYTES", 1 << 16)
    rng = np.random.default_rng(6)
    table = rng.integers(0, 2 if kind == "binary" else 10 ** 7, (6000, 40)).astype(np.float64)
    if kind == "floats":
        table = table / 7 - 3
    cells = [[f'"{int(v)}"' if kind == "quoted" and j == 0 else (str(float(v)) if kind == "floats" else str(int(v)))
              for j, v in enumerate(row)] for row in table]
    end = "\r\n" if kind == "crlf" else "\n"
    text = end.join(",".join(row) + (end if kind == "blank-lines" and i % 50 == 0 else "") for i, row in
                    enumerate(cells))
    rows = formats.read_csv_rows(io.BytesIO(text.encode()), "t")  # no newline at the end, several chunks
    assert len(text) > 4 * formats.CHUNK_BYTES
    assert rows.dtype == np.float32 and rows.shape == table.shape
    np.testing.assert_allclose(rows, table, rtol=1e-7 if kind == "floats" else 0)


def test_texas_format_loads_in_bounded_memory(tmp_path):
    """A new user's Texas-100 file: 1,200 rows x 6,169 binary features, more than one parse chunk. Peak
    memory while loading stays <= 3x the final float32 array (numpy reports its buffers to tracemalloc;
    parsing each value into a Python float, as an earlier loader did, takes ~30x)."""
    import tracemalloc

    rng = np.random.default_rng(5)
    rows, feats = 1200, 6169
    base = tmp_path / "texas" / "100"
    base.mkdir(parents=True)
    with open(base / "feats", "w") as f:
        for _ in range(rows // 100):
            block = rng.integers(0, 2, (100, feats))
            f.write("\n".join(",".join("01"[v] for v in row) for row in block) + "\n")
    (base / "labels").write_text("\n".join(str(v) for v in rng.integers(1, 101, rows)) + "\n")
    assert (base / "feats").stat().st_size > 8 * (1 << 20)  # 14 MB of text: several chunks
    tracemalloc.start()
    try:
        ds = load_dataset("texas100", tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ds.x.shape == (rows, feats) and ds.x.dtype == np.float32 and set(np.unique(ds.x)) == {0.0, 1.0}
    assert peak <= 3 * ds.x.nbytes, f"peak {peak / 2**20:.0f} MiB for a {ds.x.nbytes / 2**20:.0f} MiB array"


def test_missing_files_name_the_expected_paths(tmp_path):
    with pytest.raises(DatasetNotFound, match="purchase100: none of dataset_purchase, dataset_purchase.tgz, purchase100.npz found in"):
        load_dataset("purchase100", tmp_path)
    with pytest.raises(InputError, match="unknown dataset 'nope'"):
        load_dataset("nope")
    rows = {r["name"]: r for r in describe(tmp_path)}
    assert rows["digits"]["found"] == "scikit-learn" and rows["cifar100"]["found"] is None
    assert str(tmp_path) in rows["cifar100"]["looked_in"]


def test_environment_variable_is_searched(tmp_path, monkeypatch):
    text, _, _ = _purchase_csv()
    (tmp_path / "dataset_purchase").write_text(text)
    monkeypatch.setenv("MIA_FAST_DATA", str(tmp_path))
    assert len(load_dataset("purchase100")) == 6


def test_splits_are_deterministic_disjoint_and_balanced():
    a, b = make_splits(1000, members=400, nonmembers=300, adversary_fraction=0.25, seed=3), make_splits(1000, members=400, nonmembers=300, adversary_fraction=0.25, seed=3)
    assert a == b and a != make_splits(1000, members=400, nonmembers=300, adversary_fraction=0.25, seed=4)
    assert not set(a.members) & set(a.nonmembers)
    assert set(a.adversary_members) <= set(a.members) and not set(a.adversary_members) & set(a.eval_members)
    assert len(a.adversary_members) == 100 and len(a.eval_members) == len(a.eval_nonmembers) == 225
    with pytest.raises(ValueError, match="members \\+ nonmembers <= 1000"):
        make_splits(1000, members=900, nonmembers=200)


@pytest.mark.skipif(not (SHARED_LOCATION / "dataset_location.tgz").is_file(), reason="real Location-30 not present")
def test_real_location30():
    ds = load_dataset("location30", SHARED_LOCATION)
    assert ds.x.shape == (5010, 446) and ds.num_classes == 30 and set(np.unique(ds.x)) <= {0.0, 1.0}
    counts = np.bincount(ds.y, minlength=30)
    assert counts.min() == 97 and counts.max() == 308


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    ds = load_dataset("fashion-mnist")
    assert ds.x.shape == (70000, 1, 28, 28) and np.bincount(ds.y).tolist() == [7000] * 10
