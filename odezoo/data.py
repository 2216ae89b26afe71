"""Datasets: raw images as numpy arrays (no TensorFlow import), tf.data pipelines, toy densities.

``load(name, split)`` returns ``(x, y)`` with images as their dataset stores
them, shape (N, H, W, C) and dtype uint8:

- ``digits``: scikit-learn's bundled 8×8 handwritten digits (values 0-16,
  1,797 images), with one fixed stratified split (1,437 train / 360 test,
  ``random_state=0``) that everyone shares.
- ``fashion_mnist``: 70,000 28×28 images (0-255), read from the IDX files of
  Debian's ``dataset-fashion-mnist`` package (/usr/share/datasets/fashion-mnist)
  or ``$ODEZOO_DATA_DIR/fashion-mnist``; else downloaded by Keras.
- ``mnist``: ``mnist.npz`` as keras.datasets stores it; ``cifar10``: the
  ``cifar-10-batches-py`` pickles. Both are looked for in ``$ODEZOO_DATA_DIR``
  and Keras's cache (~/.keras/datasets) and downloaded with Keras otherwise.
- toy densities (``8gaussians``, ``checkerboard``, ...): ``y`` is None; see
  :func:`toy_density`.
"""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np

from odezoo._errors import OdezooError, UnknownNameError, bad_value

IMAGE_DATASETS = ("digits", "fashion_mnist", "mnist", "cifar10")
TOY_DENSITIES = ("8gaussians", "checkerboard", "pinwheel", "2spirals", "moons", "rings", "circles", "swissroll")
SPLITS = ("train", "test")
DATA_DIR_ENV = "ODEZOO_DATA_DIR"
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
# Sizes of the toy splits drawn by load(); the seeds make them fixed.
TOY_SPLIT_SIZE = {"train": 50_000, "test": 5_000}
TOY_SPLIT_SEED = {"train": 0, "test": 1}

INFO = {
    "digits": {"shape": (8, 8, 1), "classes": 10, "max_value": 16},
    "fashion_mnist": {"shape": (28, 28, 1), "classes": 10, "max_value": 255},
    "mnist": {"shape": (28, 28, 1), "classes": 10, "max_value": 255},
    "cifar10": {"shape": (32, 32, 3), "classes": 10, "max_value": 255},
}


def names() -> list[str]:
    return list(IMAGE_DATASETS) + list(TOY_DENSITIES)


def load(name: str, split: str = "train"):
    """``(x, y)`` numpy arrays of a dataset split; images raw (N, H, W, C) uint8, labels int64."""
    if split not in SPLITS:
        raise bad_value("split", split, "'train' or 'test'")
    if name == "digits":
        return _digits(split)
    if name == "fashion_mnist":
        return _fashion_mnist(split)
    if name == "mnist":
        return _mnist(split)
    if name == "cifar10":
        return _cifar10(split)
    if name in TOY_DENSITIES:
        return toy_density(name, TOY_SPLIT_SIZE[split], seed=TOY_SPLIT_SEED[split]), None
    raise UnknownNameError("dataset", name, names())


# --------------------------------------------------------------------------- images
def _digits(split):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.images.astype(np.uint8)[..., None]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=360, stratify=y, random_state=0)
    return (x_tr, y_tr) if split == "train" else (x_te, y_te)


def _read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise OdezooError(f"{path} is not an unsigned-byte IDX file (magic {data[:4]!r}).")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(data) - offset != count:
        raise OdezooError(f"{path}: header says {dims} ({count} bytes) but holds {len(data) - offset}.")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find(folder, stem):
    for candidate in (stem + ".gz", stem):
        path = os.path.join(folder, candidate)
        if os.path.exists(path):
            return path
    return None


def fashion_mnist_dirs() -> list[str]:
    dirs = []
    if os.environ.get(DATA_DIR_ENV):
        dirs.append(os.path.join(os.environ[DATA_DIR_ENV], "fashion-mnist"))
    dirs.append(DEBIAN_FASHION_MNIST)
    return dirs


def fashion_mnist_available() -> bool:
    """True when the IDX files are on disk (no download needed)."""
    return any(_find(d, "t10k-images-idx3-ubyte") for d in fashion_mnist_dirs())


def _fashion_mnist(split):
    prefix = "train" if split == "train" else "t10k"
    for folder in fashion_mnist_dirs():
        images = _find(folder, f"{prefix}-images-idx3-ubyte")
        labels = _find(folder, f"{prefix}-labels-idx1-ubyte")
        if images and labels:
            x, y = _read_idx(images), _read_idx(labels)
            if len(x) != len(y):
                raise OdezooError(f"Fashion-MNIST {split}: {len(x)} images but {len(y)} labels in {folder}.")
            return x[..., None], y.astype(np.int64)
    try:
        import keras

        (x_tr, y_tr), (x_te, y_te) = keras.datasets.fashion_mnist.load_data()
    except Exception as exc:
        raise OdezooError(
            "Fashion-MNIST is not installed and could not be downloaded "
            f"({type(exc).__name__}: {exc}). Install it with `apt-get install dataset-fashion-mnist`, "
            f"or put the IDX files in ${DATA_DIR_ENV}/fashion-mnist."
        ) from exc
    x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    return x[..., None], y.astype(np.int64)


def _cache_dirs():
    dirs = []
    if os.environ.get(DATA_DIR_ENV):
        dirs.append(os.environ[DATA_DIR_ENV])
    dirs.append(os.path.join(os.path.expanduser("~"), ".keras", "datasets"))
    return dirs


def _mnist(split):
    path = next((os.path.join(d, "mnist.npz") for d in _cache_dirs()
                 if os.path.exists(os.path.join(d, "mnist.npz"))), None)
    if path is None:
        import keras

        path = keras.utils.get_file(
            "mnist.npz", "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz")
    with np.load(path, allow_pickle=False) as f:
        x, y = f[f"x_{split}"], f[f"y_{split}"]
    if x.ndim != 3 or x.shape[1:] != (28, 28) or len(x) != len(y):
        raise OdezooError(f"{path}: expected x_{split} of shape (N, 28, 28); got {x.shape}, {len(y)} labels.")
    return x.astype(np.uint8)[..., None], y.astype(np.int64)


def _cifar_batch(path):
    with open(path, "rb") as fh:
        batch = pickle.load(fh, encoding="bytes")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise OdezooError(f"{path}: expected data (N, 3072) and N labels; got {data.shape}, {len(labels)}.")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _cifar10(split):
    folder = next((os.path.join(d, "cifar-10-batches-py") for d in _cache_dirs()
                   if os.path.isdir(os.path.join(d, "cifar-10-batches-py"))), None)
    if folder is None:
        import keras

        archive = keras.utils.get_file(
            "cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", extract=True)
        folder = archive if os.path.basename(archive) == "cifar-10-batches-py" else os.path.join(
            archive, "cifar-10-batches-py")
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    parts = [_cifar_batch(os.path.join(folder, f)) for f in files]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# --------------------------------------------------------------------------- tf.data
def dataset(name, split="train", *, batch_size=128, shuffle=None, augment=False, normalize=False,
            seed=0, repeat=False, drop_remainder=False):
    """A ``tf.data.Dataset`` of ``(x, y)`` batches (float32 images), or ``x`` for toy densities.

    Args:
        shuffle: shuffle each epoch (default: True for the train split).
        augment: CIFAR-style augmentation: pad 4, random crop back, random
            horizontal flip (train split only).
        normalize: standardise with the dataset's raw-pixel mean/std (the zoo's
            models normalise inside, so the default is False).
    """
    import tensorflow as tf

    x, y = load(name, split)
    shuffle = (split == "train") if shuffle is None else shuffle
    x = x.astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, y) if y is not None else x)
    if shuffle:
        ds = ds.shuffle(min(len(x), 60_000), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if y is not None and (augment or normalize):
        from odezoo.nets import NORMALIZATION  # noqa: WPS433 (imports keras; only for tf.data users)

        mean, std = NORMALIZATION[name]
        pad = 4

        def transform(images, labels):
            if augment:
                h, w = images.shape[1], images.shape[2]
                images = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
                images = tf.image.random_crop(images, tf.stack([tf.shape(images)[0], h, w, images.shape[3]]),
                                              seed=seed)
                flip = tf.random.uniform([tf.shape(images)[0], 1, 1, 1], seed=seed) < 0.5
                images = tf.where(flip, tf.reverse(images, axis=[2]), images)
            if normalize:
                images = (images - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
            return images, labels

        ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- toy densities
def toy_density(name: str, n: int, seed=None) -> np.ndarray:
    """``n`` points (float32, shape (n, 2)) of a 2-D toy density of the FFJORD paper's experiments.

    Generated as in Grathwohl et al. (2019), ``lib/toy_data.py`` of their code:
    8gaussians, checkerboard, pinwheel, 2spirals, moons, rings, circles, swissroll.
    """
    if name not in TOY_DENSITIES:
        raise UnknownNameError("toy density", name, TOY_DENSITIES)
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise bad_value("n", n, "a positive int")
    rng = np.random.default_rng(seed)
    x = _TOY[name](rng, int(n))
    return np.asarray(x[:n], dtype=np.float32)


def _eight_gaussians(rng, n):
    centers = _eight_centers()
    idx = rng.integers(0, 8, n)
    return (rng.normal(size=(n, 2)) * 0.5 + centers[idx]) / 1.414


def _eight_centers():
    s = 1.0 / np.sqrt(2.0)
    return 4.0 * np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)], dtype=np.float64)


def _checkerboard(rng, n):
    x1 = rng.random(n) * 4 - 2
    x2 = rng.random(n) - rng.integers(0, 2, n) * 2 + np.floor(x1) % 2
    return np.stack([x1, x2], axis=1) * 2


def _pinwheel(rng, n):
    arms, radial_std, tangential_std, rate = 5, 0.3, 0.1, 0.25
    per = -(-n // arms)
    feats = rng.normal(size=(arms * per, 2)) * np.array([radial_std, tangential_std])
    feats[:, 0] += 1.0
    labels = np.repeat(np.arange(arms), per)
    angles = np.linspace(0, 2 * np.pi, arms, endpoint=False)[labels] + rate * np.exp(feats[:, 0])
    c, s = np.cos(angles), np.sin(angles)
    rotated = np.stack([feats[:, 0] * c + feats[:, 1] * s, -feats[:, 0] * s + feats[:, 1] * c], axis=1)
    return 2 * rng.permutation(rotated)


def _two_spirals(rng, n):
    half = -(-n // 2)
    t = np.sqrt(rng.random((half, 1))) * 540 * (2 * np.pi) / 360
    d1x = -np.cos(t) * t + rng.random((half, 1)) * 0.5
    d1y = np.sin(t) * t + rng.random((half, 1)) * 0.5
    x = np.vstack((np.hstack((d1x, d1y)), np.hstack((-d1x, -d1y)))) / 3
    x = x + rng.normal(size=x.shape) * 0.1
    return rng.permutation(x)


def _moons(rng, n):
    from sklearn.datasets import make_moons

    x, _ = make_moons(n_samples=n, noise=0.1, random_state=int(rng.integers(2**31 - 1)))
    return x * 2 + np.array([-1.0, -0.2])


def _rings(rng, n):
    counts = [n // 4] * 3
    counts = counts + [n - sum(counts)]  # radii 1, 0.75, 0.5, 0.25 (× 3); the last takes the rest
    pts = []
    for radius, count in zip((1.0, 0.75, 0.5, 0.25), counts):
        a = np.linspace(0, 2 * np.pi, count, endpoint=False)
        pts.append(np.stack([np.cos(a), np.sin(a)], axis=1) * radius)
    x = rng.permutation(np.concatenate(pts) * 3.0)
    return x + rng.normal(scale=0.08, size=x.shape)


def _circles(rng, n):
    from sklearn.datasets import make_circles

    x, _ = make_circles(n_samples=n, factor=0.5, noise=0.08, random_state=int(rng.integers(2**31 - 1)))
    return x * 3


def _swissroll(rng, n):
    from sklearn.datasets import make_swiss_roll

    x, _ = make_swiss_roll(n_samples=n, noise=1.0, random_state=int(rng.integers(2**31 - 1)))
    return x[:, [0, 2]] / 5.0


_TOY = {
    "8gaussians": _eight_gaussians, "checkerboard": _checkerboard, "pinwheel": _pinwheel,
    "2spirals": _two_spirals, "moons": _moons, "rings": _rings, "circles": _circles, "swissroll": _swissroll,
}
TOY_LOG_PROB = ("8gaussians", "checkerboard")


def toy_log_prob(name: str, x) -> np.ndarray:
    """Closed-form log-density of a toy density at points ``x`` (n, 2); float64.

    Available for 8gaussians (an equal-weight mixture of 8 isotropic Gaussians,
    std 0.5/1.414, centres 4·(unit vectors at multiples of 45°)/1.414) and
    checkerboard (uniform, density 1/32, on 8 squares of side 2; −inf off them).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"toy_log_prob expects points of shape (n, 2). Received: shape={x.shape}.")
    if name == "8gaussians":
        centers = _eight_centers() / 1.414
        std = 0.5 / 1.414
        d2 = np.sum((x[:, None, :] - centers[None]) ** 2, axis=-1)
        logs = -d2 / (2 * std**2) - np.log(2 * np.pi * std**2) - np.log(8.0)
        m = logs.max(axis=1)
        return m + np.log(np.exp(logs - m[:, None]).sum(axis=1))
    if name == "checkerboard":
        u1, u2 = x[:, 0] / 2, x[:, 1] / 2
        parity = np.floor(u1) % 2
        low = (u2 >= parity - 2) & (u2 < parity - 1)
        high = (u2 >= parity) & (u2 < parity + 1)
        inside = (u1 >= -2) & (u1 < 2) & (low | high)
        return np.where(inside, -np.log(32.0), -np.inf)
    if name in TOY_DENSITIES:
        raise ValueError(
            f"toy_log_prob has no closed form for {name!r}. Received: name={name!r}. "
            f"Allowed: {', '.join(TOY_LOG_PROB)}."
        )
    raise UnknownNameError("toy density", name, TOY_DENSITIES)
