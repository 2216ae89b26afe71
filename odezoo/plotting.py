"""Pictures: ``plot_density(flow, data, path)`` for 2-D flows."""

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
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


__all__ = ["plot_density"]
