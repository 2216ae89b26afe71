"""RevNet: exact inverse, and the memory-saving stage gradient against plain autodiff."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402

import odezoo  # noqa: E402
from odezoo import BlockContext  # noqa: E402
from odezoo.layers import ConvFieldFactory, SchemeBlock, SchemeStage  # noqa: E402

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TF-backend gradient")


def _stage(n=3, channels=8):
    blocks = [
        SchemeBlock("reversible", ConvFieldFactory(), h=1.0,
                    context=BlockContext(block=i, stage_length=n, global_block=i, total_blocks=n), name=f"b{i}")
        for i in range(n)
    ]
    stage = SchemeStage(blocks)
    stage.build((4, 8, 8, channels))
    return stage, blocks


def test_inverse_recovers_input():
    stage, blocks = _stage()
    x = tf.constant(np.random.default_rng(0).normal(size=(4, 8, 8, 8)).astype("float32"))
    scheme = blocks[0].scheme
    state = scheme.init(x)
    for b in blocks:
        state = b.scheme.step(b.fields_for_training(False), b.t, state, b.h)
    y = scheme.output(state)
    np.testing.assert_allclose(y.numpy(), stage(x, training=False).numpy(), rtol=1e-6, atol=1e-6)
    for b in reversed(blocks):
        state = b.scheme.inverse(b.fields_for_training(False), b.t, state, b.h)
    err = float(tf.reduce_max(tf.abs(scheme.output(state) - x)))
    scale = max(1.0, float(tf.reduce_max(tf.abs(y))))
    assert err <= 1e-5 * scale, (err, scale)  # float32 round-off relative to the activations


def test_stage_gradient_equals_plain_autodiff_and_bn_updates_once():
    stage, blocks = _stage()
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(4, 8, 8, 8)).astype("float32"))
    w = tf.constant(rng.normal(size=(4, 8, 8, 8)).astype("float32"))
    scheme = blocks[0].scheme
    variables = [v.value for v in stage.trainable_variables]
    moving = [v for v in stage.non_trainable_variables]
    start = [v.numpy().copy() for v in moving]

    with tf.GradientTape() as tape:
        loss_custom = tf.reduce_sum(stage(x, training=True) * w)
    g_custom = tape.gradient(loss_custom, variables)
    after_custom = [v.numpy().copy() for v in moving]

    for v, s in zip(moving, start):
        v.assign(s)
    with tf.GradientTape() as tape:
        state = odezoo.Scheme.run_stage(scheme, blocks, scheme.init(x), training=True, ctx=None)
        loss_plain = tf.reduce_sum(scheme.output(state) * w)
    g_plain = tape.gradient(loss_plain, variables)
    after_plain = [v.numpy().copy() for v in moving]

    assert float(loss_custom) == pytest.approx(float(loss_plain), rel=1e-6)
    for a, b, v in zip(g_custom, g_plain, variables):
        assert float(tf.reduce_max(tf.abs(a))) > 0, f"zero gradient for {v.name}"
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4 * float(tf.reduce_max(tf.abs(b))))
    # the reconstruction in the backward pass does not count the batch a second time
    for a, b in zip(after_custom, after_plain):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert max(float(np.max(np.abs(a - s))) for a, s in zip(after_custom, start)) > 0


def test_input_gradient_matches_plain_autodiff_under_xla():
    stage, blocks = _stage(n=2)
    scheme = blocks[0].scheme
    x = tf.constant(np.random.default_rng(2).normal(size=(4, 8, 8, 8)).astype("float32"))

    @tf.function(jit_compile=True)
    def custom(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.sin(stage(x, training=True)))
        return tape.gradient(loss, x)

    @tf.function(jit_compile=True)
    def plain(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            state = odezoo.Scheme.run_stage(scheme, blocks, scheme.init(x), training=True, ctx=None)
            loss = tf.reduce_sum(tf.sin(scheme.output(state)))
        return tape.gradient(loss, x)

    start = [v.numpy().copy() for v in stage.non_trainable_variables]
    a = custom(x).numpy()
    for v, s in zip(stage.non_trainable_variables, start):
        v.assign(s)
    b = plain(x).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.max(np.abs(b)))
