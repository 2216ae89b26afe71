"""RevNet: exact inverse, and the memory-saving stage gradient against plain autodiff."""

import warnings

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402

import odezoo  # noqa: E402
from odezoo import BlockContext  # noqa: E402
from odezoo.layers import ConvField, ConvFieldFactory, SchemeBlock, SchemeStage  # noqa: E402

# Load the plugins through the registry first: importing the plugin module directly, before
# discovery, would register its scheme outside any plugin (owner "runtime" in `odezoo schemes`).
odezoo.list_schemes()
from odezoo.plugins import reversible  # noqa: E402

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TF-backend gradient")


def _stage(n=3, channels=8, h=1.0, backward="unrolled", **options):
    blocks = [
        SchemeBlock(
            "reversible",
            ConvFieldFactory(),
            h=h,
            backward=backward,
            context=BlockContext(block=i, stage_length=n, global_block=i, total_blocks=n),
            name=f"b{i}",
            **options,
        )
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


@pytest.mark.parametrize("backward", ["unrolled", "loop"])
def test_stage_gradient_equals_plain_autodiff_and_bn_updates_once(backward):
    stage, blocks = _stage(h=0.5, backward=backward)
    assert reversible._uniform_fields(blocks)  # so the reconstructing gradient is the one tested
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


@pytest.mark.parametrize("backward", ["unrolled", "loop"])
def test_input_gradient_matches_plain_autodiff_under_xla(backward):
    stage, blocks = _stage(n=2, backward=backward)
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

    # What keeps memory flat with depth under XLA. backward="loop": the backward pass is one
    # loop over the blocks; plain autodiff of the unrolled stage has none. backward="unrolled":
    # one conditional per block survives XLA's optimisation (a fusion boundary between blocks)
    if backward == "loop":
        assert "while" in custom.experimental_get_compiler_ir(x)(stage="hlo")
        assert "while" not in plain.experimental_get_compiler_ir(x)(stage="hlo")
    else:
        assert custom.experimental_get_compiler_ir(x)(stage="optimized_hlo").count(" conditional(") == len(blocks)
        assert " conditional(" not in plain.experimental_get_compiler_ir(x)(stage="optimized_hlo")
    start = [v.numpy().copy() for v in stage.non_trainable_variables]
    a = custom(x).numpy()
    for v, s in zip(stage.non_trainable_variables, start):
        v.assign(s)
    b = plain(x).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.max(np.abs(b)))


class _DenseField(keras.layers.Layer):
    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(channels)

    def build(self, t_shape, y_shape):
        self.dense.build(y_shape)

    def call(self, t, y, training=None):
        return self.dense(y)


def test_loop_over_unlike_fields_falls_back_to_plain_autodiff():
    # the loop substitutes each block's weights into the first block's fields, so it
    # needs fields of one structure; otherwise run_stage is plain backprop
    ctx = BlockContext(block=0, stage_length=2, global_block=0, total_blocks=2)
    narrow = SchemeBlock(
        "reversible", fields=[ConvField(2, name="f0"), ConvField(2, name="g0")], context=ctx, name="b0", backward="loop"
    )
    other = SchemeBlock(
        "reversible",
        fields=[ConvField(2, name="f1"), _DenseField(2, name="g1")],
        context=ctx.replace(block=1, global_block=1),
        name="b1",
        backward="loop",
    )
    stage = SchemeStage([narrow, other])
    stage.build((2, 4, 4, 4))
    assert not reversible._uniform_fields([narrow, other])
    x = tf.constant(np.random.default_rng(3).normal(size=(2, 4, 4, 4)).astype("float32"))
    variables = [v.value for v in stage.trainable_variables]
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.sin(stage(x, training=True)))
    grads = tape.gradient(loss, variables)
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


# --- backward="loop" under the compile policy (docs/ode.md, "Compilation") -------------------


def _dense_stage(n=2, channels=4, **options):
    blocks = [
        SchemeBlock(
            "reversible",
            fields=[_DenseField(channels // 2, name=f"f{i}"), _DenseField(channels // 2, name=f"g{i}")],
            context=BlockContext(block=i, stage_length=n, global_block=i, total_blocks=n),
            name=f"b{i}",
            **options,
        )
        for i in range(n)
    ]
    stage = SchemeStage(blocks)
    stage.build((4, channels))
    return stage


@pytest.mark.skipif(
    bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU")), reason="the CPU rule"
)
def test_loop_stage_keeps_a_convolving_step_out_of_xla_on_cpu():
    # RevNet's loop backward: XLA on CPU runs it 9-16x slower than the graph executor
    # (benchmarks/README.md), so a stage with convolving fields tells Keras not to jit its step
    def supports(backward, **options):
        return _stage(n=2, backward=backward, **options)[0].supports_jit

    assert supports("loop") is False
    assert supports("loop", compile="graph") is False
    assert supports("loop", compile="xla") is True
    assert supports("unrolled") is True and supports("unrolled", compile="graph") is True  # no loop to keep out
    assert _dense_stage(backward="loop").supports_jit is True  # no convolution: XLA fuses the dense ops
    assert _dense_stage(backward="loop", compile="graph").supports_jit is False

    with pytest.raises(ValueError, match=r"compile='fast'.*'auto', 'xla', 'graph'"):
        odezoo.build("revnet", depth=8, input_shape=(8, 8, 1), backward="loop", compile="fast")

    def jit_used(**options):
        model = odezoo.build("revnet", depth=8, input_shape=(8, 8, 1), **options)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", jit_compile=True)
        # Keras says so when it drops the jit_compile=True it was asked for
        assert any("jit_compile" in str(w.message) for w in caught) == (not model.jit_compile)
        return model.jit_compile

    assert jit_used(backward="loop") is False
    assert jit_used(backward="loop", compile="xla") is True
    block = (
        odezoo.build("revnet", depth=8, input_shape=(8, 8, 1), backward="loop", compile="graph")
        .get_layer("stage1")
        .blocks[0]
    )
    restored = SchemeBlock.from_config(block.get_config())
    assert (restored.scheme.backward, restored.scheme.compile) == ("loop", "graph")


def test_loop_gradients_in_the_graph_executor_match_xla_autodiff_and_finite_differences():
    stage, blocks = _stage(n=3, h=0.5, backward="loop")
    scheme = blocks[0].scheme
    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(size=(4, 8, 8, 8)).astype("float32"))
    variables = [v.value for v in stage.trainable_variables]
    moving = list(stage.non_trainable_variables)
    start = [v.numpy().copy() for v in moving]

    def loss_of(run, x):
        return tf.reduce_sum(tf.sin(run(x)))

    def custom_run(x):
        return stage(x, training=True)

    def plain_run(x):
        return scheme.output(odezoo.Scheme.run_stage(scheme, blocks, scheme.init(x), training=True, ctx=None))

    def gradients(run):
        def fn(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = loss_of(run, x)
            return tape.gradient(loss, [x] + variables)

        return fn

    results = {}
    for name, run, jit in (("graph", custom_run, False), ("xla", custom_run, True), ("plain", plain_run, False)):
        for v, s in zip(moving, start):
            v.assign(s)
        graph = tf.function(gradients(run), jit_compile=jit, autograph=False)
        if name == "graph":  # the loop really runs in the graph executor here, as a while op
            ops_ = {op.type for op in graph.get_concrete_function(x).graph.get_operations()}
            assert ops_ & {"While", "StatelessWhile"}
        results[name] = [g.numpy() for g in graph(x)]
    for a, b, c in zip(results["graph"], results["xla"], results["plain"]):
        assert np.max(np.abs(c)) > 0
        scale = np.max(np.abs(c))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * scale)
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-4 * scale)
    # ConvField has ReLU kinks, which make finite differences noisy; the loop's arithmetic is
    # checked against a central difference on smooth (dense) fields, in the graph executor too
    dense = _dense_stage(n=3, channels=4, backward="loop")
    xd = tf.constant(rng.normal(size=(4, 4)).astype("float32"))
    direction = tf.constant(rng.normal(size=(4, 4)).astype("float32"))
    graph = tf.function(lambda x: _input_gradient(dense, x), jit_compile=False, autograph=False)
    analytic = float(tf.reduce_sum(graph(xd) * direction))

    def central(eps):
        return (_smooth_loss(dense, xd + eps * direction) - _smooth_loss(dense, xd - eps * direction)) / (2 * eps)

    fd = (4 * central(5e-3) - central(1e-2)) / 3  # Richardson: the eps² term cancels (float32 forward)
    assert analytic == pytest.approx(fd, rel=1e-3, abs=1e-3)


def _smooth_loss(stage, x):
    return float(tf.reduce_sum(tf.sin(stage(x, training=True))))


def _input_gradient(stage, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.sin(stage(x, training=True)))
    return tape.gradient(loss, x)
