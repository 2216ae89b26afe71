"""Data files are untrusted (issue 12, item 4): hostile, corrupt, partial and absent files give one-line DataErrors.

Every fixture is built here in the real format; nothing touches the network (downloads are monkeypatched to fail,
HOME and ODEZOO_DATA_DIR point at temporary folders).
"""

import gzip
import os
import pickle
import struct
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from odezoo import OdezooError, data
from odezoo._errors import DataError


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No real data folder, Keras cache or download is reachable from these tests."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("ODEZOO_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", str(tmp_path / "no-debian"))

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://example.invalid: None -- [Errno -3] Temporary failure")

    monkeypatch.setattr(data, "_get_file", offline)


def _data_dir(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    monkeypatch.setenv("ODEZOO_DATA_DIR", str(folder))
    return folder


def _raises_one_line(match, fn, *args):
    with pytest.raises(DataError, match=match) as info:
        fn(*args)
    assert isinstance(info.value, OdezooError)
    assert "\n" not in str(info.value) and len(str(info.value)) < 600, str(info.value)
    return str(info.value)


# --------------------------------------------------------------------------- CIFAR-10 pickles
def _cifar_dict(n=3, labels=None, seed=0):
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"training batch 1 of 5",
        b"labels": list(range(n)) if labels is None else labels,
        b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def _cifar_folder(root, batch=None, files=None, protocol=2):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = files or [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        (folder / name).write_bytes(pickle.dumps(batch or _cifar_dict(), protocol=protocol))
    return folder


class _Gadget:
    """A pickle whose loading would create ``marker`` (builtins.open in write mode)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _SystemGadget:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("gadget", [_Gadget, _SystemGadget])
@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_pickle_gadget_is_refused_and_never_runs(tmp_path, monkeypatch, gadget, protocol):
    marker = tmp_path / "pwned"
    batch = _cifar_dict()
    batch[b"batch_label"] = gadget(str(marker))
    _cifar_folder(_data_dir(tmp_path, monkeypatch), batch=batch, protocol=protocol)
    msg = _raises_one_line("data_batch_1.*refus", data.load, "cifar10", "train")
    assert not marker.exists()
    assert "open" in msg or "system" in msg


def test_cifar_unpickler_refuses_numpy_callables_outside_the_format(tmp_path, monkeypatch):
    """numpy.ndarray is allowed only as _reconstruct's argument: called directly it could allocate anything."""

    class Alloc:
        def __reduce__(self):
            return (np.ndarray, ((2**40,), "u1"))

    class Load:
        def __reduce__(self):
            return (np.load, ("x.npy",))

    for gadget in (Alloc(), Load()):
        batch = _cifar_dict()
        batch[b"filenames"] = gadget
        _cifar_folder(_data_dir(tmp_path, monkeypatch), batch=batch)
        _raises_one_line("data_batch_1", data.load, "cifar10", "train")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_real_format_still_loads(tmp_path, monkeypatch, protocol):
    batch = _cifar_dict(n=4, labels=[9, 0, 3, 3])
    _cifar_folder(_data_dir(tmp_path, monkeypatch), batch=batch, protocol=protocol)
    x, y = data.load("cifar10", "test")
    assert x.shape == (4, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x, batch[b"data"].reshape(4, 3, 32, 32).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(y, [9, 0, 3, 3])
    x, _ = data.load("cifar10", "train")
    assert x.shape == (20, 32, 32, 3)


def _py2_batch(data, labels):
    """A batch byte for byte as Python 2's cPickle (protocol 2) wrote CIFAR-10: str as BINSTRING, numpy.core."""

    def s(b):
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    n, w = data.shape
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
        + s(b"b")
        + b"\x87R"
        + b"(K\x01M"
        + struct.pack("<H", n)
        + b"M"
        + struct.pack("<H", w)
        + b"\x86"
        + b"cnumpy\ndtype\n"
        + s(b"u1")
        + b"K\x00K\x01\x87R(K\x03"
        + s(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89"
        + s(data.tobytes())
        + b"tb"
    )
    labels = b"](" + b"".join(b"K" + bytes([int(v)]) for v in labels) + b"e"
    return (
        b"\x80\x02}("
        + s(b"batch_label")
        + s(b"testing batch 1 of 1")
        + s(b"data")
        + array
        + s(b"labels")
        + labels
        + b"u."
    )


def test_cifar_python2_pickle_as_shipped_loads(tmp_path, monkeypatch):
    flat = np.random.default_rng(5).integers(0, 256, (3, 3072)).astype(np.uint8)
    assert pickle.loads(_py2_batch(flat, [1, 2, 3]), encoding="bytes")[b"labels"] == [1, 2, 3]  # the fixture
    folder = _data_dir(tmp_path, monkeypatch) / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(_py2_batch(flat, [1, 2, 3]))
    x, y = data.load("cifar10", "test")
    np.testing.assert_array_equal(x, flat.reshape(3, 3, 32, 32).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(y, [1, 2, 3])


def test_cifar_truncated_or_junk_batch(tmp_path, monkeypatch):
    folder = _cifar_folder(_data_dir(tmp_path, monkeypatch))
    whole = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(whole[: len(whole) // 2])
    _raises_one_line("test_batch", data.load, "cifar10", "test")
    (folder / "test_batch").write_bytes(b"\x00junk" * 10)
    _raises_one_line("test_batch", data.load, "cifar10", "test")
    (folder / "test_batch").write_bytes(b"")
    _raises_one_line("test_batch", data.load, "cifar10", "test")


@pytest.mark.parametrize(
    "change, match",
    [
        ({b"labels": [0, 1, 10]}, r"label 10.*\[0, 10\)"),
        ({b"labels": [0, 1, -1]}, r"label -1"),
        ({b"labels": [0, 1]}, r"2 labels.*3 images"),
        ({b"labels": ["a", "b", "c"]}, r"labels"),
        ({b"data": np.zeros((3, 3071), np.uint8)}, r"\(3, 3071\)"),
        ({b"data": np.zeros((3, 3072), np.float32)}, r"float32"),
        ({b"data": None}, r"data"),
    ],
)
def test_cifar_bad_contents(tmp_path, monkeypatch, change, match):
    batch = {**_cifar_dict(), **change}
    _cifar_folder(_data_dir(tmp_path, monkeypatch), batch=batch, files=["test_batch"])
    _raises_one_line(f"test_batch.*{match}", data.load, "cifar10", "test")


def test_cifar_shared_reference_labels_do_not_expand(tmp_path, monkeypatch):
    """A few kB of pickle can hold a list of lists sharing one list (200^3 labels); it is refused, not expanded."""
    inner = [0] * 200
    middle = [inner] * 200
    batch = {**_cifar_dict(), b"labels": [middle] * 200}
    _cifar_folder(_data_dir(tmp_path, monkeypatch), batch=batch, files=["test_batch"])
    tracemalloc.start()
    try:
        _raises_one_line("test_batch.*labels", data.load, "cifar10", "test")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, peak


def test_cifar_object_array_is_refused(tmp_path, monkeypatch):
    batch = {**_cifar_dict(), b"data": np.zeros((3, 3072), dtype=object)}
    _cifar_folder(_data_dir(tmp_path, monkeypatch), batch=batch, files=["test_batch"])
    _raises_one_line("test_batch.*dtype", data.load, "cifar10", "test")


def test_cifar_not_a_dict_or_missing_key(tmp_path, monkeypatch):
    root = _data_dir(tmp_path, monkeypatch)
    _cifar_folder(root, batch=[1, 2, 3], files=["test_batch"])
    _raises_one_line("test_batch.*dict", data.load, "cifar10", "test")
    batch = _cifar_dict()
    del batch[b"labels"]
    _cifar_folder(root, batch=batch, files=["test_batch"])
    _raises_one_line("test_batch.*labels", data.load, "cifar10", "test")


def test_cifar_partial_folder_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    _cifar_folder(tmp_path / "home" / ".keras" / "datasets")  # a complete copy that must not be used
    _cifar_folder(_data_dir(tmp_path, monkeypatch), files=[f"data_batch_{i}" for i in (1, 2, 4)])
    msg = _raises_one_line("cifar-10-batches-py.*data_batch_3.*data_batch_5", data.load, "cifar10", "train")
    assert "test_batch" not in msg.split("missing")[1].split("(")[0]


def test_cifar_found_where_keras_itself_extracts_it(tmp_path):
    """keras.datasets.cifar10 extracts into cifar-10-batches-py-target/: that copy is used, not downloaded again."""
    _cifar_folder(tmp_path / "home" / ".keras" / "datasets" / "cifar-10-batches-py-target")
    x, y = data.load("cifar10", "test")  # downloads fail in these tests
    assert x.shape == (3, 32, 32, 3) and y.tolist() == [0, 1, 2]


# --------------------------------------------------------------------------- Fashion-MNIST IDX files
def _idx_bytes(array, dims=None):
    dims = array.shape if dims is None else dims
    return bytes([0, 0, 0x08, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims) + array.tobytes()


def _fashion_folder(root, split="t10k", n=4, labels=None, images=True, label_file=True):
    folder = root / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(3).integers(0, 256, (n, 28, 28)).astype(np.uint8)
    y = np.arange(n, dtype=np.uint8) % 10 if labels is None else np.asarray(labels, np.uint8)
    if images:
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(x)))
    if label_file:
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(y)))
    return folder, x, y


def test_fashion_images_without_labels_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    debian, _, _ = _fashion_folder(tmp_path / "debian")
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", str(debian))
    data.load("fashion_mnist", "test")  # the fallback copy itself is fine
    _fashion_folder(_data_dir(tmp_path, monkeypatch), label_file=False)
    _raises_one_line(r"fashion-mnist.*missing t10k-labels-idx1-ubyte", data.load, "fashion_mnist", "test")


def test_fashion_folder_with_the_other_split_only_is_partial(tmp_path, monkeypatch):
    _fashion_folder(_data_dir(tmp_path, monkeypatch), split="train")
    _raises_one_line("missing t10k-images-idx3-ubyte.*t10k-labels-idx1-ubyte", data.load, "fashion_mnist", "test")


def test_fashion_label_out_of_range_and_count_mismatch(tmp_path, monkeypatch):
    root = _data_dir(tmp_path, monkeypatch)
    _fashion_folder(root, labels=[0, 1, 200, 3])
    _raises_one_line(r"t10k-labels-idx1-ubyte.gz.*label 200.*\[0, 10\)", data.load, "fashion_mnist", "test")
    _fashion_folder(root, labels=[0, 1, 2])
    _raises_one_line(r"t10k-labels-idx1-ubyte.gz.*3 labels.*4 images", data.load, "fashion_mnist", "test")


def test_fashion_wrong_image_shape(tmp_path, monkeypatch):
    folder, _, _ = _fashion_folder(_data_dir(tmp_path, monkeypatch))
    odd = np.zeros((4, 27, 28), np.uint8)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(odd)))
    _raises_one_line(r"t10k-images-idx3-ubyte.gz.*\(28, 28\)", data.load, "fashion_mnist", "test")


def _corrupt_gz(payload):
    gz = bytearray(gzip.compress(payload))
    mid = len(gz) // 2
    gz[mid : mid + 8] = bytes(255 - b for b in gz[mid : mid + 8])
    return bytes(gz)


@pytest.mark.parametrize(
    "kind",
    ["truncated-gz", "corrupt-gz", "not-gzip", "empty", "bad-magic", "short-header", "truncated-body", "extra-bytes"],
)
def test_idx_faults_are_one_line_data_errors(tmp_path, monkeypatch, kind):
    folder, x, _ = _fashion_folder(_data_dir(tmp_path, monkeypatch), n=50)
    good = _idx_bytes(x)
    payload = {
        "truncated-gz": gzip.compress(good)[: len(gzip.compress(good)) // 2],
        "corrupt-gz": _corrupt_gz(good),
        "not-gzip": b"this is not gzip at all",
        "empty": b"",
        "bad-magic": gzip.compress(b"\x00\x00\x0d\x03" + good[4:]),
        "short-header": gzip.compress(bytes([0, 0, 8, 3, 0, 0])),
        "truncated-body": gzip.compress(good[:-10]),
        "extra-bytes": gzip.compress(good + b"\x00" * 10),
    }[kind]
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(payload)
    _raises_one_line("t10k-images-idx3-ubyte.gz", data.load, "fashion_mnist", "test")


@pytest.mark.parametrize("gz", [False, True])
def test_idx_absurd_header_is_refused_before_allocating(tmp_path, gz):
    """A header claiming 2^32 items of 28x28 is checked against the file's size before anything is read."""
    path = tmp_path / ("huge-idx3-ubyte" + (".gz" if gz else ""))
    body = _idx_bytes(np.zeros((2, 28, 28), np.uint8), dims=(2**32 - 1, 28, 28))
    path.write_bytes(gzip.compress(body) if gz else body)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="huge-idx3-ubyte"):
            data._read_idx(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, peak


# --------------------------------------------------------------------------- MNIST npz
def _mnist_arrays(n=5):
    rng = np.random.default_rng(4)
    return {
        "x_train": rng.integers(0, 256, (n, 28, 28)).astype(np.uint8),
        "y_train": np.arange(n, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (3, 28, 28)).astype(np.uint8),
        "y_test": np.arange(3, dtype=np.uint8),
    }


@pytest.mark.parametrize("compressed", [False, True])
def test_mnist_truncated_or_junk_npz(tmp_path, monkeypatch, compressed):
    path = _data_dir(tmp_path, monkeypatch) / "mnist.npz"
    (np.savez_compressed if compressed else np.savez)(path, **_mnist_arrays())
    whole = path.read_bytes()
    for junk in (whole[: len(whole) // 2], whole[:-30], b"PK\x03\x04 junk", b"", _corrupt_gz(whole)[: len(whole)]):
        path.write_bytes(junk)
        _raises_one_line("mnist.npz", data.load, "mnist", "test")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"y_test": None}, r"missing y_test"),
        ({"x_test": np.zeros((3, 28, 27), np.uint8)}, r"x_test.*\(3, 28, 27\)"),
        ({"x_test": np.zeros((3, 28, 28), np.float64)}, r"x_test.*float64"),
        ({"y_test": np.array([0.5, 1, 2])}, r"y_test.*float64"),
        ({"y_test": np.array([0, 1, 10], np.uint8)}, r"y_test.*label 10"),
        ({"y_test": np.array([0, 1], np.uint8)}, r"2 labels.*3 images"),
        ({"x_test": np.array([None, 1, 2], dtype=object)}, r"x_test.*object"),
    ],
)
def test_mnist_bad_contents(tmp_path, monkeypatch, change, match):
    arrays = {k: v for k, v in {**_mnist_arrays(), **change}.items() if v is not None}
    path = _data_dir(tmp_path, monkeypatch) / "mnist.npz"
    np.savez(path, **arrays)
    _raises_one_line(f"mnist.npz.*{match}", data.load, "mnist", "test")


def test_mnist_absurd_npy_header_is_refused_before_allocating(tmp_path, monkeypatch):
    """An .npy member whose header claims 10^8 images but holds 100 bytes is refused before numpy allocates."""
    import io
    import zipfile

    path = _data_dir(tmp_path, monkeypatch) / "mnist.npz"
    arrays = _mnist_arrays()
    del arrays["x_test"]
    np.savez(path, **arrays)
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "|u1", "fortran_order": False, "shape": (10**8, 28, 28)})
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("x_test.npy", member.getvalue() + bytes(100))
    tracemalloc.start()
    try:
        _raises_one_line(r"mnist.npz.*x_test.*\(100000000, 28, 28\)", data.load, "mnist", "test")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, peak


def test_mnist_bad_copy_in_data_dir_is_not_skipped_for_the_keras_cache(tmp_path, monkeypatch):
    cache = tmp_path / "home" / ".keras" / "datasets"
    cache.mkdir(parents=True)
    np.savez(cache / "mnist.npz", **_mnist_arrays())
    arrays = _mnist_arrays()
    del arrays["x_test"]
    np.savez(_data_dir(tmp_path, monkeypatch) / "mnist.npz", **arrays)
    _raises_one_line("data/mnist.npz.*missing x_test", data.load, "mnist", "test")


# --------------------------------------------------------------------------- absent, offline
@pytest.mark.parametrize(
    "name, files",
    [
        ("mnist", ["mnist.npz", "ODEZOO_DATA_DIR", ".keras/datasets"]),
        ("cifar10", ["cifar-10-batches-py", "data_batch_1", "test_batch", "ODEZOO_DATA_DIR"]),
        (
            "fashion_mnist",
            [
                "train-images-idx3-ubyte.gz",
                "train-labels-idx1-ubyte.gz",
                "ODEZOO_DATA_DIR/fashion-mnist",
                "dataset-fashion-mnist",
            ],
        ),
    ],
)
def test_absent_offline_says_where_to_put_the_files(tmp_path, monkeypatch, name, files):
    _data_dir(tmp_path, monkeypatch)
    msg = _raises_one_line("could not be downloaded.*URL fetch failure", data.load, name, "train")
    for part in files:
        assert part in msg, (part, msg)


def test_offline_through_keras_get_file(tmp_path, monkeypatch):
    """The real download path: keras.utils.get_file raising (no network) becomes the same one-line DataError."""
    keras = pytest.importorskip("keras")
    monkeypatch.undo()
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("ODEZOO_DATA_DIR", raising=False)
    calls = []

    def offline(fname, *args, **kwargs):
        calls.append(fname)
        raise Exception(f"URL fetch failure on {kwargs.get('origin')}: None -- [Errno -3] Temporary failure")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    _raises_one_line("MNIST.*could not be downloaded.*mnist.npz", data.load, "mnist", "test")
    _raises_one_line("CIFAR-10.*could not be downloaded.*cifar-10-batches-py", data.load, "cifar10", "test")
    assert calls == ["mnist.npz", "cifar-10-batches-py"]


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_data_dir_env_naming_no_folder_is_an_error(tmp_path, monkeypatch, kind):
    target = tmp_path / "nope"
    if kind == "file":
        target.write_text("x")
    monkeypatch.setenv("ODEZOO_DATA_DIR", str(target))
    for name in ("mnist", "cifar10", "fashion_mnist"):
        _raises_one_line(f"ODEZOO_DATA_DIR.*{target}", data.load, name, "test")
    data.load("digits", "test")  # bundled data does not read the folder


def test_file_loaders_do_not_import_tensorflow(tmp_path):
    """The hardened readers (IDX, npz, restricted unpickler) still leave TensorFlow and Keras unimported."""
    root = tmp_path / "d"
    _fashion_folder(root)
    np.savez(root / "mnist.npz", **_mnist_arrays())
    _cifar_folder(root)
    script = (
        "import sys, odezoo.data as d\n"
        "for name in ('fashion_mnist', 'mnist', 'cifar10'): d.load(name, 'test')\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    env = {**os.environ, "ODEZOO_DATA_DIR": str(root)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert out.stdout.strip() == "False False", out.stderr[-2000:]


def test_cli_train_on_a_hostile_cifar_batch_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    """The command line prints the DataError as one line, exits 2, runs nothing and writes no manifest entry."""
    from odezoo import cli

    marker = tmp_path / "pwned"
    batch = {**_cifar_dict(), b"batch_label": _SystemGadget(str(marker))}
    _cifar_folder(_data_dir(tmp_path, monkeypatch), batch=batch)
    out = tmp_path / "out"
    rc = cli.main(["train", "resnet", "--dataset", "cifar10", "--epochs", "1", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not marker.exists()
    assert err.count("\n") == 0 and err.startswith("odezoo: error: ") and "data_batch_1" in err, err
    assert not (out / "manifest.json").exists()
