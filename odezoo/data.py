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

Irregularly sampled time series (``load_series(name, split)`` -> :class:`Series`,
:func:`irregular`, :func:`read_ts`, :func:`spirals`) live in :mod:`odezoo._series`
and are exported here (docs/timeseries.md).

Data files are untrusted input. CIFAR pickles go through a restricted
unpickler (dicts, lists, bytes, ints and plain numeric numpy arrays only); IDX
and npz headers are checked against the file's size before anything is
allocated; labels must lie in ``[0, classes)`` and match the images in number.
A corrupt, truncated, partial or absent file raises ``DataError`` with one line
naming the file and the fault (offline: which files to put where). A folder
holding part of a dataset is an error, never a reason to use another copy.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import re
import zipfile
import zlib

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:  # odezoo.data.load must not import TensorFlow
    import tensorflow as tf

from odezoo import checks
from odezoo._errors import DataError, OdezooError, UnknownNameError  # noqa: F401 (data.OdezooError)
from odezoo import _series
from odezoo._series import (  # noqa: F401 (odezoo.data's public time-series API)
    Series,
    irregular,
    read_ts,
    series_names,
    sktime_data_dir,
    spiral_arcs,
    spirals,
)
from odezoo.checks import bad_value

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


def load_series(name: str, split: str = "train") -> Series:
    """A named time-series dataset's split as a :class:`Series`, looked for in ``$ODEZOO_DATA_DIR``
    first (:func:`odezoo._series.load_series` has the names and the search; docs/timeseries.md).

    Raises:
        DataError: a file is missing, unreadable or inconsistent (one line naming it), or
            ``$ODEZOO_DATA_DIR`` names no folder.
    """
    return _series.load_series(name, split, data_dir=_data_dir())


def names() -> list[str]:
    return list(IMAGE_DATASETS) + list(TOY_DENSITIES)


def load(name: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` numpy arrays of a dataset split; images raw (N, H, W, C) uint8, labels int64.

    Raises:
        DataError: a data file is missing (and cannot be downloaded), corrupt, truncated or inconsistent.
    """
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


# Data files are untrusted input: every fault below becomes one DataError line naming the file.
_DEFLATE_MAX_RATIO = 1032  # deflate cannot expand one byte into more than ~1032
_READ_ERRORS = (OSError, EOFError, zlib.error, zipfile.BadZipFile, ValueError, MemoryError)


def _fault(path, what: str) -> DataError:
    """The house form of a data-file fault: ``<file>: <what is wrong>.``, on one line."""
    return DataError(f"{os.fspath(path)!s}: {' '.join(what.split())}.".replace("\n", "\\n"))


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _data_dir():
    """``$ODEZOO_DATA_DIR`` (None when unset); naming no folder is an error, not a silent fallback."""
    folder = os.environ.get(DATA_DIR_ENV)
    if not folder:
        return None
    if not os.path.isdir(folder):
        raise DataError(
            f"${DATA_DIR_ENV}={folder!r} is not a folder (missing or a file); "
            "point it at the folder that holds the datasets, or unset it."
        )
    return folder


def _cache_dirs():
    folder = _data_dir()
    return ([folder] if folder else []) + [os.path.join(os.path.expanduser("~"), ".keras", "datasets")]


def _env_now() -> str:
    return f"{DATA_DIR_ENV}={os.environ[DATA_DIR_ENV]}" if os.environ.get(DATA_DIR_ENV) else f"{DATA_DIR_ENV} unset"


def _where(what: str) -> str:
    return f"put {what} in ${DATA_DIR_ENV} ({_env_now()}) or ~/.keras/datasets"


def _get_file(fname, **kwargs):
    import keras  # only for a download; load() otherwise never imports Keras

    return keras.utils.get_file(fname, **kwargs)


def _download(dataset: str, fname: str, hint: str, **kwargs) -> str:
    try:
        return _get_file(fname, **kwargs)
    except Exception as exc:  # keras raises a bare Exception offline
        raise DataError(f"{dataset} is not on disk and could not be downloaded ({_why(exc)}); {hint}.") from exc


def _check_labels(path, labels, n_images: int, name: str, key: str = "labels"):
    """Labels as int64, refusing a count mismatch or a label outside ``[0, classes)`` (it trains to NaN)."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise _fault(path, f"{key} must be a 1-D integer array; got dtype {labels.dtype}, shape {labels.shape}")
    if len(labels) != n_images:
        raise _fault(path, f"{key}: {len(labels)} labels for {n_images} images")
    classes = INFO[name]["classes"]
    bad = labels[(labels < 0) | (labels >= classes)]
    if bad.size:
        raise _fault(path, f"{key}: label {int(bad[0])} outside [0, {classes}) ({name} has {classes} classes)")
    return labels.astype(np.int64)


def _check_images(path, x, item_shape, key="images"):
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.shape[1:] != item_shape or x.ndim < 2:
        got = f"dtype {x.dtype}, shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise _fault(path, f"{key} must be uint8 of shape (N, {', '.join(map(str, item_shape))}); got {got}")
    return x


def _read_idx(path, item_shape=None):
    """An unsigned-byte IDX array; the header is checked against the file's size before the body is read."""
    gz = path.endswith(".gz")
    try:
        size = os.path.getsize(path)
        with (gzip.open if gz else open)(path, "rb") as fh:
            head = fh.read(4)
            if len(head) < 4 or head[:3] != b"\0\0\x08":
                raise _fault(path, f"not an unsigned-byte IDX file (magic {head!r})")
            raw = fh.read(4 * head[3])
            if len(raw) < 4 * head[3]:
                raise _fault(path, f"IDX header truncated ({head[3]} dimensions announced, {len(raw)} header bytes)")
            dims = tuple(int.from_bytes(raw[i : i + 4], "big") for i in range(0, len(raw), 4))
            if item_shape is not None and (len(dims) != 1 + len(item_shape) or dims[1:] != tuple(item_shape)):
                raise _fault(path, f"expected items of shape {tuple(item_shape)}; the header says {dims}")
            count = math.prod(dims)
            room = size * _DEFLATE_MAX_RATIO if gz else size - 4 - len(raw)
            if count > room:  # checked before reading: an absurd header allocates nothing
                holds = f"a {size}-byte gzip file holds at most {room}" if gz else f"holds {room}"
                raise _fault(path, f"header says {dims} ({count} bytes) but {holds}")
            body = fh.read(count + 1)
    except DataError:
        raise
    except _READ_ERRORS as exc:
        raise _fault(path, f"unreadable IDX file ({_why(exc)})") from exc
    if len(body) != count:
        raise _fault(path, f"header says {dims} ({count} bytes) but holds {len(body)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _find(folder, stem):
    for candidate in (stem + ".gz", stem):
        path = os.path.join(folder, candidate)
        if os.path.exists(path):
            return path
    return None


FASHION_MNIST_FILES = {
    s: (f"{p}-images-idx3-ubyte", f"{p}-labels-idx1-ubyte") for s, p in (("train", "train"), ("test", "t10k"))
}
_FASHION_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"


def fashion_mnist_dirs() -> list[str]:
    dirs = []
    if os.environ.get(DATA_DIR_ENV):
        dirs.append(os.path.join(os.environ[DATA_DIR_ENV], "fashion-mnist"))
    dirs.append(DEBIAN_FASHION_MNIST)
    return dirs


def fashion_mnist_available() -> bool:
    """True when the IDX files are on disk (no download needed)."""
    return any(_find(d, "t10k-images-idx3-ubyte") for d in fashion_mnist_dirs())


def _fashion_mnist_paths(split):
    """The split's (images, labels) files: from the first folder holding any Fashion-MNIST file, else downloaded.

    A folder with some files but not this split's pair is an error: falling back to another copy would hide it.
    """
    stems = FASHION_MNIST_FILES[split]
    _data_dir()
    for folder in fashion_mnist_dirs():
        if not any(_find(folder, s) for pair in FASHION_MNIST_FILES.values() for s in pair):
            continue
        paths = [_find(folder, s) for s in stems]
        missing = [s + "[.gz]" for s, p in zip(stems, paths) if p is None]
        if missing:
            raise DataError(
                f"{folder} holds part of Fashion-MNIST: missing {', '.join(missing)} "
                f"(the {split} split needs {stems[0]}[.gz] and {stems[1]}[.gz])."
            )
        return paths
    hint = (
        f"install it with `apt-get install dataset-fashion-mnist`, or put {stems[0]}.gz and {stems[1]}.gz "
        f"in ${DATA_DIR_ENV}/fashion-mnist ({_env_now()})"
    )
    return [
        _download(
            "Fashion-MNIST",
            s + ".gz",
            hint,
            origin=_FASHION_ORIGIN + s + ".gz",
            cache_subdir=os.path.join("datasets", "fashion-mnist"),
        )
        for s in stems
    ]


def _fashion_mnist(split):
    images, labels = _fashion_mnist_paths(split)
    x = _read_idx(images, INFO["fashion_mnist"]["shape"][:2])
    y = _check_labels(labels, _read_idx(labels, ()), len(x), "fashion_mnist")
    return x[..., None], y


def _npz_member(zf, path, key, size):
    """One ``.npy`` member of an npz; its header's shape is checked against the member's size before reading."""
    info = zf.getinfo(key + ".npy")
    stored = info.compress_type == zipfile.ZIP_STORED
    if info.compress_size > size or info.file_size > (
        info.compress_size if stored else info.compress_size * _DEFLATE_MAX_RATIO
    ):
        raise _fault(path, f"{key}: zip entry claims {info.file_size} bytes, more than the archive can hold")
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(fh)
        if dtype.hasobject:
            raise _fault(path, f"{key} holds Python objects (dtype object); a data file holds numbers")
        if math.prod(shape) * dtype.itemsize > info.file_size:
            raise _fault(
                path, f"{key}: header claims shape {shape} ({dtype}) but the entry holds {info.file_size} bytes"
            )
    with zf.open(info) as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


def _read_npz(path, keys):
    """The named arrays of an ``.npz`` file, without pickles; any fault is a DataError naming the file."""
    try:
        size = os.path.getsize(path)
        with zipfile.ZipFile(path) as zf:
            held = sorted(n[:-4] for n in zf.namelist() if n.endswith(".npy"))
            missing = [k for k in keys if k not in held]
            if missing:
                raise _fault(path, f"missing {', '.join(missing)} (holds {', '.join(held) or 'no arrays'})")
            return {k: _npz_member(zf, path, k, size) for k in keys}
    except DataError:
        raise
    except _READ_ERRORS as exc:
        raise _fault(path, f"unreadable npz file ({_why(exc)})") from exc


_MNIST_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
_MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"  # keras.datasets.mnist's pin


def _mnist(split):
    path = next(
        (os.path.join(d, "mnist.npz") for d in _cache_dirs() if os.path.exists(os.path.join(d, "mnist.npz"))), None
    )
    if path is None:
        path = _download(
            "MNIST",
            "mnist.npz",
            _where("mnist.npz (keras.datasets' format)"),
            origin=_MNIST_ORIGIN,
            file_hash=_MNIST_SHA256,
        )
    arrays = _read_npz(path, (f"x_{split}", f"y_{split}"))
    x = _check_images(path, arrays[f"x_{split}"], INFO["mnist"]["shape"][:2], f"x_{split}")
    return x[..., None], _check_labels(path, arrays[f"y_{split}"], len(x), "mnist", f"y_{split}")


class _CifarUnpickler(pickle.Unpickler):
    """Allows only what a CIFAR-10 batch holds: dicts, lists, bytes, ints and uint8 numpy arrays.

    Containers, bytes and ints are pickle opcodes; the globals below are the only names a batch needs
    (numpy's array reconstruction, and ``_codecs.encode`` that protocol 2 writes for bytes). Each is
    wrapped so it cannot be called with other arguments (``numpy.ndarray`` called directly would allocate
    any shape).
    """

    def find_class(self, module, name):
        found = _CIFAR_GLOBALS.get((module.replace("numpy.core.", "numpy._core."), name))
        if found is None:
            raise pickle.UnpicklingError(f"refused to unpickle {module}.{name} (not part of a CIFAR batch)")
        return found


def _array_class_only(*args):
    raise pickle.UnpicklingError("refused to call numpy.ndarray directly (not part of a CIFAR batch)")


def _reconstruct(cls, shape, dtype):
    if cls is not _array_class_only or tuple(shape) not in ((0,), ()):
        raise pickle.UnpicklingError(f"refused numpy _reconstruct({shape!r}) (not part of a CIFAR batch)")
    return np.ndarray(shape, dtype=dtype)


def _frombuffer(buf, dtype, shape, order, axis_order=None):
    array = np.frombuffer(bytes(buf), dtype=np.dtype(dtype))
    if order == "K" and axis_order is not None:
        return array.reshape(shape, order="C").transpose(axis_order)
    return array.reshape(shape, order="F" if order == "F" else "C")


def _latin1(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode(..., {encoding!r}) (not part of a CIFAR batch)")
    return text.encode("latin1")


def _empty_bytes(*args):
    if args:
        raise pickle.UnpicklingError("refused bytes(...) with arguments (not part of a CIFAR batch)")
    return b""


def _dtype(spec, align=False, copy=False):
    spec = spec.decode("latin1") if isinstance(spec, bytes) else spec
    if not isinstance(spec, str) or not re.fullmatch(r"[iuf][1248]|b1", spec):
        raise pickle.UnpicklingError(f"refused numpy.dtype({spec!r}) (a CIFAR batch holds plain numbers)")
    return np.dtype(spec)


_CIFAR_GLOBALS = {
    ("numpy", "ndarray"): _array_class_only,
    ("numpy", "dtype"): _dtype,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


def _cifar_batch(path):
    try:
        with open(path, "rb") as fh:
            batch = _CifarUnpickler(fh, encoding="bytes").load()
    except Exception as exc:  # a crafted pickle can raise anything its allowed calls raise
        raise _fault(path, f"refused or unreadable CIFAR batch ({_why(exc)})") from exc
    if not isinstance(batch, dict):
        raise _fault(path, f"a CIFAR batch is a dict; got {type(batch).__name__}")
    batch = {k.encode() if isinstance(k, str) else k: v for k, v in batch.items()}
    missing = [k.decode() for k in (b"data", b"labels") if k not in batch]
    if missing:
        raise _fault(path, f"CIFAR batch without {', '.join(missing)}")
    data = _check_images(path, batch[b"data"], (3072,), "data")
    labels = batch[b"labels"]
    if isinstance(labels, list) and all(type(v) is int for v in labels):  # checked before numpy sees it
        labels = np.asarray(labels, dtype=np.int64) if labels else np.zeros(0, np.int64)
    if not isinstance(labels, np.ndarray):
        raise _fault(
            path,
            "labels must be a list of ints"
            + (" (it holds other things)" if isinstance(labels, list) else f"; got {type(labels).__name__}"),
        )
    labels = _check_labels(path, labels, len(data), "cifar10")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


CIFAR10_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_CIFAR_ORIGIN = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"  # keras.datasets.cifar10's pin


def _batches_folder(folder):
    """Keras extracts the archive into a folder of the same name: the batches sit one level down."""
    inner = os.path.join(folder, "cifar-10-batches-py")
    return inner if os.path.isdir(inner) else folder


def _cifar10(split):
    # the archive's folder, or where keras.datasets.cifar10 itself extracts it
    candidates = [
        os.path.join(d, sub)
        for d in _cache_dirs()
        for sub in ("cifar-10-batches-py", os.path.join("cifar-10-batches-py-target", "cifar-10-batches-py"))
    ]
    folder = next((c for c in candidates if os.path.isdir(c)), None)
    if folder is None:
        hint = _where(
            "the cifar-10-batches-py folder of cifar-10-python.tar.gz (data_batch_1 .. data_batch_5, test_batch)"
        )
        folder = _download(
            "CIFAR-10", "cifar-10-batches-py", hint, origin=_CIFAR_ORIGIN, extract=True, file_hash=_CIFAR_SHA256
        )
    folder = _batches_folder(folder)
    missing = [f for f in CIFAR10_FILES[split] if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise DataError(
            f"{folder} holds part of CIFAR-10: missing {', '.join(missing)} "
            f"(the {split} split needs {', '.join(CIFAR10_FILES[split])})."
        )
    parts = [_cifar_batch(os.path.join(folder, f)) for f in CIFAR10_FILES[split]]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# --------------------------------------------------------------------------- tf.data
def dataset(
    name: str,
    split: str = "train",
    *,
    batch_size: int = 128,
    shuffle: bool | None = None,
    augment: bool = False,
    normalize: bool = False,
    seed: int | None = 0,
    repeat: bool = False,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
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
                images = tf.image.random_crop(images, tf.stack([tf.shape(images)[0], h, w, images.shape[3]]), seed=seed)
                flip = tf.random.uniform([tf.shape(images)[0], 1, 1, 1], seed=seed) < 0.5
                images = tf.where(flip, tf.reverse(images, axis=[2]), images)
            if normalize:
                images = (images - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
            return images, labels

        ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- toy densities
def toy_density(name: str, n: int, seed: int | None = None) -> np.ndarray:
    """``n`` points (float32, shape (n, 2)) of a 2-D toy density of the FFJORD paper's experiments.

    Generated as in Grathwohl et al. (2019), ``lib/toy_data.py`` of their code:
    8gaussians, checkerboard, pinwheel, 2spirals, moons, rings, circles, swissroll.
    """
    if name not in TOY_DENSITIES:
        raise UnknownNameError("toy density", name, TOY_DENSITIES)
    n = checks.positive_int("n", n)
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
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "pinwheel": _pinwheel,
    "2spirals": _two_spirals,
    "moons": _moons,
    "rings": _rings,
    "circles": _circles,
    "swissroll": _swissroll,
}
TOY_LOG_PROB = ("8gaussians", "checkerboard")


def toy_log_prob(name: str, x: ArrayLike) -> np.ndarray:
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
