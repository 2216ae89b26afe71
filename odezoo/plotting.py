"""Pictures: ``plot_density(flow, data, path)`` for 2-D flows, ``plot_image_samples`` for image flows,
``plot_extrapolation`` for a generative time-series model. Each PNG is written whole or not at all."""

from __future__ import annotations

import os

from typing import Any

import numpy as np
from numpy.typing import ArrayLike


def plot_density(
    flow: Any,
    data: ArrayLike,
    path: str,
    *,
    grid: int = 150,
    extent: tuple[float, float] | None = None,
    num_samples: int = 2000,
    seed: int | None = 0,
) -> str:
    """Write one PNG: the data, the flow's learned density and its samples, side by side.

    Args:
        flow: a 2-D flow model (``odezoo.build("ffjord", data_dim=2)``) with
            ``log_prob(x, trace=...)`` and ``sample(n, seed=...)``.
        data: (n, 2) points of the data.
        path: where to write the PNG (its folder is created).
        grid: points per axis of the density grid (exact trace).
        extent: (lo, hi) of both axes; default: the data's range, padded.
        num_samples, seed: samples drawn from the flow.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 2 or data.shape[1] != 2 or getattr(flow, "data_dim", 2) != 2:
        raise ValueError(f"plot_density draws 2-D flows and data. Received: data.shape={data.shape}.")
    if extent is None:
        lo, hi = float(np.percentile(data, 0.5)), float(np.percentile(data, 99.5))
        pad = 0.15 * (hi - lo)
        extent = (lo - pad, hi + pad)
    g = np.linspace(extent[0], extent[1], grid, dtype=np.float32)
    xx, yy = np.meshgrid(g, g)
    points = np.stack([xx.ravel(), yy.ravel()], axis=1)
    logp = np.asarray(flow.log_prob(points, trace="exact")).reshape(grid, grid)
    samples = np.asarray(flow.sample(num_samples, seed=seed))

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    bins = np.linspace(extent[0], extent[1], 100)
    axes[0].hist2d(data[:, 0], data[:, 1], bins=[bins, bins], cmap="viridis")
    axes[0].set_title(f"data ({len(data)} points)")
    axes[1].imshow(np.exp(logp), origin="lower", extent=(*extent, *extent), cmap="viridis")
    axes[1].set_title("learned density (exact trace)")
    axes[2].hist2d(samples[:, 0], samples[:, 1], bins=[bins, bins], cmap="viridis")
    axes[2].set_title(f"{num_samples} samples")
    for ax in axes:
        ax.set_xlim(extent)
        ax.set_ylim(extent)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return _save(fig, path)


def plot_image_samples(
    flow: Any,
    path: str,
    *,
    image_shape: tuple[int, int, int],
    num_samples: int = 64,
    seed: int | None = 0,
    levels: float | None = None,
) -> str:
    """Write one PNG: a square grid of the flow's samples drawn as images.

    Args:
        flow: a flow on flattened images (``odezoo.build("ffjord", data_dim=h·w·c, ...)``) with
            ``sample(n, seed=...)``.
        path: where to write the PNG (its folder is created; written whole or not at all).
        image_shape: (h, w, c) of one image, c = 1 (grey) or 3.
        num_samples, seed: samples drawn (a square number fills the grid).
        levels: pixel levels of the data (the digits: 17, values 0..16); samples are in the
            flow's scaled units (raw / ``exp(flow.data_log_scale)``) and are shown clipped to
            [0, levels] after scaling back. None: min-max scaled.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w, c = (int(d) for d in image_shape)
    if c not in (1, 3) or h * w * c != getattr(flow, "data_dim", h * w * c):
        raise ValueError(
            f"plot_image_samples needs image_shape=(h, w, 1 or 3) with h*w*c = the flow's data_dim "
            f"({getattr(flow, 'data_dim', '?')}). Received: image_shape={tuple(image_shape)}."
        )
    x = np.asarray(flow.sample(num_samples, seed=seed), dtype=np.float64).reshape(-1, h, w, c)
    if levels is not None:
        x = np.clip(x * np.exp(getattr(flow, "data_log_scale", 0.0)), 0.0, levels) / levels
    else:
        x = (x - x.min()) / max(x.max() - x.min(), 1e-12)
    cols = int(np.ceil(np.sqrt(len(x))))
    rows = int(np.ceil(len(x) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8, rows * 0.8))
    for ax, img in zip(np.ravel(axes), list(x) + [None] * (rows * cols - len(x))):
        ax.axis("off")
        if img is not None:
            ax.imshow(img[..., 0] if c == 1 else img, cmap="gray_r" if c == 1 else None, vmin=0, vmax=1)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.99, wspace=0.08, hspace=0.08)
    return _save(fig, path)


def plot_extrapolation(
    model: Any,
    series: Any,
    path: str,
    *,
    split: float,
    truth: tuple[ArrayLike, ArrayLike] | None = None,
    rows: ArrayLike = (0, 1, 2, 3, 4, 5),
) -> str:
    """Write one PNG: for each chosen sample of a 2-channel series, its observations before
    ``split`` (the model's only input), the model's mean trajectory (``model.extrapolate``) from
    its first observation on, solid before ``split`` and dashed after, and, given
    ``truth=(grid (T,), curves (N, T, 2))``, the clean curve in grey.

    Args:
        model: a generative series model with ``extrapolate(inputs, times)``
            (``odezoo.build("latent_ode", ...)``).
        series: an :class:`odezoo.data.Series` with 2 channels.
        path: where to write the PNG (its folder is created).
        split: the time from which the model sees nothing.
        truth: the clean curves on a time grid; without it the model is drawn on 100 times
            from each sample's first observation to its last.
        rows: the samples drawn, one panel each.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [int(i) for i in np.atleast_1d(rows)]
    if series.channels != 2 or not rows or min(rows) < 0 or max(rows) >= len(series):
        raise ValueError(
            f"plot_extrapolation draws 2-channel series, rows in [0, {len(series)}). Received: "
            f"{series.channels} channels, rows={rows}."
        )
    s = series.subset(rows)
    seen = s.times < split
    inputs = {"values": s.values, "times": s.times, "mask": s.mask * seen[..., None]}
    start = s.times[:, 0]
    if truth is not None:
        grid = np.asarray(truth[0], np.float64)
        curves = np.asarray(truth[1])[rows]
    else:
        grid, curves = np.linspace(start.min(), s.times.max(), 100), None
    # each row's grid times after its first observation, then the last time repeated (a zero step)
    valid = grid[None, :] > start[:, None]
    times = np.stack([np.concatenate([grid[v], np.full((~v).sum(), grid[-1])]) for v in valid])
    predicted = np.asarray(model.extrapolate(inputs, times.astype(np.float32)))
    cols = min(3, len(rows))
    fig, axes = plt.subplots(-(-len(rows) // cols), cols, figsize=(3.2 * cols, 3.2 * -(-len(rows) // cols)))
    for k, ax in enumerate(np.ravel(np.atleast_1d(axes))):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= len(rows):
            ax.axis("off")
            continue
        if curves is not None:
            ax.plot(curves[k, :, 0], curves[k, :, 1], color="0.75", lw=3, label="clean curve")
        t, y = times[k][: valid[k].sum()], predicted[k][: valid[k].sum()]
        early = t < split
        ax.plot(y[early, 0], y[early, 1], color="C0", lw=1.5, label="model (seen span)")
        ax.plot(y[~early, 0], y[~early, 1], color="C3", lw=1.5, ls="--", label=f"extrapolated (t >= {split:g})")
        obs = seen[k] & (s.mask[k].sum(axis=1) > 0)
        ax.scatter(s.values[k, obs, 0], s.values[k, obs, 1], s=10, color="k", zorder=3, label="observed")
        ax.set_aspect("equal", adjustable="datalim")
    handles, labels = np.ravel(np.atleast_1d(axes))[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return _save(fig, path)


def _save(fig: Any, path: str) -> str:
    """Write ``fig`` to ``path`` as a PNG through a temporary file and one rename; close it."""
    import matplotlib.pyplot as plt

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, dpi=80, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


__all__ = ["plot_density", "plot_image_samples", "plot_extrapolation"]
