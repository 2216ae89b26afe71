"""batch_mode="independent": every row its own adaptive solve, times and status (issue 16)."""

import numpy as np
import pytest
import tensorflow as tf

import odezoo
from odezoo.ode import status as ode_status
from odezoo.ode.independent import integrate_independent
from odezoo.ode.integrator import integrate
from odezoo.testing import _central_differences

F64 = tf.float64
LAM = np.logspace(-2, 4, 8)  # stiffness spread over 6 orders of magnitude


def _field(t, y):
    return -tf.constant(LAM[:, None]) * (y - tf.cos(t))


def _exact(t, lam=LAM, y0=1.0):
    """y' = -λ(y - cos t), y(0) = y0: y = A e^{-λt} + λ(λ cos t + sin t)/(λ² + 1)."""
    return (y0 - lam**2 / (lam**2 + 1)) * np.exp(-lam * t) + lam * (lam * np.cos(t) + np.sin(t)) / (lam**2 + 1)


@pytest.mark.slow
def test_independent_rows_spend_their_own_evaluations():
    """Shared steps spend the stiffest row's evaluations on every row; independent rows do not:
    total per-row NFE at most a third of the shared mode's, at the same accuracy (closed form)."""
    ts = np.linspace(0.0, 1.0, 5)
    exact = np.stack([_exact(t) for t in ts])[..., None]
    y0 = tf.ones([8, 1], F64)
    times = tf.constant(np.tile(ts, (8, 1)))
    run = tf.function(
        lambda: integrate_independent(lambda t, y: [_field(t, y[0])], [y0], times, tf.fill([8], 5), rtol=1e-6,
                                      atol=1e-8),
        jit_compile=True,
    )  # fmt: skip
    (out,), info = run()
    shared = tf.function(
        lambda: integrate(lambda t, y: [_field(t, y[0])], tf.constant(0.0, F64), [y0], tf.constant(ts[1:]),
                          rtol=1e-6, atol=1e-8),
        jit_compile=True,
    )  # fmt: skip
    (out_shared,), info_shared = shared()
    nfe = info["nfe"].numpy()
    assert np.all(info["reason"].numpy() == 0)
    np.testing.assert_allclose(out.numpy(), exact, atol=1e-5)
    np.testing.assert_allclose(out_shared.numpy(), exact[1:], atol=1e-5)
    assert np.all(np.diff(nfe) >= 0), nfe  # the stiffer the row, the more it spends
    assert nfe.sum() <= 8 * int(info_shared["nfe"]) / 3, (nfe, int(info_shared["nfe"]))
    assert nfe[0] * 100 < nfe[-1]


@pytest.mark.parametrize(  # each way of reaching solution times: Shampine, polynomial, Hermite, step ends
    "solver", ["dopri5"] + [pytest.param(s, marks=pytest.mark.slow) for s in ("tsit5", "bosh3", "dopri8")]
)
def test_ragged_times_per_row_through_odeint(solver):
    """Each row its own t0, times and length (a mask): results against the closed form, NaN past a
    row's length, odeint's layout (T, batch, ...)."""
    lam = np.array([1.0, 10.0, 100.0])
    times = np.array([[0.0, 0.3, 0.9, 2.0], [0.5, 0.7, 0.0, 0.0], [0.1, 0.2, 0.4, 0.0]])
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], bool)

    def f(t, y):
        return -tf.constant(lam[:, None]) * y

    y0 = np.array([[1.0], [2.0], [-1.0]])
    out = odezoo.odeint(f, tf.constant(y0), tf.constant(times), batch_mode="independent", t_mask=mask, rtol=1e-8,
                        atol=1e-10, solver=solver, max_steps=100000).numpy()  # fmt: skip
    assert out.shape == (4, 3, 1)
    for b in range(3):
        n = mask[b].sum()
        exact = y0[b, 0] * np.exp(-lam[b] * (times[b, :n] - times[b, 0]))
        np.testing.assert_allclose(out[:n, b, 0], exact, rtol=1e-6, atol=1e-9)
        assert np.all(np.isnan(out[n:, b]))


def test_a_failed_row_leaves_the_others_solved():
    """Row 1's field is NaN: that row fails (status 2, NaN); rows 0 and 2 are solved."""

    def f(t, y):
        bad = tf.constant([[0.0], [np.nan], [0.0]], F64)
        return -y + bad

    times = tf.constant(np.tile([0.0, 1.0], (3, 1)))
    y0 = tf.ones([3, 1], F64)
    run = tf.function(
        lambda: integrate_independent(lambda t, y: [f(t, y[0])], [y0], times, tf.fill([3], 2), rtol=1e-6, atol=1e-8),
        jit_compile=True,
    )
    (out,), info = run()
    assert info["reason"].numpy().tolist() == [0, ode_status.NONFINITE, 0]
    np.testing.assert_allclose(out.numpy()[1, [0, 2], 0], np.exp(-1.0), rtol=1e-5)
    assert np.all(np.isnan(out.numpy()[:, 1]))
    with pytest.raises(odezoo.SolverError, match="row 1 of 3"):
        odezoo.odeint(f, tf.ones([3, 1], F64), times, batch_mode="independent", rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(t=[[0.0, 1.0], [0.0, 0.0]]), r"t\[1\].*strictly increasing"),
        (dict(t_mask=[[True, False], [True, True]], t=[[0.0, 1.0], [0.0, 2.0]]), None),
        (dict(t_mask=[[True, True], [False, True]]), r"t_mask\[1\].*prefix"),
        (dict(t=[[0.0, 1.0, 2.0]]), r"shape \(batch, T\)"),
        (dict(solver="rk4"), "solver='rk4'.*embedded pair.*'kvaerno5'"),
        (dict(solver="euler"), "solver='euler'.*embedded pair"),
        (dict(gradient="checkpoint"), r"'auto' \(the adjoint\), 'adjoint' or 'backprop'"),
        (dict(batch_mode="rows"), "shared.*independent"),
    ],
)
def test_bad_input_in_independent_mode_is_named(kwargs, match):
    args = dict(t=[[0.0, 1.0], [0.0, 2.0]], batch_mode="independent")
    args.update(kwargs)
    t = tf.constant(args.pop("t"), F64)
    call = lambda: odezoo.odeint(lambda t, y: -y, tf.ones([2, 1], F64), t, rtol=1e-6, atol=1e-8, **args)  # noqa: E731
    if match is None:  # a valid ragged mask: solves
        assert np.isnan(call().numpy()[1, 0, 0])
        return
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["dopri5", "kvaerno5"])
def test_independent_mode_gradient_matches_finite_differences(solver):
    """Backprop through the rows' own steps (kvaerno5: through their own Newton iterations)."""
    w = tf.Variable([0.7, -1.3], dtype=F64)
    times = tf.constant([[0.0, 0.5, 1.0], [0.2, 1.5, 0.0]], F64)
    mask = [[True, True, True], [True, True, False]]

    def loss():
        y = odezoo.odeint(lambda t, y: tf.tanh(y * w) - 0.1 * y * tf.cos(t), tf.constant([[1.0, 0.5], [-0.3, 2.0]],
                          F64), times, batch_mode="independent", t_mask=mask, rtol=1e-10, atol=1e-12,
                          solver=solver)  # fmt: skip
        return tf.reduce_sum(tf.where(tf.math.is_nan(y), tf.zeros_like(y), y) ** 2)

    with tf.GradientTape() as tape:
        value = loss()
    g = tape.gradient(value, w).numpy()
    np.testing.assert_allclose(g, _central_differences(lambda: float(loss()), w, eps=1e-6), rtol=1e-6)


@pytest.mark.slow
def test_odeblock_in_independent_mode_trains_saves_and_loads(tmp_path):
    """ODEBlock(batch_mode="independent"): the same answer as the shared solve (to the tolerance),
    a compiled training step, and the option kept by a .keras round trip; a bad combination named."""
    import keras

    @keras.saving.register_keras_serializable(package="odezoo_test_independent")
    class Field(keras.layers.Layer):
        def build(self, t_shape, y_shape):
            self.w = self.add_weight(shape=(y_shape[-1], y_shape[-1]), initializer="orthogonal")

        def call(self, t, y):
            return tf.tanh(tf.matmul(y, self.w)) * (1.0 + 0.5 * tf.sin(t))

    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    block = odezoo.ODEBlock(Field(), batch_mode="independent", rtol=1e-5, atol=1e-7)
    model = keras.Model(inputs, block(inputs))
    shared = odezoo.ODEBlock(block.field, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model.predict(x, verbose=0), shared(x).numpy(), atol=2e-4)
    model.compile(optimizer="adam", loss="mse", jit_compile=True)
    before = block.field.w.numpy().copy()
    model.fit(x, np.zeros_like(x), epochs=1, batch_size=8, verbose=0)
    assert not np.allclose(before, block.field.w.numpy()) and int(block.nfe_forward.numpy()) > 0
    path = str(tmp_path / "independent.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.layers[-1].batch_mode == "independent"
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    with pytest.raises(ValueError, match="solver='rk4'.*embedded pair without a grid"):
        odezoo.ODEBlock(Field(), batch_mode="independent", solver="rk4", num_steps=4)
    with pytest.raises(ValueError, match="batch_mode"):
        odezoo.ODEBlock(Field(), batch_mode="rowwise")


# ------------------------------------------------------------ ESDIRK pairs, every row its own Newton
def _solve_rows(solver, lam, y0, times, **kw):
    from odezoo.ode.independent import integrate_independent
    from odezoo.ode.tableau import tableau_of

    tableau = tableau_of(odezoo.ode.options.embedded_pair(solver))
    lam = tf.constant(lam[:, None])

    def solve(y0, times):
        return integrate_independent(lambda t, y: [-lam * (y[0] - tf.cos(t))], [y0], times,
                                     tf.fill([y0.shape[0]], times.shape[1]), rtol=1e-6, atol=1e-8, tableau=tableau,
                                     **kw)  # fmt: skip

    run = tf.function(solve, jit_compile=True)
    (out,), info = run(tf.constant(y0), tf.constant(times))
    return out.numpy(), info


@pytest.mark.slow
def test_an_esdirk_pair_solves_every_row_with_its_own_newton():
    """kvaerno5 per row on the spread-stiffness batch: each row's answer against the closed form,
    the same as that row solved alone (the same steps, the same Newton iterations: its
    neighbours change nothing), and the stiffest rows cheap where dopri5 pays for stability."""
    lam = np.logspace(-2, 4, 7)
    grid = np.linspace(0.0, 1.0, 5)
    times = np.tile(grid, (7, 1))
    y0 = np.ones((7, 1))
    out, info = _solve_rows("kvaerno5", lam, y0, times)
    want = np.stack([_exact(grid, lam=lam_b) for lam_b in lam], 1)
    np.testing.assert_allclose(out[..., 0], want, atol=2e-5)
    assert np.all(info["reason"].numpy() == 0)
    for b in (0, 3, 6):
        alone, alone_info = _solve_rows("kvaerno5", lam[b : b + 1], y0[b : b + 1], times[b : b + 1])
        np.testing.assert_allclose(out[:, b], alone[:, 0], rtol=1e-12, atol=1e-14)
        assert int(alone_info["nfe"][0]) == int(info["nfe"][b])
    _, explicit = _solve_rows("dopri5", lam, y0, times)
    nfe, nfe_explicit = info["nfe"].numpy(), explicit["nfe"].numpy()
    assert nfe[-1] * 10 < nfe_explicit[-1], (nfe, nfe_explicit)  # λ = 1e4: implicit steps are not stability-bound


# ------------------------------------------------------------ the adjoint, every row on its own steps
_SLOW = ("tsit5", "bosh3", "dopri8", "kvaerno5")
_PAIRS = ["dopri5", "kvaerno3"] + [pytest.param(s, marks=pytest.mark.slow) for s in _SLOW]


@pytest.mark.parametrize("solver", _PAIRS)
def test_every_rows_adjoint_against_the_frechet_derivative(solver):
    """y_b' = s_b·W y_b, the rows' stiffness s_b = 1, 30, 1000 (W's eigenvalues -2, -0.5), their
    own times, one row shorter (t_mask), a loss on every solution time: d/dW of
    sum c·expm((t - t_b0) s_b W) y_b0 by scipy's Fréchet derivative of expm, d/dy_b0 by expm's
    transpose. The explicit pairs on the two mild rows only (the stiff one would take ~1e4 steps)."""
    from scipy.linalg import expm, expm_frechet

    implicit = solver.startswith("kvaerno")
    w0 = np.array([[-2.0, 1.0], [0.0, -0.5]])
    scale = np.array([1.0, 30.0, 1000.0])[: 3 if implicit else 2]
    y0 = np.array([[1.0, 2.0], [0.5, -1.0], [2.0, 0.3]])[: scale.size]
    t = np.array([[0.0, 0.3, 1.0, 1.2], [0.5, 0.7, 2.0, 0.0], [0.0, 0.01, 0.2, 1.0]])[: scale.size]
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]], bool)[: scale.size]
    c = np.random.default_rng(1).normal(size=(3, scale.size, 2)) * mask.T[1:, :, None]
    w, x = tf.Variable(w0), tf.constant(y0)

    @tf.function(jit_compile=True)
    def grads():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = odezoo.odeint(lambda t, y: tf.linalg.matvec(w, y) * tf.constant(scale)[:, None], x, tf.constant(t),
                              solver=solver, rtol=1e-9, atol=1e-11, batch_mode="independent", t_mask=mask,
                              gradient="adjoint")  # fmt: skip
            loss = tf.reduce_sum(tf.where(tf.constant(mask.T[1:, :, None]), y[1:] * c, 0.0))
        return tape.gradient(loss, [w, x])

    g_w, g_x = (g.numpy() for g in grads())
    want_w, want_x = np.zeros((2, 2)), np.zeros_like(y0)
    for b, s in enumerate(scale):
        for j in np.flatnonzero(mask[b])[1:]:
            a = (t[b, j] - t[b, 0]) * s * w0
            for p in range(2):
                for q in range(2):
                    e = np.zeros((2, 2))
                    e[p, q] = (t[b, j] - t[b, 0]) * s
                    want_w[p, q] += c[j - 1, b] @ expm_frechet(a, e, compute_expm=False) @ y0[b]
            want_x[b] += c[j - 1, b] @ expm(a)
    np.testing.assert_allclose(g_w, want_w, rtol=1e-6)
    np.testing.assert_allclose(g_x, want_x, rtol=1e-6, atol=1e-10)


@pytest.mark.slow
def test_odeblock_trains_by_every_rows_adjoint():
    """ODEBlock(batch_mode="independent") differentiates by every row's adjoint unless told
    "backprop": the weights' and the input's gradients equal backprop's through the same rows'
    solves (to the tolerance), and the backward solve's field calls are counted."""
    import keras

    class Field(keras.layers.Layer):
        def build(self, t_shape, y_shape):
            self.w = self.add_weight(shape=(y_shape[-1], y_shape[-1]), initializer="orthogonal")

        def call(self, t, y):
            return tf.tanh(tf.matmul(y, self.w)) * (1.0 + 0.5 * tf.sin(t))

    x = tf.constant(np.random.default_rng(0).normal(size=(4, 3)))
    keras.utils.set_random_seed(0)
    field = Field(dtype="float64")
    grads = {}
    for gradient in ("auto", "backprop"):
        block = odezoo.ODEBlock(field, batch_mode="independent", gradient=gradient, rtol=1e-10, atol=1e-12,
                                dtype="float64")  # fmt: skip
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(block(x) ** 2)
        grads[gradient] = [g.numpy() for g in tape.gradient(loss, [x, field.w])]
        if gradient == "auto":
            assert int(block.nfe_backward.numpy()) > 0
    for adjoint, backprop in zip(grads["auto"], grads["backprop"]):
        np.testing.assert_allclose(adjoint, backprop, rtol=1e-5)
