"""odezoo.ODEBlock: shapes, options, NFE counters, failures, serialization."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import odezoo
from odezoo import ODEBlock


@keras.saving.register_keras_serializable(package="odezoo_tests")
class CountingField(keras.layers.Layer):
    """dy/dt = tanh(y W) + t, counting its calls in a variable (the true NFE)."""

    def __init__(self, nan_after=None, **kwargs):
        super().__init__(**kwargs)
        self.nan_after = nan_after

    def build(self, t_shape, y_shape):
        self.w = self.add_weight(shape=(y_shape[-1], y_shape[-1]), initializer="glorot_uniform", name="w")
        self.calls = self.add_weight(shape=(), dtype="int32", initializer="zeros", trainable=False, name="calls")

    def call(self, t, y):
        self.calls.assign_add(1)
        out = tf.tanh(y @ self.w) + t
        if self.nan_after is not None:
            out = tf.where(t > self.nan_after, tf.constant(np.nan, out.dtype), out)
        return out

    def get_config(self):
        return {**super().get_config(), "nan_after": self.nan_after}


def test_shapes_solution_times_and_augment():
    x = tf.random.normal((3, 4), seed=1)
    block = ODEBlock(CountingField())
    assert block(x).shape == (3, 4)
    block = ODEBlock(CountingField(), solution_times=[0.25, 0.5, 1.0], augment_dims=2)
    out = block(x)
    assert out.shape == (3, 3, 4)
    assert block.field.w.shape == (6, 6)
    inputs = keras.Input((4,))
    assert ODEBlock(CountingField(), solution_times=[0.5, 1.0])(inputs).shape == (None, 2, 4)


def test_fixed_grid_solution_times_match_dopri5():
    x = tf.random.normal((2, 3), seed=2)
    field = CountingField()
    adaptive = ODEBlock(field, solution_times=[0.5, 1.0], rtol=1e-6, atol=1e-8)
    y_ad = adaptive(x)
    fixed = ODEBlock(field, solver="rk4", num_steps=40, solution_times=[0.5, 1.0])
    np.testing.assert_allclose(fixed(x).numpy(), y_ad.numpy(), atol=1e-4)
    assert int(fixed.nfe_forward.numpy()) == 4 * 40


def test_option_errors():
    field = CountingField()
    with pytest.raises(ValueError, match="gradient='adjoint' is not offered"):
        ODEBlock(field, solver="rk4", num_steps=4, gradient="adjoint")
    with pytest.raises(ValueError, match="backprop"):
        ODEBlock(field, solver="tfp_dopri5", gradient="backprop")
    with pytest.raises(ValueError, match="num_steps"):
        ODEBlock(field, solver="rk4")
    with pytest.raises(odezoo.UnknownNameError, match="rk4"):
        ODEBlock(field, solver="rk44")
    with pytest.raises(ValueError, match="Received: rtol=-1"):
        ODEBlock(field, rtol=-1)
    with pytest.raises(ValueError, match="solution_times"):
        ODEBlock(field, solution_times=[1.0, 0.5])
    block = ODEBlock(field)
    with pytest.raises(ValueError, match="max_steps"):
        block.max_steps = 0


@pytest.mark.parametrize("jit", [pytest.param(False, marks=pytest.mark.slow), True])
def test_nfe_counters_equal_true_calls(jit):
    field = CountingField()
    block = ODEBlock(field, rtol=1e-5, atol=1e-6)
    x = tf.random.normal((4, 3), seed=3)
    block.build(x.shape)

    @tf.function(jit_compile=jit)
    def step(x):
        field.calls.assign(0)
        with tf.GradientTape() as tape:
            y = block(x, training=True)
            forward = tf.identity(field.calls.value)
            loss = tf.reduce_sum(y**2)
        grads = tape.gradient(loss, block.trainable_variables)
        return forward, tf.identity(field.calls.value), grads

    forward, total, grads = step(x)
    assert int(block.nfe_forward.numpy()) == int(forward) > 0
    assert int(block.nfe_backward.numpy()) == int(total) - int(forward) > 0
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)


def test_eager_failure_raises_and_compiled_failure_sets_status():
    x = tf.ones((2, 3))
    block = ODEBlock(CountingField(nan_after=0.5))
    with pytest.raises(odezoo.SolverError, match=r"status 2.*rtol=0\.001, atol=1e-06"):
        block(x)
    block = ODEBlock(CountingField(), rtol=1e-9, atol=1e-9, max_steps=3)

    @tf.function(jit_compile=True)
    def run(x):
        return block(x)

    y = run(x)
    assert np.all(np.isnan(y.numpy()))
    assert block.solver_status.numpy()[0] == 1
    with pytest.raises(odezoo.SolverError, match="max_steps=3"):
        block.check_status()


def test_settable_options_and_config_round_trip(tmp_path):
    x = np.random.default_rng(0).normal(size=(2, 3)).astype("float32")
    inputs = keras.Input((3,))
    block = ODEBlock(CountingField(name="f"), rtol=1e-5, atol=1e-7, augment_dims=1, name="ode")
    model = keras.Model(inputs, keras.layers.Dense(2)(block(inputs)))
    y = model(x)
    config = block.get_config()
    clone = ODEBlock.from_config(json.loads(json.dumps(config)))
    assert json.dumps(clone.get_config(), sort_keys=True) == json.dumps(config, sort_keys=True)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x).numpy(), y.numpy(), rtol=1e-6, atol=1e-6)
    lb = loaded.get_layer("ode")
    lb.num_steps = 16
    lb.solver = "rk4"
    y_rk4 = loaded(x)
    assert int(lb.nfe_forward.numpy()) == 64
    np.testing.assert_allclose(y_rk4.numpy(), y.numpy(), atol=1e-3)
    lb.rtol = 1e-3
    assert lb.get_config()["solver"] == "rk4" and lb.get_config()["rtol"] == 1e-3


def test_eager_gradients_adjoint_vs_rk4_backprop():
    x = tf.random.normal((2, 3), seed=4)
    field = CountingField()
    grads = []
    for kw in (dict(rtol=1e-7, atol=1e-9), dict(solver="rk4", num_steps=32)):
        block = ODEBlock(field, **kw)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(block(x) ** 2)
        grads.append(tape.gradient(loss, [x, field.w]))
        if kw.get("solver") == "rk4":
            assert int(block.nfe_backward.numpy()) == 4 * 32  # the recompute's field calls
    for a, b in zip(*grads):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("solver", ["rk4", "backward_euler", pytest.param("dopri5", marks=pytest.mark.slow)])
def test_eager_weight_gradient_when_the_block_is_the_first_op_on_a_constant(solver):
    """Found in issue 16: with an unwatched constant input (the block as a model's first
    layer) the fixed-grid solve's custom gradient was not recorded, so the eager gradient
    of the field's weights was None."""
    x = tf.constant(np.random.default_rng(5).normal(size=(2, 3)).astype("float32"))
    kw = dict(rtol=1e-6, atol=1e-8) if solver == "dopri5" else dict(solver=solver, num_steps=8)
    block = ODEBlock(CountingField(), **kw)
    block(x)

    def grads():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(block(x) ** 2)
        return tape.gradient(loss, block.trainable_variables)

    eager = grads()
    compiled = tf.function(grads, jit_compile=True)()
    assert len(eager) == 1 and eager[0] is not None
    np.testing.assert_allclose(eager[0].numpy(), compiled[0].numpy(), rtol=1e-5, atol=1e-7)
    assert np.max(np.abs(eager[0].numpy())) > 1e-3


def test_tfp_dopri5_block_guards_nan():
    with pytest.raises(odezoo.SolverError, match="status 2"):
        ODEBlock(CountingField(nan_after=0.5), solver="tfp_dopri5")(tf.ones((2, 3)))


@pytest.mark.slow
def test_tfp_dopri5_block_nfe_and_gradient_match_dopri5():
    x = tf.random.normal((3, 2), seed=5)
    field = CountingField()
    grads, outs = [], []
    for solver in ("dopri5", "tfp_dopri5"):
        block = ODEBlock(field, solver=solver, rtol=1e-7, atol=1e-9)
        block.build(x.shape)
        field.calls.assign(0)
        with tf.GradientTape() as tape:
            y = block(x)
            forward = int(field.calls.numpy())
            loss = tf.reduce_sum(y**2)
        grads.append(tape.gradient(loss, field.w).numpy())
        outs.append(y.numpy())
        assert int(block.nfe_forward.numpy()) == forward
        backward = int(field.calls.numpy()) - forward
        if solver == "dopri5":
            assert int(block.nfe_backward.numpy()) == backward
        else:  # tfp's adjoint makes a few calls (time derivatives) after the guard's count is read
            assert backward - 8 <= int(block.nfe_backward.numpy()) <= backward
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-5)
    # odezoo's backward solve runs at 10x the forward tolerances (rtol 1e-6 here), tfp's at 1x
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_bdf_block_is_inference_only_with_a_clear_error():
    x = tf.random.normal((3, 2), seed=6)
    field = CountingField()
    y_ref = ODEBlock(field, rtol=1e-7, atol=1e-9)(x)
    block = ODEBlock(field, solver="bdf", rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(block(x).numpy(), y_ref.numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="solver='bdf'.*no gradient"):
        with tf.GradientTape() as tape:
            tape.watch(x)
            tf.reduce_sum(ODEBlock(field, solver="bdf")(x))
