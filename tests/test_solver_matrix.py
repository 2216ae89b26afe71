"""Every registered solver of ODEBlock and odeint against scipy's solve_ivp (issue 12, item 7).

Adaptive solvers (dopri5, tfp_dopri5, bdf) and each scheme ``check_solver``
accepts, at a fine grid, on a non-stiff linear problem with forcing, in float64,
through both entry points, with and without ``solution_times``, batch 1 and 3;
bdf also on Robertson's stiff chemical kinetics. Schemes that cannot be a
solver of dy/dt = f(t, y) (their fields take parts of the state) must be refused.
Every solve compiles under XLA, so the default suite runs one case per solver and
entry point; the cross product is ``-m slow``.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

import odezoo  # noqa: E402
from odezoo.ode.options import ADAPTIVE, check_solver  # noqa: E402

A = np.array([[-0.2, 1.5], [-1.5, -0.2]])
B = np.array([0.5, -0.3])
T1 = 2.0
TIMES = [0.5, 1.25, 2.0]
Y0 = np.array([[1.0, 0.0], [0.3, -0.7], [-1.2, 0.4]])


def _accepted_schemes():
    accepted, refused = [], []
    for name in odezoo.list_schemes():
        try:
            check_solver(name)
        except ValueError:
            refused.append(name)
        else:
            accepted.append(name)
    return accepted, refused


SCHEMES, REFUSED = _accepted_schemes()
SOLVERS = list(ADAPTIVE) + SCHEMES


def _grid(solver):
    """Adaptive tolerances, or a fine grid for the scheme's order, and the error allowed."""
    implicit = getattr(odezoo.get_scheme(solver), "is_implicit", lambda: False)() if solver not in ADAPTIVE else False
    if solver in ADAPTIVE or implicit:  # an ESDIRK pair solves adaptively only
        return dict(rtol=1e-8, atol=1e-10), 1e-5
    order = odezoo.get_scheme(solver).order
    num_steps = {1: 4000, 2: 400}.get(order, 80)
    return dict(num_steps=num_steps), 10.0 * (T1 / num_steps) ** order


def _reference(y0, times, f=lambda t, y: A @ y + B * np.cos(t), method="DOP853", **tol):
    tol = tol or dict(rtol=1e-12, atol=1e-14)
    return np.stack([solve_ivp(f, (0.0, times[-1]), y, t_eval=times, method=method, **tol).y.T for y in y0])


class LinearField(keras.layers.Layer):
    """dy/dt = A y + b cos t on a (batch, 2) state."""

    def call(self, t, y):
        return tf.linalg.matvec(tf.constant(A, y.dtype), y) + tf.constant(B, y.dtype) * tf.cos(t)


def _cases():
    """(solver, api, with_times, batch): one case per solver and api by default, the rest slow."""
    out = []
    for solver in SOLVERS:
        for api in ("ODEBlock", "odeint"):
            for with_times in (True, False):
                for batch in (1, 3):
                    default = (with_times, batch) == ((True, 3) if api == "ODEBlock" else (False, 1))
                    marks = () if default else (pytest.mark.slow,)
                    out.append(
                        pytest.param(
                            solver,
                            api,
                            with_times,
                            batch,
                            marks=marks,
                            id=f"{solver}-{api}-{'times' if with_times else 't1'}-b{batch}",
                        )
                    )
    return out


@pytest.mark.parametrize("solver,api,with_times,batch", _cases())
def test_solver_against_scipy_on_a_non_stiff_problem(solver, api, with_times, batch):
    options, allowed = _grid(solver)
    times = TIMES if with_times else [T1]
    y0 = Y0[:batch]
    ref = _reference(y0, times)  # (batch, times, 2)
    if api == "ODEBlock":
        block = odezoo.ODEBlock(
            LinearField(dtype="float64"),
            solver=solver,
            t1=T1,
            dtype="float64",
            solution_times=TIMES if with_times else None,
            **options,
        )
        out = block(tf.constant(y0)).numpy()
        got = out if with_times else out[:, None]
    else:
        y = tf.constant(y0[0] if batch == 1 else y0)
        t = tf.constant([0.0] + times, tf.float64)
        out = odezoo.odeint(LinearField(dtype="float64"), y, t, solver=solver, **options).numpy()[1:]
        got = out[None] if batch == 1 else np.swapaxes(out, 0, 1)  # (batch, times, 2)
    assert got.shape == ref.shape
    err = np.abs(got - ref).max()
    assert err <= allowed, (solver, err, allowed)


def _robertson_np(t, y):
    return np.array(
        [-0.04 * y[0] + 1e4 * y[1] * y[2], 0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2, 3e7 * y[1] ** 2]
    )


class Robertson(keras.layers.Layer):
    """Robertson's three-species chemical kinetics (stiff) on a (..., 3) state."""

    def call(self, t, y):
        y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
        return tf.stack([-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2**2, 3e7 * y2**2], -1)


@pytest.mark.parametrize(
    "api,batch",
    [
        ("odeint", 1),
        pytest.param("ODEBlock", 2, marks=pytest.mark.slow),
        pytest.param("ODEBlock", 1, marks=pytest.mark.slow),
    ],
)
def test_bdf_against_radau_on_robertson(api, batch):
    """The reported bug: ODEBlock(solver="bdf") gave one wrong row and zeros after it."""
    times = [0.4, 4.0, 40.0]
    y0 = np.tile([[1.0, 0.0, 0.0]], (batch, 1))
    ref = _reference(y0, times, f=_robertson_np, method="Radau", rtol=1e-12, atol=1e-14)
    tol = dict(rtol=1e-6, atol=1e-10)
    if api == "ODEBlock":
        block = odezoo.ODEBlock(
            Robertson(dtype="float64"), solver="bdf", t1=40.0, solution_times=times, dtype="float64", **tol
        )
        got = block(tf.constant(y0)).numpy()
    else:
        got = odezoo.odeint(
            Robertson(dtype="float64"), tf.constant(y0[0]), tf.constant([0.0] + times, tf.float64), solver="bdf", **tol
        ).numpy()[None, 1:]
    scale = np.abs(ref).max(axis=(0, 1))  # per species: y2 is ~1e-5, y1 and y3 are O(1)
    assert np.all(np.abs(got - ref) <= 1e-5 * scale + 1e-10), np.abs(got - ref).max(axis=(0, 1))


def test_the_matrix_covers_every_scheme():
    # every scheme of the plugins (other tests in this process register throwaway schemes at run time)
    report = odezoo.plugin_report()
    from_plugins = {n for rec in report["loaded"] for n in rec["schemes"]} - set(report["runtime"]["schemes"])
    assert from_plugins and from_plugins <= set(SCHEMES) | set(REFUSED)
    assert {"euler", "rk4", "linear_multistep"} <= set(SCHEMES)  # state_size 2 (a history) is a solver
    assert REFUSED == ["reversible"]  # its fields take halves of the state: refused with a clear error
    with pytest.raises(ValueError, match="reversible"):
        odezoo.odeint(lambda t, y: -y, [1.0, 1.0], [0.0, 1.0], solver="reversible", num_steps=4)
