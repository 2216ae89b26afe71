"""The backward_euler scheme (issue 16): the solved step, its implicit-function gradient, and
PolyInception's series approaching it."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import odezoo
from odezoo.testing import _central_differences, check_scheme

A = np.array([[-1.0, 0.3], [0.2, -0.5]])


def backward_euler(**options):
    return odezoo.get_scheme("backward_euler")(**options)


@pytest.mark.parametrize("solver", ["fixed_point", "newton"])
def test_solver_form_is_the_backward_euler_step_and_first_order(solver):
    y, h = np.array([1.0, 2.0]), 0.1
    got = backward_euler(tol=1e-10, solver=solver).step([lambda t, y: A @ y], 0.0, y, h)
    np.testing.assert_allclose(got, np.linalg.solve(np.eye(2) - h * A, y), rtol=1e-10)
    # y' = Ay + b cos t (the kit's problem): global error slope 1
    assert abs(check_scheme(backward_euler(solver=solver), network=False)["slope"] - 1.0) <= 0.3


def test_newton_solves_the_stiff_step_the_fixed_point_iteration_cannot():
    stiff = np.diag([-50.0, -1.0])  # h·|λ| = 5 at h = 0.1
    y0, h = np.array([[1.0, 1.0], [2.0, -1.0]]), 0.1
    want = np.linalg.solve(np.eye(2) - h * stiff, y0.T).T
    got = backward_euler(solver="newton", tol=1e-10).step([lambda t, y: y @ stiff.T], 0.0, y0, h)
    np.testing.assert_allclose(got, want, rtol=1e-9)
    for jit in (False, True):
        field = LinearField(stiff)
        block = odezoo.SchemeBlock("backward_euler", fields=[field], h=h, solver="newton", tol=1e-10, dtype="float64")
        call = tf.function(block, jit_compile=True) if jit else block
        np.testing.assert_allclose(call(tf.constant(y0)).numpy(), want, rtol=1e-8)


def test_no_convergence_is_an_error_in_numpy_and_nan_in_a_network():
    stiff = np.array([[-50.0, 0.0], [0.0, -1.0]])  # h·|λ| = 5: the fixed-point iteration diverges
    with pytest.raises(ValueError, match=r"did not converge in iterations=50 at h=0\.1"):
        backward_euler().step([lambda t, y: stiff @ y], 0.0, np.array([1.0, 1.0]), 0.1)
    field = LinearField(np.diag([-50.0, -1.0]))
    block = odezoo.SchemeBlock("backward_euler", fields=[field], h=0.1, dtype="float64")
    for training in (False, True):
        out = block(tf.ones((3, 2), tf.float64), training=training)
        assert np.all(np.isnan(out.numpy()))
    # Newton out of iterations (one is not enough to see its correction vanish): NaN too
    newton = odezoo.SchemeBlock("backward_euler", fields=[TanhField()], h=0.7, solver="newton", iterations=1,
                                dtype="float64")  # fmt: skip
    assert np.all(np.isnan(newton(tf.ones((3, 4), tf.float64)).numpy()))
    with pytest.raises(ValueError, match="Newton iteration did not converge in iterations=1"):
        backward_euler(solver="newton", iterations=1).step([lambda t, y: np.tanh(y)], 0.0, np.ones(3), 0.7)


def test_bad_options_name_the_valid_choices():
    with pytest.raises(ValueError, match="iterations=0.*positive int"):
        backward_euler(iterations=0)
    with pytest.raises(ValueError, match="tol=-1.*positive"):
        backward_euler(tol=-1)
    with pytest.raises(ValueError, match="gradient='adjoint'.*'implicit', 'unrolled'"):
        backward_euler(gradient="adjoint")
    with pytest.raises(ValueError, match="solver='bdf'.*'fixed_point', 'newton'"):
        backward_euler(solver="bdf")
    with pytest.raises(ValueError, match="krylov=0.*positive int"):
        backward_euler(krylov=0)


@keras.saving.register_keras_serializable(package="odezoo_tests")
class LinearField(keras.layers.Layer):
    """f(t, y) = y Wᵀ + b, W trainable (float64)."""

    def __init__(self, w, bias=None, **kwargs):
        super().__init__(dtype="float64", **kwargs)
        self.w0 = np.asarray(w, np.float64)
        self.b0 = np.zeros(self.w0.shape[0]) if bias is None else np.asarray(bias, np.float64)

    def build(self, t_shape=None, y_shape=None):
        self.w = self.add_weight(shape=self.w0.shape, initializer=keras.initializers.Constant(self.w0), name="w")
        self.b = self.add_weight(shape=self.b0.shape, initializer=keras.initializers.Constant(self.b0), name="b")

    def call(self, t, y):
        return tf.matmul(y, self.w, transpose_b=True) + self.b


def _block_and_grads(gradient, *, jit, w=A, h=0.5, y0=None, c=None, solver="fixed_point"):
    field = LinearField(w, bias=[0.1, -0.2])
    block = odezoo.SchemeBlock("backward_euler", fields=[field], h=h, tol=1e-12, gradient=gradient, solver=solver,
                               dtype="float64")  # fmt: skip
    y0 = tf.constant(np.array([[1.0, 2.0], [-0.5, 0.3]]) if y0 is None else y0)
    c = tf.constant(np.array([[0.7, -1.1], [0.4, 0.9]]) if c is None else c)
    block(y0)

    def run(y0):
        with tf.GradientTape() as tape:
            tape.watch(y0)
            y1 = block(y0)
            loss = tf.reduce_sum(c * y1)
        return (y1, *tape.gradient(loss, [y0, field.w, field.b]))

    fn = tf.function(run, jit_compile=True) if jit else run
    return [t.numpy() for t in fn(y0)], field


@pytest.mark.parametrize("solver", ["fixed_point", "newton"])
@pytest.mark.parametrize("jit", [False, True])
def test_implicit_gradient_equals_the_closed_form_of_a_linear_field(jit, solver):
    """y1 = (I − hW)⁻¹(y0 + hb): ∂L/∂y0 = c(I − hW)⁻¹ row by row, ∂L/∂W = h·wᵀy1, ∂L/∂b = h·Σ w."""
    h = 0.5
    (y1, gy0, gw, gb), _ = _block_and_grads("implicit", jit=jit, h=h, solver=solver)
    y0 = np.array([[1.0, 2.0], [-0.5, 0.3]])
    c = np.array([[0.7, -1.1], [0.4, 0.9]])
    m = np.eye(2) - h * A
    want_y1 = np.linalg.solve(m, (y0 + h * np.array([0.1, -0.2])).T).T
    np.testing.assert_allclose(y1, want_y1, rtol=1e-10)
    w = np.linalg.solve(m.T, c.T).T  # the adjoint: w = c + h·w·W per row
    np.testing.assert_allclose(gy0, w, rtol=1e-9)
    np.testing.assert_allclose(gw, h * w.T @ want_y1, rtol=1e-9)
    np.testing.assert_allclose(gb, h * w.sum(0), rtol=1e-9)


@pytest.mark.parametrize("solver", ["fixed_point", pytest.param("newton", marks=pytest.mark.slow)])
def test_implicit_gradient_matches_finite_differences_on_a_nonlinear_field(solver):
    field = TanhField()
    block = odezoo.SchemeBlock("backward_euler", fields=[field], h=0.7, tol=1e-12, solver=solver, dtype="float64")
    y0 = tf.Variable(np.random.default_rng(1).normal(size=(3, 4)))
    block(y0)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.sin(block(y0)))
    grads = tape.gradient(loss, [y0, field.kernel])

    def loss_value():
        return float(tf.reduce_sum(tf.sin(block(y0))))

    for grad, variable in zip(grads, (y0, field.kernel)):
        np.testing.assert_allclose(grad.numpy(), _central_differences(loss_value, variable), rtol=1e-6, atol=1e-8)


@keras.saving.register_keras_serializable(package="odezoo_tests")
class TanhField(keras.layers.Layer):
    """f(t, y) = tanh(y K) (float64), a contraction at h = 0.7 for these weights."""

    def __init__(self, **kwargs):
        super().__init__(dtype="float64", **kwargs)

    def build(self, t_shape=None, y_shape=None):
        k = np.random.default_rng(0).normal(size=(4, 4)) * 0.4
        self.kernel = self.add_weight(shape=(4, 4), initializer=keras.initializers.Constant(k), name="kernel")

    def call(self, t, y):
        return tf.tanh(y @ self.kernel)


def test_unrolled_gradient_agrees_with_the_implicit_one():
    (y_impl, gy_impl, gw_impl, _), _ = _block_and_grads("implicit", jit=False)
    (y_unr, gy_unr, gw_unr, _), _ = _block_and_grads("unrolled", jit=False)
    np.testing.assert_array_equal(y_impl, y_unr)
    np.testing.assert_allclose(gy_impl, gy_unr, rtol=1e-8)
    np.testing.assert_allclose(gw_impl, gw_unr, rtol=1e-8)


def test_the_backend_neutral_iteration_is_the_same_step_with_its_gradient():
    """The path other Keras backends take (keras.ops, differentiated through), run here on TF."""
    from odezoo.plugins.backward_euler import _unrolled_solve

    w = tf.constant(A)
    y0 = tf.constant([[1.0, 2.0], [-0.5, 0.3]], tf.float64)
    with tf.GradientTape() as tape:
        tape.watch([y0, w])
        y1 = _unrolled_solve(lambda t, y: tf.matmul(y, w, transpose_b=True), 0.5, y0, 0.5, 60, 1e-12)
        loss = tf.reduce_sum(y1)
    gy0, gw = tape.gradient(loss, [y0, w])
    m = np.eye(2) - 0.5 * A
    want = np.linalg.solve(m, y0.numpy().T).T
    np.testing.assert_allclose(y1.numpy(), want, rtol=1e-10)
    adj = np.linalg.solve(m.T, np.ones((2, 2)).T).T
    np.testing.assert_allclose(gy0.numpy(), adj, rtol=1e-9)
    np.testing.assert_allclose(gw.numpy(), 0.5 * adj.T @ want, rtol=1e-9)
    diverging = _unrolled_solve(lambda t, y: -50.0 * y, 0.1, y0, 0.1, 20, 1e-6)
    assert np.all(np.isnan(diverging.numpy()))


def test_as_a_fixed_grid_solver_in_an_odeblock():
    """ODEBlock(solver="backward_euler", num_steps=4) on y' = yWᵀ: y(1) = y0·((I − W/4)⁻¹)⁴ᵀ, and its
    gradient (through the iterations) against that closed form, under XLA. The fixed grid uses the
    scheme's default options (fixed point, tol 1e-4), so agreement is to about that tolerance."""
    field = LinearField(A)
    block = odezoo.ODEBlock(field, solver="backward_euler", num_steps=4, dtype="float64")
    y0 = tf.constant([[1.0, 2.0], [0.3, -0.4]], tf.float64)
    block(y0)

    @tf.function(jit_compile=True)
    def run(y0):
        with tf.GradientTape() as tape:
            tape.watch(y0)
            out = block(y0)
            loss = tf.reduce_sum(out)
        return out, tape.gradient(loss, [y0, field.w])

    out, (gy, gw) = run(y0)
    step = np.linalg.inv(np.eye(2) - 0.25 * A)
    m = np.linalg.matrix_power(step, 4)
    np.testing.assert_allclose(out.numpy(), y0.numpy() @ m.T, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(gy.numpy(), np.ones((2, 2)) @ m, rtol=1e-3, atol=1e-4)
    # dL/dW by central differences of the closed form
    fd = np.zeros((2, 2))
    for idx in np.ndindex(2, 2):
        e = np.zeros((2, 2))
        e[idx] = 1e-6
        up = np.linalg.matrix_power(np.linalg.inv(np.eye(2) - 0.25 * (A + e)), 4)
        down = np.linalg.matrix_power(np.linalg.inv(np.eye(2) - 0.25 * (A - e)), 4)
        fd[idx] = (np.sum(y0.numpy() @ up.T) - np.sum(y0.numpy() @ down.T)) / 2e-6
    np.testing.assert_allclose(gw.numpy(), fd, rtol=1e-3, atol=1e-4)


def test_batchnorm_moving_statistics_are_updated_once_per_call():
    class BNField(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(3, use_bias=False, kernel_initializer=keras.initializers.Constant(0.1))
            self.bn = keras.layers.BatchNormalization(momentum=0.9)

        def build(self, t_shape=None, y_shape=None):
            self.dense.build(y_shape)
            self.bn.build(y_shape)

        def call(self, t, y, training=None):
            return 0.3 * self.bn(self.dense(y), training=training)

    field = BNField()
    block = odezoo.SchemeBlock("backward_euler", fields=[field], h=1.0, tol=1e-5)
    y0 = tf.constant(np.random.default_rng(0).normal(size=(16, 3)).astype("float32") + 2.0)
    block(y0, training=False)  # builds; moving statistics untouched
    y1 = block(y0, training=True)
    mean_final = np.mean(y1.numpy() @ field.dense.kernel.numpy(), axis=0)  # the BN input at the fixed point
    np.testing.assert_allclose(field.bn.moving_mean.numpy(), 0.1 * mean_final, rtol=1e-3)


@pytest.mark.slow
def test_network_block_trains_and_round_trips(tmp_path):
    model = odezoo.build("resnet", scheme="backward_euler", input_shape=(8, 8, 1), num_classes=10, depth=8, h=0.2)
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype("float32")
    y = np.arange(16) % 10
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", jit_compile=True)
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    before = model.predict(x, verbose=0)
    assert np.all(np.isfinite(before))
    path = tmp_path / "be.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), before, atol=1e-5)


# --------------------------------------------------------------------------- PolyInception
def test_polyinception_series_approaches_backward_euler_as_it_lengthens():
    """For a linear field, degree k is the k-th fixed-point iterate of backward Euler, and the
    gap to the backward-Euler step shrinks by about h·ρ(A) per added term."""
    y, h = np.array([1.0, 2.0]), 0.4
    f = lambda t, y: A @ y  # noqa: E731
    exact = np.linalg.solve(np.eye(2) - h * A, y)
    gaps = []
    iterate = y
    for k in range(1, 8):
        iterate = y + h * (A @ iterate)  # Picard iterate k of y1 = y + h·A·y1, from y
        got = odezoo.get_scheme("polyinception")(degree=k).step([f], 0.0, y, h)
        np.testing.assert_allclose(got, iterate, rtol=1e-14)
        gaps.append(np.max(np.abs(got - exact)))
    rho = np.max(np.abs(np.linalg.eigvals(A)))
    ratios = np.array(gaps[1:]) / np.array(gaps[:-1])
    assert np.all(ratios < 1.0) and np.all(ratios <= 1.05 * h * rho + 1e-12)
    assert gaps[-1] < 1e-3 * gaps[0]
    # the default (degree 2) is the published poly-2 block y + F(y) + F(F(y)), unchanged
    got = odezoo.get_scheme("polyinception")().step([f], 0.0, y, h)
    np.testing.assert_allclose(got, (np.eye(2) + h * A + h * h * A @ A) @ y, rtol=1e-14)


def test_polyinception_degree_is_checked():
    with pytest.raises(ValueError, match="degree=0.*positive int"):
        odezoo.get_scheme("polyinception")(degree=0)
    with pytest.raises(ValueError, match="degree=3.*2 for variant='mpoly2'"):
        odezoo.get_scheme("polyinception")(variant="mpoly2", degree=3)
    assert check_scheme(odezoo.get_scheme("polyinception")(degree=3))["network"] == "ok"
