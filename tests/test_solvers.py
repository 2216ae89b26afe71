"""odezoo's Dormand-Prince 5(4), the tfp wrappers and odeint: accuracy, gradients, guards."""

import time

import numpy as np
import pytest
import tensorflow as tf
from scipy.integrate import solve_ivp

import odezoo
from odezoo import ode
from odezoo.ode import status as ode_status
from odezoo.ode import odeint

F64 = tf.float64


# --------------------------------------------------------------------------- problems
def _linear():
    A = np.array([[-0.1, 2.0], [-2.0, -0.1]])
    return dict(np_f=lambda t, y: A @ y, tf_f=lambda t, y: tf.linalg.matvec(tf.constant(A), y), y0=[1.0, 0.0], t1=5.0)


def _lotka_volterra():
    a, b, c, d = 1.5, 1.0, 3.0, 1.0

    def np_f(t, y):
        return np.array([a * y[0] - b * y[0] * y[1], -c * y[1] + d * y[0] * y[1]])

    def tf_f(t, y):
        return tf.stack([a * y[0] - b * y[0] * y[1], -c * y[1] + d * y[0] * y[1]])

    return dict(np_f=np_f, tf_f=tf_f, y0=[1.0, 1.0], t1=6.0)


def _van_der_pol():
    mu = 1.0

    def np_f(t, y):
        return np.array([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    def tf_f(t, y):
        return tf.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    return dict(np_f=np_f, tf_f=tf_f, y0=[2.0, 0.0], t1=6.0)


PROBLEMS = {"linear": _linear, "lotka_volterra": _lotka_volterra, "van_der_pol": _van_der_pol}


def _reference(p, ts):
    return solve_ivp(p["np_f"], (0.0, p["t1"]), p["y0"], t_eval=ts, method="DOP853", rtol=1e-12, atol=1e-14).y.T


_SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "solver,problem",
    [
        ("dopri5", "linear"),
        ("dopri5", "lotka_volterra"),
        ("dopri5", "van_der_pol"),
        pytest.param("tfp_dopri5", "linear", marks=_SLOW),  # tfp is also checked in test_tight_tolerance_matches_tfp
        pytest.param("tfp_dopri5", "lotka_volterra", marks=_SLOW),
        pytest.param("tfp_dopri5", "van_der_pol", marks=_SLOW),
    ],
)
def test_against_scipy(problem, solver):
    p = PROBLEMS[problem]()
    ts = np.linspace(0.0, p["t1"], 9)
    rtol, atol = 1e-6, 1e-9
    ys = odeint(p["tf_f"], tf.constant(p["y0"], F64), tf.constant(ts), solver=solver, rtol=rtol, atol=atol)
    assert ys.shape == (9, 2)
    ref = _reference(p, ts)
    err = np.abs(ys.numpy() - ref).max()
    rk45 = solve_ivp(p["np_f"], (0.0, p["t1"]), p["y0"], t_eval=ts, method="RK45", rtol=rtol, atol=atol)
    err45 = np.abs(rk45.y.T - ref).max()
    assert err <= 4 * err45 + 1e-12, (err, err45)


def test_tight_tolerance_matches_tfp():
    p = _lotka_volterra()
    ts = tf.constant(np.linspace(0.0, p["t1"], 5))
    y0 = tf.constant(p["y0"], F64)
    ours = odeint(p["tf_f"], y0, ts, rtol=1e-10, atol=1e-12)
    theirs = odeint(p["tf_f"], y0, ts, solver="tfp_dopri5", rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6, atol=1e-8)
    ref = _reference(p, ts.numpy())
    assert np.abs(ours.numpy() - ref).max() <= 4 * np.abs(theirs.numpy() - ref).max() + 1e-12


def test_backward_in_time_and_dense_output():
    p = _linear()
    y1 = _reference(p, [p["t1"]])[0]
    ts = np.linspace(p["t1"], 0.0, 21)  # decreasing: solve back to y0
    ys = odeint(p["tf_f"], tf.constant(y1, F64), tf.constant(ts), rtol=1e-9, atol=1e-11)
    ref = solve_ivp(p["np_f"], (p["t1"], 0.0), y1, t_eval=ts, method="DOP853", rtol=1e-12, atol=1e-14).y.T
    np.testing.assert_allclose(ys.numpy(), ref, atol=1e-7)


def test_odeint_shapes_and_fixed_grid_order():
    y0 = tf.constant(np.ones((3, 2)), F64)
    f = lambda t, y: -y + tf.cos(t)  # noqa: E731
    assert odeint(f, y0, tf.constant([0.0, 0.5, 1.0], F64)).shape == (3, 3, 2)
    exact = 0.5 * (np.cos(1.0) + np.sin(1.0)) + 0.5 * np.exp(-1.0)  # y' = -y + cos t, y(0) = 1
    errs = [
        abs(odeint(f, y0, tf.constant([0.0, 1.0], F64), solver="rk4", num_steps=n).numpy()[-1, 0, 0] - exact)
        for n in (4, 8)
    ]
    slope = np.log2(errs[0] / errs[1])
    assert abs(slope - 4) < 0.3, errs
    with pytest.raises(ValueError, match="num_steps"):
        odeint(f, y0, tf.constant([0.0, 1.0], F64), solver="rk4")
    with pytest.raises(odezoo.UnknownNameError):
        odeint(f, y0, tf.constant([0.0, 1.0], F64), solver="rk5")
    with pytest.raises(TypeError, match="max_step"):
        odeint(f, y0, tf.constant([0.0, 1.0], F64), max_step=3)


# --------------------------------------------------------------------------- gradients
W0 = np.array([[-0.5, 1.0], [-1.0, -0.3]])
WEIGHTS = tf.constant([[1.0], [2.0], [3.0]], F64)


def _loss_fn(mode, solver="dopri5", num_steps=None):
    w = tf.Variable(W0, dtype=F64)

    def f(t, y):
        return tf.tanh(tf.linalg.matvec(w, y)) + 0.3 * tf.sin(t)

    @tf.function(jit_compile=True)
    def loss_and_grad(y0):
        with tf.GradientTape() as tape:
            tape.watch(y0)
            ys, _ = ode.solve(
                f,
                y0,
                tf.constant(0.0, F64),
                tf.constant([0.5, 1.0, 2.0], F64),
                solver=solver,
                rtol=1e-10,
                atol=1e-12,
                gradient=mode,
                num_steps=num_steps,
            )
            loss = tf.reduce_sum(ys**2 * WEIGHTS)
        gy, gw = tape.gradient(loss, [y0, w])
        return loss, gy, gw

    return w, loss_and_grad


def test_adjoint_matches_finite_differences_and_rk4_backprop():
    y0 = tf.constant([1.0, 0.5], F64)
    w, adjoint = _loss_fn("adjoint")
    loss, gy, gw = adjoint(y0)
    # central finite differences on w and y0
    eps = 1e-5
    fd_w = np.zeros_like(W0)
    for i in range(2):
        for j in range(2):
            d = np.zeros_like(W0)
            d[i, j] = eps
            w.assign(W0 + d)
            lp = adjoint(y0)[0].numpy()
            w.assign(W0 - d)
            lm = adjoint(y0)[0].numpy()
            fd_w[i, j] = (lp - lm) / (2 * eps)
    w.assign(W0)
    np.testing.assert_allclose(gw.numpy(), fd_w, rtol=1e-5, atol=1e-7)
    fd_y = [(adjoint(y0 + eps * e)[0].numpy() - adjoint(y0 - eps * e)[0].numpy()) / (2 * eps) for e in np.eye(2)]
    np.testing.assert_allclose(gy.numpy(), fd_y, rtol=1e-5, atol=1e-7)
    # backprop through a fine rk4 grid
    w2, rk4 = _loss_fn("backprop", solver="rk4", num_steps=200)
    _, gy2, gw2 = rk4(y0)
    np.testing.assert_allclose(gw.numpy(), gw2.numpy(), rtol=1e-4)
    np.testing.assert_allclose(gy.numpy(), gy2.numpy(), rtol=1e-4)


def _cubic_decay_gradient(**adjoint_options):
    """d y(1)/dθ for y' = -θ y³, y(0) = 10, θ = 1, by the dopri5 adjoint at 1e-8 (float64)."""
    theta = tf.Variable(1.0, dtype=F64)

    @tf.function(jit_compile=True)
    def run():
        with tf.GradientTape() as tape:
            outs, _ = ode.adjoint_solve(
                lambda t, y, c: [-theta * y[0] ** 3],
                0.0,
                [tf.constant([10.0], F64)],
                tf.constant([1.0], F64),
                [],
                options=dict(rtol=1e-8, atol=1e-8, **adjoint_options),
            )
            y1 = outs[0][-1][0]
        return tape.gradient(y1, theta)

    return float(run().numpy())


@pytest.mark.slow  # default suite under 10 min on 2 cores
def test_adjoint_restarts_from_forward_checkpoints():
    """Trajectories of y' = -θy³ converge, so re-integrating y backward from the computed y(1)
    amplifies its error (by (1 + 2θy0²)^1.5 ≈ 2850 here); restarting y from the forward
    solution in the middle of the interval makes the gradient several times more accurate."""
    exact = -1000.0 / 201.0**1.5  # y(1) = y0 / sqrt(1 + 2θ y0²)
    tight = dict(adjoint_rtol=1e-8, adjoint_atol=1e-8)
    errs = {k: abs(_cubic_decay_gradient(adjoint_checkpoints=k, **tight) / exact - 1) for k in (0, 1, 3)}
    assert max(errs.values()) < 1e-6
    assert errs[1] < errs[0] / 3 and errs[3] < errs[0] / 3, errs
    # the defaults: one checkpoint, backward tolerances 10x the forward ones
    default = abs(_cubic_decay_gradient() / exact - 1)
    assert default < errs[0] and default < 1e-6, (default, errs)


def test_adjoint_options_are_checked():
    for kwargs, name in (
        (dict(adjoint_checkpoints=-1), "adjoint_checkpoints"),
        (dict(adjoint_checkpoints=1.5), "adjoint_checkpoints"),
        (dict(adjoint_rtol=0.0), "adjoint_rtol"),
    ):
        with pytest.raises(ValueError, match=name):
            ode.DormandPrince(**kwargs)


@pytest.mark.slow
def test_backprop_through_dopri5_matches_adjoint():
    y0 = tf.constant([1.0, 0.5], F64)
    _, adjoint = _loss_fn("adjoint")
    _, bp = _loss_fn("backprop")
    _, gy, gw = adjoint(y0)
    _, gy3, gw3 = bp(y0)
    np.testing.assert_allclose(gw.numpy(), gw3.numpy(), rtol=1e-6)
    np.testing.assert_allclose(gy.numpy(), gy3.numpy(), rtol=1e-6)


def test_adjoint_gradient_reaches_constants_and_ffjord():
    import tensorflow_probability as tfp

    solver = ode.DormandPrince(rtol=1e-8, atol=1e-10)
    c = tf.constant(0.7, F64)

    @tf.function(jit_compile=True)
    def run(c):
        with tf.GradientTape() as tape:
            tape.watch(c)
            res = solver.solve(
                lambda t, y, scale: -scale * y,
                0.0,
                tf.constant([1.0, 2.0], F64),
                solution_times=[1.0],
                constants={"scale": c},
            )
            loss = tf.reduce_sum(res.states[-1])
        return loss, tape.gradient(loss, c), res.diagnostics.status

    loss, g, status = run(c)
    assert int(status) == 0
    np.testing.assert_allclose(g.numpy(), -3.0 * np.exp(-0.7), rtol=1e-6)

    w = tf.Variable([[-0.3, 0.2], [0.1, -0.4]], dtype=tf.float32)
    bij = tfp.bijectors.FFJORD(
        lambda t, x: tf.linalg.matvec(w, x),
        ode_solve_fn=solver.solve,
        trace_augmentation_fn=tfp.bijectors.ffjord.trace_jacobian_exact,
    )
    x = tf.constant([[0.5, -1.0], [1.0, 0.3]], tf.float32)

    # graph mode: tfp's trace_jacobian_exact differentiates a while_loop (jacobians_diag), whose
    # second derivative the adjoint needs and XLA cannot compile (the same with tfp's own solver)
    @tf.function
    def flow(x):
        with tf.GradientTape() as tape:
            y = bij.forward(x)
            ldj = bij.forward_log_det_jacobian(x, event_ndims=1)
            loss = tf.reduce_sum(y) + tf.reduce_sum(ldj)
        return y, ldj, tape.gradient(loss, w)

    y, ldj, gw = flow(x)
    expm = tf.linalg.expm(tf.cast(w, F64)).numpy()
    np.testing.assert_allclose(y.numpy(), x.numpy() @ expm.T, rtol=1e-4)
    np.testing.assert_allclose(ldj.numpy(), np.full(2, np.trace(w.numpy())), rtol=1e-4)
    assert np.all(np.isfinite(gw.numpy()))


# --------------------------------------------------------------------------- step-size controllers
def _integrate(controller, f, y0, t1, tol):
    out, info = ode.integrate(
        f, 0.0, [tf.constant(y0, F64)], tf.constant([t1], F64), rtol=tol, atol=tol, controller=controller
    )
    return out[0][0].numpy(), int(info["nfe"]), int(info["steps"]) - int(info["accepted"])


@pytest.mark.parametrize("problem", ["decay", "logistic"])
def test_controllers_against_closed_form(problem):
    """Both controllers meet the tolerance; the predictive one follows growing steps with fewer calls."""
    if problem == "decay":  # y' = -y/(1+t)^2: the steps grow all the way
        f, y0, t1 = (lambda t, y: [-y[0] / (1.0 + t) ** 2]), np.array([1.0, 2.0]), 30.0
        exact = y0 * np.exp(1.0 / (1.0 + t1) - 1.0)
    else:  # y' = y(1-y): a transition, then growing steps
        f, y0, t1 = (lambda t, y: [y[0] * (1.0 - y[0])]), np.array([0.01, 0.02]), 20.0
        exact = 1.0 / (1.0 + (1.0 / y0 - 1.0) * np.exp(-t1))
    for tol in (1e-4, 1e-7):
        nfe = {}
        for controller in ("predictive", "pi"):  # "pid" (the elementary by default): tests/test_controllers.py
            y, nfe[controller], rejected = _integrate(controller, f, y0, t1, tol)
            assert np.abs(y - exact).max() / np.abs(exact).max() <= 20 * tol, (controller, tol)
            assert rejected <= 1, (controller, tol, rejected)
        assert nfe["predictive"] < nfe["pi"], (tol, nfe)


def test_invalid_controller_names_the_choices():
    with pytest.raises(ValueError, match=r"controller='pd'.*'predictive', 'pi', 'pid'"):
        ode.DormandPrince(controller="pd")
    with pytest.raises(ValueError, match=r"controller='PI'.*'predictive', 'pi', 'pid'"):
        _integrate("PI", lambda t, y: [-y[0]], np.array([1.0]), 1.0, 1e-3)


# --------------------------------------------------------------------------- NFE
@pytest.mark.parametrize("jit", [False, pytest.param(True, marks=_SLOW)])  # XLA: test_odeblock's twin
def test_nfe_equals_true_field_calls(jit):
    calls = tf.Variable(0, dtype=tf.int32)
    w = tf.Variable([[-0.5, 1.0], [-1.0, -0.3]], dtype=tf.float32)

    def f(t, y):
        calls.assign_add(1)
        return tf.tanh(tf.linalg.matvec(w, y))

    @tf.function(jit_compile=jit)
    def run(y0):
        calls.assign(0)
        with tf.GradientTape() as tape:
            tape.watch(y0)
            out, info = ode.adjoint_solve(
                lambda t, y, c: [f(t, y[0])], 0.0, [y0], tf.constant([0.5, 1.0]), [], options=dict(rtol=1e-5, atol=1e-6)
            )
            forward_calls = calls.read_value()
            loss = tf.reduce_sum(out[0])
        g = tape.gradient(loss, w)
        return info["nfe"], forward_calls, calls.read_value(), g

    nfe, fwd_calls, total_calls, g = run(tf.constant([[1.0, 0.5], [0.2, -0.1]]))
    assert int(nfe) == int(fwd_calls) > 0
    assert int(total_calls) > int(fwd_calls)


# --------------------------------------------------------------------------- guards
def _timed_raise(fn, match):
    t = time.perf_counter()
    with pytest.raises(odezoo.SolverError, match=match):
        fn()
    return time.perf_counter() - t


def test_budget_exhausted_raises():
    f = lambda t, y: -y  # noqa: E731
    spent = _timed_raise(
        lambda: odeint(
            f, tf.constant([1.0], F64), tf.constant([0.0, 100.0], F64), rtol=1e-12, atol=1e-14, max_steps=20
        ),
        r"status 1.*max_steps=20",
    )
    assert spent < 30


def test_nan_at_half_raises():
    f = lambda t, y: tf.where(t > 0.5, tf.constant(np.nan, F64), -y)  # noqa: E731
    msg = _timed_raise(
        lambda: odeint(f, tf.constant([1.0], F64), tf.constant([0.0, 1.0], F64)),
        r"status 2.*rtol=1e-07, atol=1e-09.*time reached t=0\.",
    )
    assert msg < 30


def test_tfp_dopri5_guards_nan_and_budget():
    nan_f = lambda t, y: tf.where(t > 0.5, tf.constant(np.nan, F64), -y)  # noqa: E731
    _timed_raise(
        lambda: odeint(nan_f, tf.constant([1.0], F64), tf.constant([0.0, 1.0], F64), solver="tfp_dopri5"), "status 2"
    )
    stiff = lambda t, y: -1e4 * (y - tf.cos(t))  # noqa: E731
    _timed_raise(
        lambda: odeint(
            stiff, tf.constant([1.0], F64), tf.constant([0.0, 10.0], F64), solver="tfp_dopri5", max_steps=30
        ),
        "status 1",
    )


def test_stiff_field_small_budget_raises():
    stiff = lambda t, y: -1e4 * (y - tf.cos(t))  # noqa: E731
    _timed_raise(
        lambda: odeint(stiff, tf.constant([1.0], F64), tf.constant([0.0, 10.0], F64), max_steps=50), "status 1"
    )


def test_inf_cotangent_is_reported_under_xla():
    w = tf.Variable([[-0.5]], dtype=F64)

    @tf.function(jit_compile=True)
    def run(y0):
        with tf.GradientTape() as tape:
            tape.watch(y0)
            out, info = ode.adjoint_solve(
                lambda t, y, c: [tf.linalg.matvec(w, y[0])],
                0.0,
                [y0],
                tf.constant([1.0], F64),
                [],
                options=dict(rtol=1e-6, atol=1e-8),
                on_backward=lambda i: holder.update(i),
            )
            loss = tf.reduce_sum(out[0]) * tf.constant(np.inf, F64)
        g = tape.gradient(loss, [y0, w])
        return g, holder["reason"], holder["steps"]

    holder = {}
    t = time.perf_counter()
    (gy, gw), reason, steps = run(tf.constant([1.0], F64))
    assert time.perf_counter() - t < 60
    assert int(reason) == ode_status.NONFINITE
    assert np.all(np.isnan(gy.numpy())) or np.all(~np.isfinite(gy.numpy()))
    with pytest.raises(odezoo.SolverError, match="status 2"):
        ode.raise_for_status(reason, rtol=1e-6, atol=1e-8, time_reached=1.0, num_steps=steps)


def test_xla_drops_assert():
    """Why odezoo returns a status instead of asserting: XLA ignores Assert ops."""

    @tf.function(jit_compile=True)
    def xla(x):
        tf.debugging.Assert(x > 0, ["x must be positive"])
        return x + 1

    @tf.function
    def graph(x):
        tf.debugging.Assert(x > 0, ["x must be positive"])
        return x + 1

    assert float(xla(tf.constant(-1.0))) == 0.0  # the assertion was silently dropped
    with pytest.raises(tf.errors.InvalidArgumentError):
        graph(tf.constant(-1.0))


def test_bdf_on_robertson():
    def np_f(t, y):
        return np.array(
            [-0.04 * y[0] + 1e4 * y[1] * y[2], 0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2, 3e7 * y[1] ** 2]
        )

    def tf_f(t, y):
        return tf.stack(
            [-0.04 * y[0] + 1e4 * y[1] * y[2], 0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2, 3e7 * y[1] ** 2]
        )

    ts = np.array([0.0, 1.0, 10.0, 100.0])
    ref = solve_ivp(np_f, (0, 100), [1.0, 0, 0], t_eval=ts, method="Radau", rtol=1e-12, atol=1e-14).y.T
    ys = odeint(tf_f, tf.constant([1.0, 0, 0], F64), tf.constant(ts), solver="bdf", rtol=1e-6, atol=1e-10)
    theirs = solve_ivp(np_f, (0, 100), [1.0, 0, 0], t_eval=ts, method="BDF", rtol=1e-6, atol=1e-10).y.T
    assert np.abs(ys.numpy() - ref).max() <= 4 * np.abs(theirs - ref).max()
