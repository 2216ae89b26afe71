"""ESDIRK pairs (kvaerno3, kvaerno5): stiff solves against scipy, Newton, gradients, and the guards (issue 16)."""

import numpy as np
import pytest
import tensorflow as tf
from scipy.integrate import solve_ivp

import odezoo
from odezoo._errors import PluginError
from odezoo.ode import status as ode_status
from odezoo.testing import _central_differences

F64 = tf.float64


def _robertson(t, y):
    return tf.stack([-0.04 * y[0] + 1e4 * y[1] * y[2], 0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2,
                     3e7 * y[1] ** 2])  # fmt: skip


def _robertson_np(t, y):
    return [-0.04 * y[0] + 1e4 * y[1] * y[2], 0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2, 3e7 * y[1] ** 2]


@pytest.mark.slow
def test_robertson_against_scipy_within_a_few_tolerance_units():
    """Robertson on [0, 1e5] (stiffness ratio ~1e11): kvaerno5's error, in units of the tolerance
    (atol + rtol·|y|), is a few units, as scipy's BDF's; an explicit pair exhausts its budget."""
    ts = np.array([0.0, 1e-2, 1.0, 1e2, 1e4, 1e5])
    ref = solve_ivp(_robertson_np, (0, 1e5), [1, 0, 0], method="Radau", rtol=1e-12, atol=1e-16, t_eval=ts).y.T
    rtol, atol = 1e-6, 1e-10
    y = odezoo.odeint(_robertson, tf.constant([1.0, 0.0, 0.0], F64), tf.constant(ts), solver="kvaerno5",
                      rtol=rtol, atol=atol)  # fmt: skip
    units = np.max(np.abs(y.numpy() - ref) / (atol + rtol * np.abs(ref)))
    bdf = solve_ivp(_robertson_np, (0, 1e5), [1, 0, 0], method="BDF", rtol=rtol, atol=atol, t_eval=ts).y.T
    bdf_units = np.max(np.abs(bdf - ref) / (atol + rtol * np.abs(ref)))
    assert units < 5 * max(bdf_units, 1.0), (units, bdf_units)
    with pytest.raises(odezoo.SolverError, match="status 1"):
        odezoo.odeint(_robertson, tf.constant([1.0, 0.0, 0.0], F64), tf.constant([0.0, 1e5], F64),
                      solver="dopri5", rtol=rtol, atol=atol, max_steps=2000)  # fmt: skip


@pytest.mark.slow
def test_the_adjoint_refuses_a_drifted_backward_state():
    """Reproduces a silently wrong gradient: on y' = Wy with a -1000 eigenvalue the adjoint's
    backward re-integration of y grows like e^{1000 t}; dopri5's adjoint returned a finite
    gradient 1e95 off. It is now a failed backward solve (status 6, NaN gradients; its reason
    names the remedy, the checkpoint gradient, which test_a_stiff_field_trained... checks)."""
    w = tf.Variable([[-1000.0, 1.0], [0.0, -0.5]], dtype=F64)
    y0 = tf.constant([[1.0, 2.0], [0.5, -1.0]], F64)

    def f(t, y):
        return tf.linalg.matvec(w, y) + tf.sin(y)

    ts = tf.constant([0.0, 0.5, 1.0], F64)
    seen = {}
    opts = dict(rtol=1e-8, atol=1e-10, options=dict(rtol=1e-8, atol=1e-10, max_steps=100000))
    from odezoo.ode.adjoint import adjoint_solve

    @tf.function(jit_compile=True)
    def run():
        with tf.GradientTape() as tape:
            (y,), _ = adjoint_solve(lambda t, y, c: [f(t, y[0])], tf.constant(0.0, F64), [y0], ts[1:], [],
                                    options=opts["options"], on_backward=lambda i: seen.update(i))  # fmt: skip
            loss = tf.reduce_sum(y[-1] ** 2)
        return tape.gradient(loss, w), seen["reason"]

    grad, reason = run()
    assert int(reason) == ode_status.DRIFT
    assert np.all(np.isnan(grad.numpy()))
    assert "checkpoint" in ode_status.REASONS[ode_status.DRIFT]


@pytest.mark.parametrize("solver", ["dopri5", pytest.param("kvaerno5", marks=pytest.mark.slow)])
def test_an_eager_backprop_gradient_through_odeint(solver):
    """Reproduces an eager odeint under a GradientTape with gradient="backprop" failing with
    TensorFlow's "TensorList crossing the XLA/TF boundary" (every adaptive solver): it now runs
    by the graph executor and matches the closed form d/dW of sum(expm(W) y0)."""
    from scipy.linalg import expm

    w0 = np.array([[-2.0, 1.0], [0.0, -0.5]])
    w = tf.Variable(w0)
    y0 = np.array([1.0, 2.0])
    with tf.GradientTape() as tape:
        y = odezoo.odeint(lambda t, y: tf.linalg.matvec(w, y), tf.constant([y0]), tf.constant([0.0, 1.0], F64),
                          solver=solver, gradient="backprop", rtol=1e-9, atol=1e-11)  # fmt: skip
        loss = tf.reduce_sum(y[-1])
    fd = _central_differences(lambda: float(np.sum(expm(w.numpy()) @ y0)), w, eps=1e-6)
    np.testing.assert_allclose(tape.gradient(loss, w).numpy(), fd, rtol=1e-6)


def test_an_esdirk_tableau_is_checked_when_declared():
    with pytest.raises(PluginError, match="diagonal"):

        class NoDiagonal(odezoo.DiagonallyImplicitRungeKutta):
            order, error_order = 2, 1
            A = [[0.0], [0.5, 0.0]]
            b = [0.5, 0.5]
            b_hat = [1.0, 0.0]

    with pytest.raises(PluginError, match="lower triangular"):

        class Upper(odezoo.DiagonallyImplicitRungeKutta):
            order, error_order = 2, 1
            A = [[0.0, 0.1], [0.5, 0.5]]
            b = [0.5, 0.5]
            b_hat = [1.0, 0.0]

    with pytest.raises(PluginError, match="linear_solver"):

        class Bad(odezoo.DiagonallyImplicitRungeKutta):
            order, error_order = 2, 1
            A = [[0.0], [0.5, 0.5]]
            b = [0.5, 0.5]
            b_hat = [1.0, 0.0]
            linear_solver = "lu"


def test_an_esdirk_pair_refuses_a_fixed_grid_clearly():
    with pytest.raises(ValueError, match="implicit pair 'kvaerno5' solves adaptively only"):
        odezoo.odeint(lambda t, y: -y, tf.constant([1.0], F64), tf.constant([0.0, 1.0], F64),
                      solver="kvaerno5", num_steps=4)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", ["kvaerno3", "kvaerno5"])
def test_check_solver(name):
    """The conformance kit: main and embedded orders (3/2, 5/4), the estimate's order, tolerance
    proportionality, adjoint/backprop/checkpoint gradients against finite differences, a .keras
    round trip."""
    result = odezoo.testing.check_solver(name)
    assert result["dense"] == "step"
    assert abs(result["order_measured"] - odezoo.get_scheme(name).order) < 0.4


@pytest.mark.slow
@pytest.mark.parametrize("linear_solver", ["rows", "full", "krylov"])
def test_every_linear_solver_gives_the_same_stiff_solution(linear_solver):
    """A batch of 8 stiff 4-dimensional linear systems (eigenvalues to -1e4) against the matrix
    exponential, with each way of solving the Newton systems."""
    rng = np.random.default_rng(3)
    mats = []
    for _ in range(8):
        q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
        mats.append(q @ np.diag(-np.logspace(0, 4, 4)) @ q.T)
    mats = np.stack(mats)
    y0 = rng.normal(size=(8, 4))
    from scipy.linalg import expm

    exact = np.stack([expm(m * 2.0) @ v for m, v in zip(mats, y0)])

    class Pair(odezoo.get_scheme("kvaerno5")):
        pass

    Pair.linear_solver = linear_solver
    with odezoo.scoped_registry():
        odezoo.register_scheme(f"kvaerno5_{linear_solver}")(Pair)
        field = lambda t, y: tf.einsum("bij,bj->bi", tf.constant(mats), y)  # noqa: E731
        out = odezoo.odeint(field, tf.constant(y0), tf.constant([0.0, 2.0], F64), solver=f"kvaerno5_{linear_solver}",
                            rtol=1e-8, atol=1e-10)  # fmt: skip
    np.testing.assert_allclose(out[-1].numpy(), exact, atol=1e-7)


@pytest.mark.slow
def test_newton_that_cannot_converge_fails_with_its_own_status():
    """A field that is NaN past t = 0.5: every stage there fails, the step is halved until it
    underflows, and the solve ends with status 5 (not a hang, not numbers)."""

    def f(t, y):
        return tf.where(t > 0.5, tf.constant(np.nan, F64), -y)

    with pytest.raises(odezoo.SolverError, match="status 5"):
        odezoo.odeint(f, tf.constant([1.0], F64), tf.constant([0.0, 1.0], F64), solver="kvaerno3")


@pytest.mark.slow
@pytest.mark.parametrize(
    "stiff, gradient", [(-2.0, "adjoint"), (-1000.0, "adjoint"), (-1000.0, "checkpoint"), (-1000.0, "backprop")]
)
def test_a_stiff_field_trained_through_kvaerno5(stiff, gradient):
    """The gradient of a loss through kvaerno5 in a field's parameters against central
    differences, every gradient on the stiff dissipative field (eigenvalue -1000): the adjoint
    of an implicit pair reads y off the forward solve (odezoo.ode.interpolated), where
    re-integrating it backward drifts (explicit pairs' adjoint: status 6, the test above)."""
    w = tf.Variable([[stiff, 1.0], [0.0, -0.5]], dtype=F64)
    y0 = tf.constant([[1.0, 2.0], [0.5, -1.0]], F64)
    ts = tf.constant([0.0, 0.5, 1.0], F64)

    def loss(tol=1e-8):
        y = odezoo.odeint(lambda t, y: tf.linalg.matvec(w, y) + tf.sin(y), y0, ts, solver="kvaerno5",
                          rtol=tol, atol=tol * 1e-2, gradient=gradient)  # fmt: skip
        return tf.reduce_sum(y[-1] ** 2) + tf.reduce_sum(y[1])

    g = tf.function(lambda: tf.gradients(loss(), [w])[0], jit_compile=True)().numpy()
    fd = _central_differences(lambda: float(loss(tol=1e-10)), w, eps=1e-5)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-8)


def test_odeblock_backprop_solves_newton_with_the_true_jacobian():
    """Regression: ODEBlock's gradient="backprop" path traced its solve while the caller's tape
    was paused, which pauses every tape made inside it too: the Newton Jacobian (a tape) came
    out zero, so the stages were solved by a fixed-point iteration that fails on a stiff field.
    The forward solve must be the same as the checkpoint gradient's (same steps, same NFE)."""
    import keras

    class Stiff(keras.layers.Layer):
        def call(self, t, y):
            return tf.linalg.matvec(tf.constant([[-1000.0, 1.0], [0.0, -0.5]], y.dtype), y) + 0.1 * tf.sin(y)

    x = tf.constant([[1.0, 2.0], [0.5, -1.0]])
    solved = {}
    for gradient in ("checkpoint", "backprop"):
        block = odezoo.ODEBlock(Stiff(), solver="kvaerno5", gradient=gradient, rtol=1e-5, atol=1e-7)
        solved[gradient] = (block(x).numpy(), int(block.nfe_forward.numpy()))
    np.testing.assert_allclose(solved["backprop"][0], solved["checkpoint"][0], rtol=1e-6)
    assert solved["backprop"][1] == solved["checkpoint"][1]


@pytest.mark.parametrize("solver", ["kvaerno3", pytest.param("kvaerno5", marks=pytest.mark.slow)])
def test_the_adjoint_of_a_stiff_linear_field_against_the_frechet_derivative(solver):
    """y' = W y with eigenvalues -1000 and -0.5 (non-normal), two rows, a loss on three solution
    times: d/dW of sum_i c_i . expm(t_i W) y0 is sum_i c_i . L(t_i W, t_i E) y0 (scipy's Fréchet
    derivative of expm), d/dy0 sum_i expm(t_i W)^T c_i. The adjoint of an implicit pair reads y
    off the forward solve; the explicit pairs' backsolve drifts here (status 6)."""
    from scipy.linalg import expm, expm_frechet

    w0 = np.array([[-1000.0, 1.0], [0.0, -0.5]])
    y0 = np.array([[1.0, 2.0], [0.5, -1.0]])
    ts = np.array([0.0, 0.01, 0.5, 1.0])
    c = np.random.default_rng(0).normal(size=(3, 2, 2))
    w = tf.Variable(w0)
    x = tf.constant(y0)

    @tf.function(jit_compile=True)
    def grads():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = odezoo.odeint(lambda t, y: tf.linalg.matvec(w, y), x, tf.constant(ts), solver=solver, rtol=1e-8,
                              atol=1e-10, gradient="adjoint")  # fmt: skip
            loss = tf.reduce_sum(y[1:] * c)
        return tape.gradient(loss, [w, x])

    g_w, g_x = (g.numpy() for g in grads())
    want_w = np.zeros((2, 2))
    want_x = np.zeros((2, 2))
    for t, ci in zip(ts[1:], c):
        for j in range(2):
            for k in range(2):
                e = np.zeros((2, 2))
                e[j, k] = 1.0
                want_w[j, k] += np.sum(ci * (expm_frechet(t * w0, t * e, compute_expm=False) @ y0.T).T)
        want_x += ci @ expm(t * w0)
    np.testing.assert_allclose(g_w, want_w, rtol=1e-5)
    np.testing.assert_allclose(g_x, want_x, rtol=1e-5, atol=1e-9)


@pytest.mark.slow
def test_robertson_rate_sensitivities_by_the_adjoint_against_scipy():
    """Training a stiff model's parameters: the log-sensitivities k_j dL/dk_j of a loss on
    Robertson's kinetics (stiffness ratio ~1e11) to its three rate constants, by kvaerno5's
    adjoint and by the checkpoint gradient, against central differences of scipy's Radau at
    rtol 1e-12."""
    k0 = np.array([0.04, 1e4, 3e7])
    k = tf.Variable(k0)
    ts = np.array([0.0, 1.0, 10.0, 100.0])

    def field(t, y):
        return tf.stack([-k[0] * y[0] + k[1] * y[1] * y[2], k[0] * y[0] - k[1] * y[1] * y[2] - k[2] * y[1] ** 2,
                         k[2] * y[1] ** 2])  # fmt: skip

    def sensitivities(gradient):
        @tf.function(jit_compile=True)
        def run():
            with tf.GradientTape() as tape:
                y = odezoo.odeint(field, tf.constant([1.0, 0.0, 0.0], F64), tf.constant(ts), solver="kvaerno5",
                                  rtol=1e-8, atol=1e-12, gradient=gradient)  # fmt: skip
                loss = tf.reduce_sum(y[1:, 0]) + 1e4 * tf.reduce_sum(y[1:, 1])
            return tape.gradient(loss, k)

        return run().numpy() * k0

    def loss_np(kk):
        def f(t, y):
            return [-kk[0] * y[0] + kk[1] * y[1] * y[2], kk[0] * y[0] - kk[1] * y[1] * y[2] - kk[2] * y[1] ** 2,
                    kk[2] * y[1] ** 2]  # fmt: skip

        s = solve_ivp(f, (0.0, ts[-1]), [1.0, 0.0, 0.0], method="Radau", t_eval=ts[1:], rtol=1e-12, atol=1e-16)
        return s.y[0].sum() + 1e4 * s.y[1].sum()

    want = []
    for j in range(3):
        e = np.zeros(3)
        e[j] = 1e-5 * k0[j]
        want.append((loss_np(k0 + e) - loss_np(k0 - e)) / (2 * e[j]) * k0[j])
    for gradient in ("adjoint", "checkpoint"):
        np.testing.assert_allclose(sensitivities(gradient), want, rtol=1e-5, err_msg=gradient)


@pytest.mark.slow
def test_the_flow_trains_through_kvaerno3_by_the_adjoint():
    """Reproduces "No gradient defined for operation ... XlaDynamicUpdateSlice": the flow's field
    holds a gradient (its trace), so the Newton Jacobian of its adjoint by autodiff was a third
    derivative, which TensorFlow cannot take through it. The adjoint field now gives its Jacobian,
    -(∂f/∂y)ᵀ, from f itself. The exact-trace log-density and its weight gradient through kvaerno3
    equal dopri5's (both to the tolerance)."""
    import keras

    from odezoo import data

    x = tf.constant(data.toy_density("8gaussians", 32, seed=3))
    out = {}
    for solver in ("dopri5", "kvaerno3"):
        keras.utils.set_random_seed(0)
        flow = odezoo.build("ffjord", data_dim=2, hidden=[8, 8], solver=solver, rtol=1e-7, atol=1e-7)
        flow(x)
        with tf.GradientTape() as tape:
            logp = flow.log_prob(x, trace="exact")
            loss = -tf.reduce_mean(logp)
        grads = tape.gradient(loss, flow.trainable_weights)
        out[solver] = (logp.numpy(), [g.numpy() for g in grads])
    np.testing.assert_allclose(out["kvaerno3"][0], out["dopri5"][0], atol=2e-4)
    for a, b in zip(out["kvaerno3"][1], out["dopri5"][1]):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("rtol", [1e-6, 1e-7])
def test_float32_at_a_tolerance_near_its_precision_is_solved_not_failed(rtol):
    """Reproduces status 5 on a float32 problem at rtol 1e-6: Newton's stopping test (a correction
    below 0.01 of the tolerance) asked for less than float32 can resolve, so the iteration stalled,
    was judged divergent and halved the step to underflow. Its tolerance is now floored at
    10·eps/rtol (Hairer's RADAU5 does so); the answer is scipy's to float32's accuracy."""

    def f(t, y):
        return tf.stack([-y[0] + y[1] ** 2, -50.0 * y[1]])

    y = odezoo.odeint(f, tf.constant([1.0, 2.0]), tf.constant([0.0, 1.0]), solver="kvaerno3", rtol=rtol, atol=rtol)
    ref = solve_ivp(lambda t, y: [-y[0] + y[1] ** 2, -50.0 * y[1]], (0.0, 1.0), [1.0, 2.0], method="Radau",
                    rtol=1e-12, atol=1e-14).y[:, -1]  # fmt: skip
    np.testing.assert_allclose(y[-1].numpy(), ref, rtol=2e-5, atol=1e-6)
