"""Numpy-only pieces shared by the TF and the torch side of the flow benchmark.

Same data, noise and initial weights as ../../../shared/bench/peer_flow_bench (re-implemented here):
a fresh batch of 512 per step from ``default_rng(1000 + seed)``, Rademacher noise from
``default_rng(2000 + seed)``, 2,000 held-out points from ``default_rng(12345)``, and a
torch-Linear-style initialisation U(±1/sqrt(fan_in)) of the 3→64→64→64→2 field from
``default_rng(seed)``. The samplers consume the generator exactly as ``odezoo.data.toy_density``
does (checked by the TF side), so the torch process, which has no odezoo, sees the same bytes.
"""

import numpy as np

BATCH = 512
N_TEST = 2000
TEST_SEED = 12345
_S = 1.0 / np.sqrt(2.0)
_CENTERS = 4.0 * np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (_S, _S), (_S, -_S), (-_S, _S), (-_S, -_S)])


def sample(name, rng, n):
    """n points of a toy density drawn from the numpy Generator ``rng`` (float32, (n, 2))."""
    if name == "8gaussians":
        idx = rng.integers(0, 8, n)
        x = (rng.normal(size=(n, 2)) * 0.5 + _CENTERS[idx]) / 1.414
    elif name == "checkerboard":
        x1 = rng.random(n) * 4 - 2
        x2 = rng.random(n) - rng.integers(0, 2, n) * 2 + np.floor(x1) % 2
        x = np.stack([x1, x2], axis=1) * 2
    else:
        raise ValueError(f"data must be '8gaussians' or 'checkerboard'. Received: {name!r}.")
    return np.asarray(x, np.float32)


def rademacher(rng, shape):
    return (rng.integers(0, 2, size=shape) * 2 - 1).astype(np.float32)


def init_weights(seed=0, hidden=64, nlayers=3, din=3, dout=2):
    """[(W (in, out), b (out,)), ...] with W, b ~ U(±1/sqrt(fan_in)), from default_rng(seed)."""
    rng = np.random.default_rng(seed)
    dims = [din] + [hidden] * nlayers + [dout]
    out = []
    for a, b in zip(dims[:-1], dims[1:]):
        k = 1.0 / np.sqrt(a)
        out.append((rng.uniform(-k, k, (a, b)).astype(np.float32), rng.uniform(-k, k, (b,)).astype(np.float32)))
    return out


def streams(seed):
    """(data rng, noise rng) of one run."""
    return np.random.default_rng(1000 + seed), np.random.default_rng(2000 + seed)


def summary(x):
    """median, q25, q75 of a 1-D sequence."""
    x = np.asarray(x, float)
    q25, med, q75 = np.percentile(x, [25, 50, 75])
    return float(med), float(q25), float(q75)
