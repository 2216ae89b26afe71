"""odezoo.data: real loaders on local fixtures, the digits split, toy densities and their log-densities."""

import gzip
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from odezoo import UnknownNameError, data
from odezoo._errors import DataError, OdezooError


def test_digits_split_is_fixed_stratified_and_raw():
    x_tr, y_tr = data.load("digits", "train")
    x_te, y_te = data.load("digits", "test")
    assert x_tr.shape == (1437, 8, 8, 1) and x_te.shape == (360, 8, 8, 1)
    assert x_tr.dtype == np.uint8 and x_tr.max() == 16 and x_tr.min() == 0
    counts = np.bincount(y_te, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: 360 / 10 per class, ±1
    again, _ = data.load("digits", "test")
    np.testing.assert_array_equal(again, x_te)
    # the two splits partition the 1,797 images
    from sklearn.datasets import load_digits

    everything = {
        img.tobytes() + bytes([t]) for img, t in zip(load_digits().images.astype(np.uint8), load_digits().target)
    }
    ours = {
        img[..., 0].tobytes() + bytes([t]) for img, t in zip(np.concatenate([x_tr, x_te]), np.concatenate([y_tr, y_te]))
    }
    assert ours == everything


def test_load_does_not_import_tensorflow():
    script = (
        "import sys, odezoo.data as d; x, y = d.load('digits', 'train'); "
        "d.toy_density('8gaussians', 10, seed=0); print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False False", out.stderr[-2000:]


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files(tmp_path, monkeypatch):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28)).astype(np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    _write_idx(str(folder / "t10k-images-idx3-ubyte.gz"), images)
    _write_idx(str(folder / "t10k-labels-idx1-ubyte.gz"), labels)
    monkeypatch.setenv("ODEZOO_DATA_DIR", str(tmp_path))
    x, y = data.load("fashion_mnist", "test")
    assert x.shape == (5, 28, 28, 1) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[..., 0], images)
    np.testing.assert_array_equal(y, labels)


def test_idx_reader_rejects_truncated_file(tmp_path):
    assert issubclass(DataError, OdezooError)
    path = str(tmp_path / "bad-idx3-ubyte")
    with open(path, "wb") as fh:
        fh.write(bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0" * 100)
    with pytest.raises(DataError, match="holds 100"):  # a DataError is an OdezooError
        data._read_idx(path)


@pytest.mark.skipif(not os.path.exists(data.DEBIAN_FASHION_MNIST), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package(monkeypatch):
    monkeypatch.delenv("ODEZOO_DATA_DIR", raising=False)
    x, y = data.load("fashion_mnist", "test")
    assert x.shape == (10000, 28, 28, 1) and np.bincount(y).tolist() == [1000] * 10


def test_mnist_reads_keras_npz_format(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    arrays = {
        "x_train": rng.integers(0, 256, (6, 28, 28)),
        "y_train": np.arange(6),
        "x_test": rng.integers(0, 256, (3, 28, 28)),
        "y_test": np.arange(3),
    }
    np.savez(tmp_path / "mnist.npz", **{k: v.astype(np.uint8) for k, v in arrays.items()})
    monkeypatch.setenv("ODEZOO_DATA_DIR", str(tmp_path))
    x, y = data.load("mnist", "test")
    assert x.shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(x[..., 0], arrays["x_test"])
    np.testing.assert_array_equal(y, [0, 1, 2])


def test_cifar10_reads_python_pickle_batches(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    flat = images.transpose(0, 3, 1, 2).reshape(4, 3072)  # the format stores channel planes
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as fh:
            pickle.dump({b"data": flat, b"labels": [i, 0, 1, 2]}, fh)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": flat[:2], b"labels": [7, 8]}, fh)
    monkeypatch.setenv("ODEZOO_DATA_DIR", str(tmp_path))
    x, y = data.load("cifar10", "train")
    assert x.shape == (20, 32, 32, 3)
    np.testing.assert_array_equal(x[:4], images)
    x, y = data.load("cifar10", "test")
    np.testing.assert_array_equal(x, images[:2])
    np.testing.assert_array_equal(y, [7, 8])
    # tf.data with CIFAR-style augmentation keeps shapes and values' range
    ds = data.dataset("cifar10", "train", batch_size=8, augment=True, seed=3)
    xb, yb = next(iter(ds))
    assert tuple(xb.shape) == (8, 32, 32, 3) and float(np.max(xb)) <= 255.0


def test_dataset_pipeline_for_digits():
    ds = data.dataset("digits", "test", batch_size=100)
    batches = list(ds)
    assert [int(b[0].shape[0]) for b in batches] == [100, 100, 100, 60]
    x, _ = data.load("digits", "test")
    np.testing.assert_array_equal(batches[0][0].numpy(), x[:100].astype(np.float32))  # no shuffle on test


def test_bad_names():
    with pytest.raises(UnknownNameError, match="'digit'.*Did you mean 'digits'"):
        data.load("digit", "train")
    with pytest.raises(ValueError, match="split='val'"):
        data.load("digits", "val")
    with pytest.raises(UnknownNameError, match="'8gaussian'"):
        data.toy_density("8gaussian", 10)
    with pytest.raises(ValueError, match="no closed form for 'moons'"):
        data.toy_log_prob("moons", np.zeros((1, 2)))


@pytest.mark.parametrize("name", data.TOY_DENSITIES)
def test_toy_density_shapes_and_seeding(name):
    a = data.toy_density(name, 1001, seed=5)
    assert a.shape == (1001, 2) and a.dtype == np.float32 and np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, data.toy_density(name, 1001, seed=5))
    assert not np.array_equal(a, data.toy_density(name, 1001, seed=6))
    assert 0.5 < float(a.std()) < 4.0  # on the FFJORD plots' scale, [-4, 4]^2


@pytest.mark.parametrize("name", data.TOY_LOG_PROB)
def test_toy_log_prob_is_a_normalised_density_matching_samples(name):
    g = np.linspace(-6, 6, 1201)
    xx, yy = np.meshgrid(g, g)
    grid = np.stack([xx.ravel(), yy.ravel()], 1)
    mass = np.exp(data.toy_log_prob(name, grid)).sum() * (g[1] - g[0]) ** 2
    assert mass == pytest.approx(1.0, abs=0.01)
    samples = data.toy_density(name, 20000, seed=0)
    logp = data.toy_log_prob(name, samples)
    assert np.all(np.isfinite(logp))  # every sample lies in the support
    # cross-entropy of the samples = entropy; 8gaussians H = 2.8317 (peer_flow_bench), checkerboard log 32
    entropy = {"8gaussians": 2.8317, "checkerboard": np.log(32.0)}[name]
    assert -logp.mean() == pytest.approx(entropy, abs=0.03)
