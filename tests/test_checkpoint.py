"""Issue 15: gradient="checkpoint", the exact gradient of the discrete adaptive solve by checkpointed replay.

References: backprop through the same steps (the gradient it must equal to rounding, for every
pair and across several checkpoint segments) and central finite differences (check_solver,
and an ODEBlock here); a failed forward solve gives NaN gradients.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import odezoo
from odezoo.ode.checkpoint import checkpoint_stride
from odezoo.testing import _central_differences

W0 = np.array([[0.3, -1.0], [1.1, 0.2]])
TIMES = [0.0, 0.3, 1.7, 2.0]  # 0.3 and 1.7 fall inside steps: the dense output's cotangent counts


def _gradients(solver, gradient, *, rtol, max_steps):
    w = tf.Variable(W0)

    def f(t, y):
        return tf.tanh(tf.matmul(y, w)) * tf.cos(t) + 0.1 * y

    y0 = tf.constant(np.random.default_rng(0).normal(size=(3, 2)))
    t = tf.constant(TIMES, tf.float64)
    weights = tf.constant([1.0, 2.0, 3.0], tf.float64)[:, None, None]

    @tf.function
    def run(y0):
        with tf.GradientTape() as tape:
            tape.watch(y0)
            out = odezoo.odeint(f, y0, t, solver=solver, rtol=rtol, atol=rtol, gradient=gradient, max_steps=max_steps)
            loss = tf.reduce_sum(tf.sin(out[1:]) * weights)
        return loss, tape.gradient(loss, [y0, w])

    loss, (gy, gw) = run(y0)
    return float(loss), gy.numpy(), gw.numpy()


def _accepted(solver, rtol):
    from odezoo import _registry
    from odezoo.ode import integrator
    from odezoo.ode.tableau import tableau_of

    def f(t, y):
        return [tf.tanh(tf.matmul(y[0], tf.constant(W0))) * tf.cos(t) + 0.1 * y[0]]

    y0 = [tf.constant(np.random.default_rng(0).normal(size=(3, 2)))]
    tableau = tableau_of(_registry.get_scheme(solver))
    run = tf.function(lambda: integrator.integrate(f, 0.0, y0, tf.constant(TIMES[1:], tf.float64), rtol=rtol,
                                                   atol=rtol, tableau=tableau)[1]["accepted"])  # fmt: skip
    return int(run())


@pytest.mark.parametrize(
    "solver,rtol",
    [("dopri5", 1e-8), ("tsit5", 1e-8), ("dopri8", 1e-12), ("bosh3", 1e-6), ("kvaerno3", 1e-6),
     pytest.param("kvaerno5", 1e-9, marks=pytest.mark.slow), pytest.param("heun_euler", 1e-5, marks=pytest.mark.slow)],
)  # fmt: skip
def test_the_checkpoint_gradient_equals_backprop_through_the_same_steps(solver, rtol):
    """Exact for the implicit pairs too (reproduced: kvaerno's replay restarted each step's first
    stage from f(t, y), not from the (Y - known)/(hγ) the forward solve carried, and its gradient was
    4e-8 off backprop's here, 1e-5 on Robertson; the checkpoints now keep that stage, and its
    cotangent is carried)."""
    max_steps = {"dopri8": 25, "bosh3": 400, "heun_euler": 400, "kvaerno3": 144}.get(solver, 36)  # strides 5, 20, 12, 6
    accepted = _accepted(solver, rtol)
    assert accepted > 2 * checkpoint_stride(max_steps), accepted  # three segments or more are replayed
    lb, gy_b, gw_b = _gradients(solver, "backprop", rtol=rtol, max_steps=max_steps)
    lc, gy_c, gw_c = _gradients(solver, "checkpoint", rtol=rtol, max_steps=max_steps)
    assert abs(lb - lc) <= 1e-14 * abs(lb) and np.all(np.isfinite(gy_c))  # the same forward solve
    np.testing.assert_allclose(gy_c, gy_b, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(gw_c, gw_b, rtol=1e-11, atol=1e-13)


def test_a_failed_forward_solve_gives_nan_checkpoint_gradients_not_numbers():
    loss, gy, gw = _gradients("dopri5", "checkpoint", rtol=1e-10, max_steps=5)  # the budget runs out
    assert np.isnan(loss) and np.all(np.isnan(gy)) and np.all(np.isnan(gw))


def test_an_odeblock_trains_with_the_checkpoint_gradient_against_finite_differences():
    class Field(keras.layers.Layer):
        def build(self, t_shape, y_shape):
            self.w = self.add_weight(shape=(2, 2), initializer="orthogonal", dtype="float64")

        def call(self, t, y):
            return tf.tanh(tf.matmul(y, self.w))

    keras.utils.set_random_seed(0)
    block = odezoo.ODEBlock(Field(dtype="float64"), rtol=1e-9, atol=1e-9, gradient="checkpoint", dtype="float64",
                            solution_times=[0.4, 1.0])  # fmt: skip
    x = tf.constant(np.random.default_rng(2).normal(size=(4, 2)))
    block.build(x.shape)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.sin(block(x)))
    (g,) = tape.gradient(loss, [block.field.w])
    fd = _central_differences(lambda: float(tf.reduce_sum(tf.sin(block(x)))), block.field.w)
    np.testing.assert_allclose(g.numpy(), fd, rtol=1e-6, atol=1e-9)
    # the backward pass replays each accepted step once, under the tape (dopri5's stages k1..k6: the
    # states of a solve of fewer than sqrt(max_steps) steps are the forward's ring, none rebuilt),
    # plus f at the end of the one step with a solution time (0.4) strictly inside, for its dense output
    assert int(block.nfe_backward) > 1 and int(block.nfe_backward) % 6 == 1
    assert block.get_config()["gradient"] == "checkpoint"  # saved with the model


class _Decay(keras.layers.Layer):
    def call(self, t, y):
        return -y


@pytest.mark.parametrize(
    "solver,options,match",
    [("rk4", dict(num_steps=4), "fixed grid 'rk4' has none: use 'backprop'"),
     ("tfp_dopri5", {}, "tfp solver 'tfp_dopri5' has none: use 'adjoint'"),
     ("dopri5", dict(num_steps=4), "fixed grid 'dopri5'")],
)  # fmt: skip
def test_the_checkpoint_gradient_is_refused_where_there_are_no_accepted_steps_to_replay(solver, options, match):
    with pytest.raises(ValueError, match=match):
        odezoo.odeint(lambda t, y: -y, tf.constant([1.0]), tf.constant([0.0, 1.0]), solver=solver,
                      gradient="checkpoint", **options)  # fmt: skip
    with pytest.raises(ValueError, match=match):
        odezoo.ODEBlock(_Decay(), solver=solver, gradient="checkpoint", **options)


def test_checkpoint_stride_is_the_ceiling_of_the_square_root():
    assert [checkpoint_stride(n) for n in (1, 2, 4, 5, 36, 37, 10000)] == [1, 2, 2, 3, 6, 7, 100]
