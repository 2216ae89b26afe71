"""Issue 15, first part: embedded Runge-Kutta pairs as schemes (dopri5, tsit5, bosh3, heun_euler, dopri8).

References are independent of the integrator: adaptive solves against scipy's DOP853 at
1e-13, gradients against central finite differences, and odezoo.testing.check_solver (the
orders measured in numpy from the coefficients alone, the dense output against the closed-form
solution).
"""

import keras
import numpy as np
import pytest
import scipy.integrate._ivp.dop853_coefficients as dop853
from scipy.integrate import solve_ivp
import tensorflow as tf

import odezoo
from odezoo import _registry
from odezoo._errors import PluginError
from odezoo.ode.tableau import DOPRI5, tableau_of
from odezoo.testing import check_solver

PAIRS = ["dopri5", "tsit5", "bosh3", "heun_euler", "dopri8"]
ORDERS = {"dopri5": (5, 4), "tsit5": (5, 4), "bosh3": (3, 2), "heun_euler": (2, 1), "dopri8": (8, 5)}
A = np.array([[-0.5, 2.0], [-2.0, -0.5]])


def _f_np(t, y):
    return A @ y + np.array([np.cos(t), 0.0])


def _f_tf(t, y):
    return tf.linalg.matvec(tf.constant(A, y.dtype), y) + tf.stack([tf.cos(t), tf.zeros((), y.dtype)])


def test_the_dopri5_scheme_is_the_integrators_tableau_to_the_bit():
    assert tableau_of(_registry.get_scheme("dopri5")) == DOPRI5


@pytest.mark.parametrize("name", PAIRS)
def test_adaptive_solves_match_scipy_and_the_error_falls_with_the_tolerance(name):
    t = np.linspace(0.0, 5.0, 12)  # most of these fall inside steps: the dense output serves them
    if name == "dopri8":  # its steps end on the times: spread out, so the tolerance sets the steps
        t = np.linspace(0.0, 20.0, 5)
    ref = solve_ivp(_f_np, (0, t[-1]), [1.0, 0.0], t_eval=t, rtol=1e-13, atol=1e-13, method="DOP853").y.T
    tols = (1e-4, 1e-6) if name == "heun_euler" else (1e-5, 1e-8)
    errors = []
    for tol in tols:
        out = odezoo.odeint(
            _f_tf, tf.constant([1.0, 0.0], tf.float64), tf.constant(t), solver=name, rtol=tol, atol=tol, max_steps=50000
        )
        errors.append(np.max(np.abs(out.numpy() - ref)))
        assert errors[-1] < 30 * tol, (name, tol, errors[-1])
    assert errors[1] / errors[0] < 3 * tols[1] / tols[0], errors  # proportional to the tolerance


@pytest.mark.parametrize("name", PAIRS)
def test_every_built_in_pair_passes_check_solver_orders_dense_output_and_tolerance(name):
    # the whole kit (gradients against finite differences, the Keras round trip) runs in the
    # slow suite; the finite-difference gradients of ODEBlock are also checked below
    result = check_solver(name, gradients=False, round_trip=name == "tsit5")  # a .keras round trip: one pair
    assert result.get("round_trip", "ok") == "ok"
    assert (result["order"], result["error_order"]) == ORDERS[name]
    assert result["dense"] == {"dopri5": "shampine", "tsit5": "polynomial", "dopri8": "step"}.get(name, "hermite")


@pytest.mark.slow
@pytest.mark.parametrize("name", PAIRS)
def test_every_built_in_pair_passes_the_whole_check_solver(name):
    result = check_solver(name)
    assert result["round_trip"] == "ok" and max(result["gradient_errors"].values()) < 2e-3


def test_check_solver_catches_a_mistyped_coefficient_and_an_unregistered_pair():
    scheme = _registry.get_scheme("bosh3")

    class Mistyped(odezoo.ExplicitRungeKutta):
        order, error_order = 3, 2
        A = [[], [0.5], [0, 0.75], [2 / 9, 1 / 3, 4 / 9]]
        b = [2 / 9, 1 / 3, 4 / 9, 0]
        b_hat = [7 / 24, 1 / 4, 1 / 3 + 0.05, 1 / 8 - 0.05]  # a typo: the estimate is O(h²), not O(h³)

    with pytest.raises(AssertionError, match="not registered"):
        check_solver(Mistyped)
    odezoo.register_scheme("test_mistyped_bosh3")(Mistyped)
    try:
        with pytest.raises(AssertionError, match="error_order_measured|estimate_order_measured"):
            check_solver("test_mistyped_bosh3", gradients=False, round_trip=False)
    finally:
        _registry._schemes.pop("test_mistyped_bosh3", None)
    with pytest.raises(AssertionError, match="needs an embedded pair"):
        check_solver("rk4")
    assert check_solver(scheme, gradients=False, round_trip=False)["solver"] == "bosh3"


# tolerance of the solve, and of the comparison: the finite difference of an adaptive solve
# carries about tol / eps of noise (its step sequence moves), and heun_euler cannot go as tight
FD_TOLERANCES = {"tsit5": (1e-10, 1e-5), "bosh3": (1e-10, 1e-5), "heun_euler": (1e-8, 2e-3)}


_SLOW = pytest.mark.slow  # the default suite keeps one of each kind; check_solver (slow) repeats them all


@pytest.mark.parametrize(
    "name,gradient",
    [("tsit5", "adjoint"), ("bosh3", "backprop"), pytest.param("tsit5", "backprop", marks=_SLOW),
     pytest.param("bosh3", "adjoint", marks=_SLOW), pytest.param("heun_euler", "adjoint", marks=_SLOW),
     pytest.param("heun_euler", "backprop", marks=_SLOW)],
)  # fmt: skip
def test_odeblock_gradients_with_a_pair_match_finite_differences(name, gradient):
    tol, rtol = FD_TOLERANCES[name]

    class Field(keras.layers.Layer):
        def build(self, t_shape, y_shape):
            self.w = self.add_weight(shape=(y_shape[-1], y_shape[-1]), initializer="orthogonal", dtype="float64")

        def call(self, t, y):
            return tf.tanh(tf.matmul(y, self.w)) * tf.cos(t)

    keras.utils.set_random_seed(0)
    block = odezoo.ODEBlock(
        Field(dtype="float64"), solver=name, rtol=tol, atol=tol, gradient=gradient, dtype="float64", max_steps=100000
    )
    x = tf.constant(np.random.default_rng(0).normal(size=(3, 2)))
    block.build(x.shape)

    def loss():
        return tf.reduce_sum(tf.sin(block(x)))

    with tf.GradientTape() as tape:
        value = loss()
    (g,) = tape.gradient(value, block.trainable_variables)
    w = block.field.w
    eps = 1e-6
    for index in [(0, 0), (1, 0), (0, 1)]:
        old = w.numpy()
        out = []
        for sign in (1, -1):
            moved = old.copy()
            moved[index] += sign * eps
            w.assign(moved)
            out.append(float(loss()))
        w.assign(old)
        np.testing.assert_allclose(g.numpy()[index], (out[0] - out[1]) / (2 * eps), rtol=rtol, atol=1e-9)
    assert int(block.nfe_forward) > 0 and (int(block.nfe_backward) > 0) == (gradient == "adjoint")


@pytest.mark.parametrize(
    "name,per_step", [("dopri5", 6), ("tsit5", 6), ("bosh3", 3), ("heun_euler", 2), ("dopri8", 12)]
)
def test_a_pair_given_a_grid_runs_its_fixed_grid(name, per_step):
    # dopri5 included: with num_steps it is the fixed-grid scheme, no longer the adaptive solve
    out = odezoo.odeint(
        lambda t, y: -y, tf.constant([1.0], tf.float64), tf.constant([0.0, 1.0], tf.float64), solver=name, num_steps=4
    )
    k = _registry.get_scheme(name).coefficients()
    y = 1.0
    for _ in range(4):  # the same grid in numpy: b only, the b = 0 last stage never needed
        stages = []
        for i, row in enumerate(k["A"][: len(k["b"])]):
            stages.append(-(y + 0.25 * sum(a * s for a, s in zip(row[:i], stages))))
        y = y + 0.25 * sum(b * s for b, s in zip(k["b"], stages))
    np.testing.assert_allclose(out.numpy()[-1, 0], y, rtol=1e-13)
    assert _registry.get_scheme(name).num_fields == per_step
    with pytest.raises(ValueError, match=r"num_steps=4, step_size=0.1"):
        odezoo.odeint(
            lambda t, y: -y, tf.constant([1.0]), tf.constant([0.0, 1.0]), solver=name, num_steps=4, step_size=0.1
        )


def test_dopri8_is_dop853_and_its_error_ratio_is_dop853s_combined_estimate():
    # scipy's DOP853 carries dop853.f's coefficients: an independent copy of the same tableau
    k = _registry.get_scheme("dopri8").coefficients()
    np.testing.assert_array_equal(np.array(k["A"]), dop853.A[:12, :12])
    np.testing.assert_array_equal(k["b"], dop853.B)
    np.testing.assert_array_equal(k["c"], dop853.C[:12])
    np.testing.assert_allclose(k["error"], dop853.E5[:12], rtol=0, atol=1e-15)
    np.testing.assert_allclose(k["error_low"], dop853.E3[:12], rtol=0, atol=1e-15)
    tableau = tableau_of(_registry.get_scheme("dopri8"))
    assert (tableau.fsal, tableau.evaluations_per_step, tableau.error_exponent) == (False, 12, 1 / 8)

    # one step's ratio against scipy's formula on the same stages (its _estimate_error_norm)
    from odezoo.ode import integrator

    y0, h, rtol, atol = np.array([1.0, 0.3]), 0.7, 1e-6, 1e-8
    f = lambda t, y: [_f_tf(t, y[0])]  # noqa: E731
    t0 = tf.constant(0.1, tf.float64)
    y = [tf.constant(y0)]
    y_new, ks, _, ratio, finite = integrator.attempt_step(
        tableau, f, t0, y, f(t0, y), tf.constant(h, tf.float64), rtol=rtol, atol=atol, mask=[True]
    )
    K = np.stack([kk[0].numpy() for kk in ks] + [np.zeros(2)])
    scale = atol + rtol * np.maximum(np.abs(y0), np.abs(y_new[0].numpy()))
    err5, err3 = (K.T @ dop853.E5) / scale, (K.T @ dop853.E3) / scale
    e5, e3 = np.linalg.norm(err5) ** 2, np.linalg.norm(err3) ** 2
    expected = h * e5 / np.sqrt((e5 + 0.01 * e3) * 2)
    assert bool(finite) and expected > 1.0  # a rejected step: the ratio decides something
    np.testing.assert_allclose(float(ratio), expected, rtol=1e-10)


def test_dopri8_ends_its_steps_on_the_solution_times_and_counts_12_evaluations_a_step():
    times = np.array([0.0, 0.37, 0.81, 3.0])
    out = odezoo.odeint(_f_tf, tf.constant([1.0, 0.0], tf.float64), tf.constant(times), solver="dopri8", rtol=1e-6,
                        atol=1e-6)  # fmt: skip
    ref = solve_ivp(_f_np, (0, 3), [1.0, 0.0], t_eval=times, rtol=1e-13, atol=1e-13, method="DOP853").y.T
    assert np.max(np.abs(out.numpy() - ref)) < 1e-6  # step ends there: as accurate as any step end
    inner, ends = _solve_info("dopri8", times), _solve_info("dopri8", times[[0, -1]])
    assert inner["t"] == ends["t"] == 3.0
    # the two inner times each cut a step short: more steps than the same solve without them
    assert ends["accepted"] < inner["accepted"] and inner["accepted"] >= len(times) - 1
    for info in (inner, ends):
        assert info["nfe"] == 2 + 12 * info["steps"]  # f(t0), the initial-step probe, 12 per attempt


def _solve_info(solver, times):
    from odezoo.ode import integrator

    @tf.function
    def run():
        _, info = integrator.integrate(
            lambda t, y: [_f_tf(t, y[0])], 0.0, [tf.constant([1.0, 0.0], tf.float64)], tf.constant(times),
            rtol=1e-6, atol=1e-6, tableau=tableau_of(_registry.get_scheme(solver)),
        )  # fmt: skip
        return info

    return {key: float(v) for key, v in run().items() if v.shape == ()}


def test_a_pair_is_a_network_block_with_one_field_per_used_stage():
    model = odezoo.build("resnet", scheme="bosh3", depth=8, input_shape=(8, 8, 1))
    blocks = [layer for layer in model._flatten_layers() if isinstance(layer, odezoo.layers.SchemeBlock)]
    assert blocks and all(len(b.fields) == 3 for b in blocks)  # bosh3's 4th stage (b = 0) has no field
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = np.random.default_rng(0).normal(size=(8, 8, 8, 1)).astype("float32"), np.arange(8) % 10
    before = [w.numpy().copy() for w in model.trainable_weights]
    model.train_on_batch(x, y)
    assert all(not np.array_equal(a, b.numpy()) for a, b in zip(before, model.trainable_weights))


def test_a_malformed_pair_is_refused_at_class_creation():
    with pytest.raises(PluginError, match="b_hat has 1 weights, expected 2"):

        class Short(odezoo.ExplicitRungeKutta):
            order, error_order = 2, 1
            A = [[], [1]]
            b = [0.5, 0.5]
            b_hat = [1]

    with pytest.raises(PluginError, match="error_order=None"):

        class NoOrder(odezoo.ExplicitRungeKutta):
            order = 2
            A = [[], [1]]
            b = [0.5, 0.5]
            b_hat = [1, 0]

    with pytest.raises(PluginError, match=r"dense row 0 gives b_0\(1\)"):

        class BadDense(odezoo.ExplicitRungeKutta):
            order, error_order = 2, 1
            A = [[], [1]]
            b = [0.5, 0.5]
            b_hat = [1, 0]
            dense = [[1.0, -0.25], [0.0, 0.5]]

    with pytest.raises(PluginError, match="step_to_times with dense output"):

        class Both(odezoo.ExplicitRungeKutta):
            order, error_order = 2, 1
            A = [[], [1]]
            b = [0.5, 0.5]
            b_hat = [1, 0]
            dense = [[1.0, -0.5], [0.0, 0.5]]
            step_to_times = True

    with pytest.raises(PluginError, match="`b_hat_low` and `combine_errors` go together"):

        class Half(odezoo.ExplicitRungeKutta):
            order, error_order = 2, 1
            A = [[], [1]]
            b = [0.5, 0.5]
            b_hat = [1, 0]
            b_hat_low = [1, 0]

    with pytest.raises(PluginError, match="without `b_hat`"):

        class Orphan(odezoo.ExplicitRungeKutta):
            order, error_order = 2, 1
            A = [[], [1]]
            b = [0.5, 0.5]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tsit5", "bosh3"])
def test_the_flow_solves_with_a_pair_and_agrees_with_dopri5(name):
    from odezoo import data

    x = data.toy_density("8gaussians", 64, seed=3)
    logp = {}
    for solver in ("dopri5", name):
        keras.utils.set_random_seed(0)
        flow = odezoo.build("ffjord", data_dim=2, hidden=[8, 8], solver=solver, rtol=1e-7, atol=1e-7)
        logp[solver] = flow.log_prob(x, trace="exact").numpy()
    assert np.all(np.isfinite(logp[name]))
    np.testing.assert_allclose(logp[name], logp["dopri5"], atol=2e-4)
    # and it trains: one step moves every weight, the loss finite
    flow.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = [w.numpy().copy() for w in flow.trainable_weights]
    loss = flow.train_on_batch(x, return_dict=True)
    assert np.isfinite(list(loss.values())[0])
    assert all(not np.array_equal(a, b.numpy()) for a, b in zip(before, flow.trainable_weights))


def test_the_flow_refuses_an_unknown_solver_and_lists_the_pairs():
    with pytest.raises(ValueError, match=r"solver='rk45'.*'dopri5', 'tfp_dopri5'.*'tsit5'"):
        odezoo.build("ffjord", data_dim=2, solver="rk45")
