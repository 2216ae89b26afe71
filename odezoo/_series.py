"""Irregularly sampled time series: :class:`Series`, the UEA/UCR ``.ts`` reader, :func:`irregular`, spirals.

Re-exported by :mod:`odezoo.data` (``odezoo.data.Series``, ``load_series``,
``irregular``, ``read_ts``, ``spirals``); no TensorFlow import here.

A :class:`Series` holds N samples of up to T steps and C channels:

- ``values`` (N, T, C) float32, 0 wherever ``mask`` is 0;
- ``times`` (N, T) float32, strictly increasing over each sample's first
  ``lengths[i]`` steps; past its length a sample's time stays at its last one;
- ``mask`` (N, T, C) float32, 1 where an entry was observed, 0 where it is
  missing, dropped or padding;
- ``lengths`` (N,) int64 in [1, T]; ``labels`` (N,) int64 class indices (or None)
  and ``classes`` their names.

``.ts`` files are untrusted input: the header is checked against every case,
and a fault is one :class:`~odezoo.DataError` line naming the file, the line and
the problem. A :class:`Series` built from arrays checks its own shapes and
times and names the sample at fault in a ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re

import numpy as np

from odezoo._errors import DataError, UnknownNameError
from odezoo.checks import bad_value

SERIES_SPLITS = ("train", "test")
# odezoo's names -> the UEA/UCR archive's problem names (the sktime wheel ships these)
UEA_UCR = {
    "japanese_vowels": "JapaneseVowels",
    "basic_motions": "BasicMotions",
    "arrow_head": "ArrowHead",
    "gun_point": "GunPoint",
    "italy_power_demand": "ItalyPowerDemand",
    "osu_leaf": "OSULeaf",
    "plaid": "PLAID",
}
GENERATED = ("spirals",)
SPIRALS_SIZE = {"train": 1000, "test": 200}
SPIRALS_SEED = {"train": 0, "test": 1}
_MAX_TS_BYTES = 512 * 2**20
# "<problem>_drop<NN>": the problem with NN % of each sample's steps dropped by irregular(), fixed seeds
_DROPPED = re.compile(r"^([a-z_]+)_drop([1-9][0-9]?)$")
DROP_SEED = {"train": 0, "test": 1}


def series_names() -> list[str]:
    return list(UEA_UCR) + list(GENERATED)


@dataclasses.dataclass(frozen=True, eq=False)
class Series:
    """Irregularly sampled series: values, times, an observation mask, lengths and labels (module docstring)."""

    values: np.ndarray
    times: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray | None = None
    classes: tuple | None = None
    name: str = "series"

    def __post_init__(self):
        values = np.asarray(self.values, dtype=np.float32)
        times = np.asarray(self.times, dtype=np.float32)
        mask = np.asarray(self.mask, dtype=np.float32)
        lengths = np.asarray(self.lengths)
        if values.ndim != 3:
            raise ValueError(f"Series: values must have shape (N, T, C); got {values.shape}.")
        n, t, _ = values.shape
        if mask.shape != values.shape:
            raise ValueError(f"Series: mask has shape {mask.shape} but values have {values.shape}; they must match.")
        if times.shape != (n, t):
            raise ValueError(f"Series: times must have shape (N, T) = {(n, t)}; got {times.shape}.")
        if lengths.shape != (n,) or (n and not np.issubdtype(lengths.dtype, np.integer)):
            raise ValueError(f"Series: lengths must be N = {n} integers; got shape {lengths.shape}, {lengths.dtype}.")
        if not np.isin(mask, (0.0, 1.0)).all():
            raise ValueError("Series: mask entries must be 0 or 1.")
        lengths = lengths.astype(np.int64)
        for i in np.flatnonzero((lengths < 1) | (lengths > t)):
            raise ValueError(f"Series: sample {i}: length {lengths[i]} is outside [1, T = {t}].")
        steps = np.arange(t)
        inside = steps[None, :] < lengths[:, None]  # (N, T)
        for i in np.flatnonzero((mask.any(-1) & ~inside).any(1)):
            raise ValueError(f"Series: sample {i}: observed entries past its length {lengths[i]}.")
        for i in np.flatnonzero(~mask.any((1, 2))):
            raise ValueError(f"Series: sample {i} has no observations.")
        for i in np.flatnonzero((~np.isfinite(times) & inside).any(1)):
            raise ValueError(f"Series: sample {i}: its times are not finite.")
        gaps = np.diff(times, axis=1) <= 0  # (N, T-1): step k+1 not after step k
        for i in np.flatnonzero((gaps & inside[:, 1:]).any(1)):
            k = int(np.flatnonzero(gaps[i] & inside[i, 1:])[0]) + 1
            raise ValueError(
                f"Series: sample {i}: times not increasing at step {k} "
                f"(t[{k - 1}] = {times[i, k - 1]}, t[{k}] = {times[i, k]})."
            )
        for i in np.flatnonzero((~np.isfinite(values) & (mask > 0)).any((1, 2))):
            raise ValueError(f"Series: sample {i}: an observed value is not finite (NaN or Inf where mask is 1).")
        values = np.where(mask > 0, values, 0.0).astype(np.float32)
        last = times[np.arange(n), lengths - 1]
        times = np.where(inside, times, last[:, None]).astype(np.float32)  # padding: zero-length intervals
        labels = self.labels
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape[:1] != (n,):
                raise ValueError(f"Series: {labels.shape[0] if labels.ndim else 0} labels for {n} samples.")
        for key, value in dict(values=values, times=times, mask=mask, lengths=lengths, labels=labels).items():
            if value is not None:
                value.setflags(write=False)
            object.__setattr__(self, key, value)
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))

    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def channels(self) -> int:
        return self.values.shape[2]

    @property
    def num_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    def inputs(self) -> dict:
        """The models' input: ``{"values", "times", "mask"}`` (float32 arrays)."""
        return {"values": self.values, "times": self.times, "mask": self.mask}

    def subset(self, index) -> Series:
        index = np.asarray(index)
        labels = None if self.labels is None else self.labels[index]
        return Series(
            self.values[index],
            self.times[index],
            self.mask[index],
            self.lengths[index],
            labels,
            self.classes,
            self.name,
        )

    def __repr__(self) -> str:
        n, t, c = self.values.shape
        observed = float(self.mask.sum()) / max(1.0, float(self.lengths.sum()) * c)
        return f"Series({self.name!r}: {n} samples, T={t}, C={c}, {observed:.0%} of entries observed)"


# --------------------------------------------------------------------------- irregular sampling
def irregular(series: Series, drop: float = 0.3, seed: int = 0, per_channel: bool = False) -> Series:
    """``series`` with a fraction ``drop`` of each sample's observations removed (masked out).

    Kidger, Morrill, Foster & Lyons (NeurIPS 2020)'s protocol: each sample loses
    ``round(drop * length)`` of its time steps, the same ones for every channel,
    chosen at random (``per_channel=True``: each channel drops its own entries);
    a sample keeps at least one observation. The times stay; what is dropped is
    only unobserved. Deterministic in ``seed``.
    """
    if not isinstance(series, Series):
        raise bad_value("series", type(series).__name__, "an odezoo.data.Series")
    if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0.0 <= drop < 1.0:
        raise bad_value("drop", drop, "a fraction in [0, 1)")
    rng = np.random.default_rng(seed)
    mask = np.array(series.mask)
    for i, length in enumerate(series.lengths):
        columns = range(series.channels) if per_channel else [slice(None)]
        for c in columns:
            observed = np.flatnonzero(mask[i, :length, c].any(-1) if c == slice(None) else mask[i, :length, c])
            k = min(int(round(drop * length)), len(observed) - 1)
            if k > 0:
                mask[i, rng.choice(observed, size=k, replace=False), c] = 0.0
    for i in np.flatnonzero(~mask.any((1, 2))):  # per channel can empty a sample: keep one entry back
        j = np.argwhere(series.mask[i])[0]
        mask[i, j[0], j[1]] = 1.0
    return Series(series.values, series.times, mask, series.lengths, series.labels, series.classes, series.name)


# --------------------------------------------------------------------------- spirals
def spirals(n: int, *, steps: int = 100, observed: int = 30, noise: float = 0.05, seed: int = 0) -> Series:
    """Chen et al. (2018)'s spirals: N noisy, irregularly observed arcs of clockwise or counter-clockwise spirals.

    Each sample is an arc of ``steps`` points of one of two Archimedean spirals
    (label 0: counter-clockwise, 1: clockwise) starting at a random point; it is
    observed at ``observed`` of those points chosen at random (sorted), with
    Gaussian noise of standard deviation ``noise``. Times are the arc's parameter
    (0 to about 6). ``.values`` holds the noisy observations; the clean arcs
    at every time are returned by :func:`spiral_arcs` for extrapolation checks.
    """
    arcs, times, labels = spiral_arcs(n, steps=steps, seed=seed)
    rng = np.random.default_rng(seed + 10_000)
    pick = np.sort(np.stack([rng.choice(steps, size=observed, replace=False) for _ in range(n)]), axis=1)
    rows = np.arange(n)[:, None]
    values = arcs[rows, pick] + noise * rng.standard_normal((n, observed, 2))
    mask = np.ones_like(values)
    return Series(
        values, times[rows, pick], mask, np.full(n, observed), labels, ("counterclockwise", "clockwise"), "spirals"
    )


def spiral_arcs(n: int, *, steps: int = 100, seed: int = 0):
    """``(arcs (N, steps, 2), times (N, steps), labels (N,))``: the clean arcs behind :func:`spirals`."""
    rng = np.random.default_rng(seed)
    a, b, span = 0.0, 0.3, 6.0 * math.pi  # r = a + b·θ over θ in [0, span]
    labels = rng.integers(0, 2, size=n)
    starts = rng.uniform(0.0, span / 2, size=n)
    theta = starts[:, None] + np.linspace(0.0, span / 2, steps)[None, :]
    r = a + b * theta
    sign = np.where(labels == 1, -1.0, 1.0)[:, None]
    arcs = np.stack([r * np.cos(sign * theta), r * np.sin(sign * theta)], axis=-1) / 3.0
    times = np.broadcast_to(np.linspace(0.0, 6.0, steps, dtype=np.float32), (n, steps))
    return arcs.astype(np.float32), np.array(times), labels.astype(np.int64)


def times_after(grid, first):
    """``(times (N, T), valid (N, T))``: for each row, the times of the increasing ``grid`` (T,) after
    ``first[i]``, then padded with ``grid[-1]`` (a zero step for a solve), and which are real."""
    grid = np.asarray(grid)
    valid = grid[None, :] > np.asarray(first).reshape(-1, 1)
    shift = len(grid) - valid.sum(axis=1, keepdims=True)  # a suffix of the grid: move it to the front
    index = np.minimum(np.arange(len(grid))[None, :] + shift, len(grid) - 1)
    return grid[index], np.arange(len(grid))[None, :] < len(grid) - shift


# --------------------------------------------------------------------------- .ts files
def _ts_fault(path, line_no, what):
    where = f"{os.fspath(path)}" + (f", line {line_no}" if line_no else "")
    return DataError(f"{where}: {' '.join(str(what).split())}.")


def _ts_bool(path, line_no, text, key):
    word = text.strip().lower()
    if word not in ("true", "false"):
        raise _ts_fault(path, line_no, f"@{key} must be true or false; got {text.strip()!r}")
    return word == "true"


def read_ts(path, name: str | None = None) -> Series:
    """A UEA/UCR ``.ts`` file as a :class:`Series` (odezoo's own parser).

    Cases are one line each: dimensions separated by ``:``, values by ``,``,
    ``?`` for a missing value (masked out), then the class label. With
    ``@timeStamps true`` each value is ``(t,v)`` with a numeric t; else the
    times are 0, 1, 2, ... Ragged cases are padded (``lengths``). Classification
    files only (``@classLabel true ...``).

    Raises:
        DataError: the file cannot be read, lacks ``@data`` or a header key, or a
            case disagrees with the header (dimensions, length, label).
    """
    path = os.fspath(path)
    try:
        if os.path.getsize(path) > _MAX_TS_BYTES:
            raise _ts_fault(path, 0, f"larger than {_MAX_TS_BYTES} bytes; not a dataset odezoo reads")
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except DataError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise _ts_fault(path, 0, f"cannot read it ({type(exc).__name__}: {exc})") from exc
    header, start = {}, None
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("@"):
            raise _ts_fault(path, number, "data before @data")
        key, _, rest = line[1:].partition(" ")
        key = key.lower()
        if key == "data":
            start = number
            break
        header[key] = (number, rest.strip())
    if start is None:
        raise _ts_fault(path, 0, "no @data line: not a .ts file")
    if "classlabel" not in header:
        raise _ts_fault(path, 0, "no @classLabel line (odezoo reads classification files)")
    number, text = header["classlabel"]
    words = text.split()
    if not words or not _ts_bool(path, number, words[0], "classLabel") or len(words) < 2:
        raise _ts_fault(path, number, "@classLabel must be true followed by the class names")
    classes = tuple(words[1:])
    stamps = _ts_bool(path, *header["timestamps"], "timeStamps") if "timestamps" in header else False
    want_dims = None
    if "dimensions" in header:
        number, text = header["dimensions"]
        if not text.isdigit() or int(text) < 1:
            raise _ts_fault(path, number, f"@dimensions must be a positive integer; got {text!r}")
        want_dims = int(text)
    elif "univariate" in header and _ts_bool(path, *header["univariate"], "univariate"):
        want_dims = 1
    want_length = None
    if "equallength" in header and _ts_bool(path, *header["equallength"], "equalLength"):
        if "serieslength" in header:
            number, text = header["serieslength"]
            if not text.isdigit() or int(text) < 1:
                raise _ts_fault(path, number, f"@seriesLength must be a positive integer; got {text!r}")
            want_length = int(text)
    cases, times_of, labels = [], [], []
    for number, raw in enumerate(lines[start:], start + 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        label, dims = parts[-1].strip(), parts[:-1]
        if want_dims is None:
            want_dims = len(dims)
        if len(dims) != want_dims:
            raise _ts_fault(
                path, number, f"case {len(cases)}: {len(dims)} dimensions, the file's others have {want_dims}"
            )
        if label not in classes:
            raise _ts_fault(path, number, f"case {len(cases)}: class label {label!r} is not one of {list(classes)}")
        series, stamp_rows = [], []
        for d, text in enumerate(dims):
            vals, stamps_d = _parse_dimension(path, number, len(cases), d, text, stamps)
            series.append(vals)
            stamp_rows.append(stamps_d)
        lengths = {len(v) for v in series}
        if min(lengths) < 1:
            raise _ts_fault(path, number, f"case {len(cases)}: an empty dimension")
        if want_length is not None and lengths != {want_length}:
            raise _ts_fault(
                path, number, f"case {len(cases)}: length {sorted(lengths)}, @seriesLength says {want_length}"
            )
        if stamps and len({tuple(s) for s in stamp_rows}) != 1:
            raise _ts_fault(path, number, f"case {len(cases)}: the dimensions' time stamps differ")
        cases.append(series)
        times_of.append(stamp_rows[0] if stamps else None)
        labels.append(classes.index(label))
    if not cases:
        raise _ts_fault(path, 0, "no cases after @data")
    n, c = len(cases), want_dims
    t = max(len(v) for case in cases for v in case)
    values = np.zeros((n, t, c), np.float64)
    mask = np.zeros((n, t, c), np.float32)
    times = np.zeros((n, t), np.float64)
    lengths = np.zeros(n, np.int64)
    for i, case in enumerate(cases):
        length = max(len(v) for v in case)
        lengths[i] = length
        for d, vals in enumerate(case):
            arr = np.asarray(vals, np.float64)
            values[i, : len(arr), d] = np.nan_to_num(arr)
            mask[i, : len(arr), d] = np.isfinite(arr)
        times[i, :length] = times_of[i] if stamps else np.arange(length)
    try:
        return Series(
            values, times, mask, lengths, np.asarray(labels, np.int64), classes, name or os.path.basename(path)
        )
    except ValueError as exc:  # a case the format allows but a Series cannot hold (no observations, times)
        raise _ts_fault(path, 0, str(exc).removeprefix("Series: ").replace("sample", "case")) from None


def _parse_dimension(path, number, case, d, text, stamps):
    text = text.strip()
    where = f"case {case}, dimension {d}"
    if not stamps:
        out = []
        for word in text.split(","):
            word = word.strip()
            if word in ("?", "NaN", "nan"):
                out.append(math.nan)
                continue
            try:
                value = float(word)
            except ValueError:
                raise _ts_fault(path, number, f"{where}: {word[:40]!r} is not a number") from None
            if not math.isfinite(value):
                raise _ts_fault(path, number, f"{where}: {word!r} is not finite")
            out.append(value)
        return out, None
    if not (text.startswith("(") and text.endswith(")")):
        raise _ts_fault(path, number, f"{where}: @timeStamps true wants (t,v) pairs")
    out, stamps_out = [], []
    for pair in text[1:-1].split("),("):
        t_text, _, v_text = pair.partition(",")
        try:
            t_value = float(t_text)
        except ValueError:
            raise _ts_fault(path, number, f"{where}: time stamp {t_text[:40]!r} is not a number") from None
        v_text = v_text.strip()
        try:
            out.append(math.nan if v_text == "?" else float(v_text))
        except ValueError:
            raise _ts_fault(path, number, f"{where}: {v_text[:40]!r} is not a number") from None
        stamps_out.append(t_value)
    return out, stamps_out


# --------------------------------------------------------------------------- named datasets
def sktime_data_dir() -> str | None:
    """The folder of UEA/UCR files inside an installed ``sktime`` (found without importing it), or None."""
    try:
        spec = importlib.util.find_spec("sktime")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")
    return folder if os.path.isdir(folder) else None


def _ts_path(name: str, split: str, data_dir: str | None) -> str:
    problem = UEA_UCR[name]
    fname = f"{problem}_{split.upper()}.ts"
    places = []
    if data_dir:
        places += [os.path.join(data_dir, problem, fname), os.path.join(data_dir, fname)]
    skt = sktime_data_dir()
    if skt:
        places.append(os.path.join(skt, problem, fname))
    for place in places:
        if os.path.isfile(place):
            return place
    raise DataError(
        f"{name}: {fname} not found (looked in {', '.join(places) or 'no folder'}). Install the data with "
        f"`pip install 'odezoo[timeseries]'` (the sktime wheel ships it), or put {fname} in "
        f"$ODEZOO_DATA_DIR/{problem}/ (the UEA/UCR archive, timeseriesclassification.com)."
    )


def load_series(name: str, split: str = "train", *, data_dir: str | None = None) -> Series:
    """A named time-series dataset's split as a :class:`Series` (``data_dir``: the folder to look in
    before sktime's copy; :func:`odezoo.data.load_series` passes ``$ODEZOO_DATA_DIR``).

    UEA/UCR problems (``japanese_vowels``, ``basic_motions``, ``arrow_head``,
    ``gun_point``, ``italy_power_demand``, ``osu_leaf``, ``plaid``) are read by
    :func:`read_ts` from ``$ODEZOO_DATA_DIR`` (``<Problem>/<Problem>_TRAIN.ts`` or
    ``<Problem>_TRAIN.ts``), else from an installed sktime's copy; the archive's
    own train/test split. ``<problem>_drop<NN>`` (e.g. ``japanese_vowels_drop50``):
    that problem with NN % of each sample's steps dropped by :func:`irregular`
    (seed 0 for the train split, 1 for the test split). ``spirals`` is generated
    (:func:`spirals`; 1,000 / 200 samples, seeds 0 / 1).
    """
    if split not in SERIES_SPLITS:
        raise bad_value("split", split, "'train' or 'test'")
    dropped = _DROPPED.match(name) if isinstance(name, str) else None
    if dropped and dropped.group(1) in UEA_UCR:
        full = load_series(dropped.group(1), split, data_dir=data_dir)
        return irregular(full, drop=int(dropped.group(2)) / 100, seed=DROP_SEED[split])
    if name == "spirals":
        return spirals(SPIRALS_SIZE[split], seed=SPIRALS_SEED[split])
    if name not in UEA_UCR:
        raise UnknownNameError("time-series dataset", name, series_names())
    return read_ts(_ts_path(name, split, data_dir), name=name)


__all__ = [
    "Series",
    "irregular",
    "load_series",
    "read_ts",
    "series_names",
    "spirals",
    "spiral_arcs",
    "sktime_data_dir",
]
