"""Issue 14: how a solve is compiled (``compile=``), the backward solve's first steps, ODE-Net's field.

Every path the fix adds is checked against an independent reference: gradients through a
conv field against central finite differences and against the XLA path, in both compile
modes, for the adjoint and for the fixed grid; the adjoint's backward solve started from the
forward solve's step sizes against the closed form of a linear system; ODE-Net's rewritten
field against the concatenate-then-convolve form with Keras's own GroupNormalization.
"""

import keras
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import tensorflow as tf

import odezoo
from odezoo.ode import adjoint, compilation
from odezoo.ode.integrator import integrate

ACCELERATOR = compilation.has_accelerator()


@keras.saving.register_keras_serializable(package="test_ode_compile")
class ConvField(keras.layers.Layer):
    """A small conv field that sees t: tanh(conv(y) + t)."""

    def __init__(self, channels=3, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.conv = keras.layers.Conv2D(channels, 3, padding="same", dtype=self.dtype_policy)

    def build(self, t_shape, y_shape):
        self.conv.build(y_shape)

    def call(self, t, y):
        return tf.tanh(self.conv(y) + tf.cast(t, y.dtype))

    def get_config(self):
        return dict(super().get_config(), channels=self.channels)


class DenseField(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(4, dtype=self.dtype_policy)

    def build(self, t_shape, y_shape):
        self.dense.build(y_shape)

    def call(self, t, y):
        return tf.tanh(self.dense(y))


def _conv_block(compile, **kwargs):
    keras.utils.set_random_seed(1)
    field = ConvField(3, dtype="float64")
    block = odezoo.ODEBlock(field, compile=compile, dtype="float64", **kwargs)
    block.build((2, 4, 4, 3))
    return block


# --------------------------------------------------------------------------- the option
def test_auto_picks_the_graph_executor_for_a_conv_field_and_xla_for_a_dense_one():
    conv = _conv_block("auto")
    dense = odezoo.ODEBlock(DenseField())
    dense.build((2, 4))
    if ACCELERATOR:
        assert conv.compiled_by == dense.compiled_by == "xla"
    else:
        assert conv.compiled_by == "graph" and not conv.supports_jit
    assert dense.compiled_by == "xla" and dense.supports_jit
    assert _conv_block("xla").compiled_by == "xla" and _conv_block("graph").compiled_by == "graph"


def test_a_raw_tf_convolution_counts_as_a_convolution():
    kernel = tf.ones((3, 3, 2, 2))
    spec = tf.TensorSpec((1, 5, 5, 2), tf.float32)
    assert compilation.uses_convolution(lambda y: tf.nn.conv2d(y, kernel, 1, "SAME"), spec)
    assert not compilation.uses_convolution(lambda y: tf.tanh(y) * 2.0, spec)


def test_a_bad_compile_value_is_refused_and_names_the_choices():
    with pytest.raises(ValueError, match=r"compile.*'auto', 'xla', 'graph'"):
        odezoo.ODEBlock(DenseField(), compile="fast")
    block = _conv_block("xla")
    with pytest.raises(ValueError, match="compile"):
        block.compile = "jit"
    assert block.compile == "xla" and block.compiled_by == "xla"  # left as it was


def test_compile_is_saved_and_a_file_without_it_loads_as_auto():
    block = _conv_block("graph")
    config = block.get_config()
    assert config["compile"] == "graph"
    assert odezoo.ODEBlock.from_config(config).compile == "graph"
    del config["compile"]  # a file saved before the option existed
    assert odezoo.ODEBlock.from_config(config).compile == "auto"


def test_changing_compile_on_a_built_block_retraces_with_the_other_compiler():
    block = _conv_block("graph")
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 4, 4, 3)))
    a = block(x).numpy()
    assert set(block._compiled) == {(None, False)}  # (training, regularized)
    block.compile = "xla"
    assert block._compiled == {} and block.compiled_by == "xla"
    np.testing.assert_allclose(block(x).numpy(), a, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- gradients on a conv field
def _loss_and_grads(block, x, w):
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(block(x) * w)
    variables = block.field.trainable_variables
    gx, *gv = tape.gradient(loss, [x] + variables)
    return float(loss), gx.numpy(), [g.numpy() for g in gv]


def _finite_differences(block, x, w, variable, index, eps=1e-5):
    def loss():
        return float(tf.reduce_sum(block(x) * w))

    old = variable.numpy()
    out = []
    for sign in (1.0, -1.0):
        moved = old.copy()
        moved[index] += sign * eps
        variable.assign(moved)
        out.append(loss())
    variable.assign(old)
    return (out[0] - out[1]) / (2 * eps)


@pytest.mark.parametrize(
    "options",
    [dict(rtol=1e-9, atol=1e-9), dict(solver="rk4", num_steps=6)],
    ids=["dopri5_adjoint", "rk4_backprop"],
)
def test_conv_field_gradients_match_finite_differences_and_the_xla_path(options):
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=(2, 4, 4, 3)))
    w = tf.constant(rng.normal(size=(2, 4, 4, 3)))
    results = {}
    for mode in ("graph", "xla"):
        block = _conv_block(mode, **options)
        loss, gx, gv = _loss_and_grads(block, x, w)
        results[mode] = (loss, gx, gv)
        kernel = block.field.conv.kernel
        for index in [(0, 0, 0, 0), (1, 2, 1, 2), (2, 1, 2, 0)]:
            fd = _finite_differences(block, x, w, kernel, index)
            np.testing.assert_allclose(gv[0][index], fd, rtol=2e-5, atol=1e-7)
        # and through the input: one direction
        v = rng.normal(size=x.shape)
        eps = 1e-5
        plus = float(tf.reduce_sum(block(x + eps * v) * w))
        minus = float(tf.reduce_sum(block(x - eps * v) * w))
        np.testing.assert_allclose(np.sum(gx * v), (plus - minus) / (2 * eps), rtol=2e-5)
    (lg, gxg, gvg), (lx, gxx, gvx) = results["graph"], results["xla"]
    np.testing.assert_allclose(lg, lx, rtol=1e-10)
    np.testing.assert_allclose(gxg, gxx, rtol=1e-7, atol=1e-10)
    for a, b in zip(gvg, gvx):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10)


class CountingConvField(ConvField):
    """ConvField that counts how often its Python body runs (once per trace of a call site)."""

    traces = 0

    def call(self, t, y):
        CountingConvField.traces += 1
        return super().call(t, y)


@pytest.mark.parametrize("gradient", ["adjoint", "backprop"])
@pytest.mark.parametrize("mode", ["graph", pytest.param("xla", marks=pytest.mark.slow)])  # XLA: 8 s each
def test_the_field_traced_once_solves_and_differentiates_as_per_call_site_tracing(monkeypatch, mode, gradient):
    # the integrator traces the field once and calls that function at every stage (issue 14's
    # first step); the previous path traced it at each call site. Same solve, same gradients.
    import odezoo.ode.integrator as integrator

    rng = np.random.default_rng(5)
    x = tf.constant(rng.normal(size=(2, 4, 4, 3)))
    w = tf.constant(rng.normal(size=(2, 4, 4, 3)))
    results = {}
    for once in (False, True):
        monkeypatch.setattr(integrator, "FIELD_TRACED_ONCE", once)
        keras.utils.set_random_seed(1)
        block = odezoo.ODEBlock(
            CountingConvField(3, dtype="float64"),
            compile=mode,
            dtype="float64",
            rtol=1e-6,
            atol=1e-6,
            gradient=gradient,
        )
        block.build((2, 4, 4, 3))
        CountingConvField.traces = 0
        loss, gx, gv = _loss_and_grads(block, x, w)
        results[once] = dict(loss=loss, gx=gx, gv=gv, nfe=(int(block.nfe_forward), int(block.nfe_backward)))
        results[once]["traces"] = CountingConvField.traces
    before, after = results[False], results[True]
    assert after["nfe"] == before["nfe"] and after["nfe"][0] > 7
    np.testing.assert_allclose(after["loss"], before["loss"], rtol=1e-12)
    np.testing.assert_allclose(after["gx"], before["gx"], rtol=1e-9, atol=1e-12)
    for a, b in zip(after["gv"], before["gv"]):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    # each integrate traces the field once instead of at its 7-8 call sites
    assert after["traces"] * 3 <= before["traces"], (after["traces"], before["traces"])


def test_a_graph_compiled_block_trains_in_keras_without_xla_and_with_the_same_step_as_xla():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 4, 4, 3)).astype("float32")
    y = rng.normal(size=(4, 4, 4, 3)).astype("float32")
    weights = None
    after = {}
    for mode in ("graph", "xla"):
        keras.utils.set_random_seed(4)
        inputs = keras.Input((4, 4, 3))
        block = odezoo.ODEBlock(ConvField(3), compile=mode)
        model = keras.Model(inputs, block(inputs))
        if weights is None:
            weights = model.get_weights()
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile="auto")
        if mode == "graph":
            assert model.jit_compile is False  # the solve would be compiled by XLA inside an XLA step
        model.train_on_batch(x, y)
        after[mode] = model.get_weights()
        assert int(block.nfe_backward.numpy()) > 0
    for a, b in zip(after["graph"], after["xla"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the backward solve's first steps
def test_step_sizes_are_the_controllers_proposals_at_each_time():
    def fn(t, y):
        return [-y[0]]

    times = tf.constant([0.5, 1.0, 2.0], tf.float64)
    outs, info = integrate(fn, 0.0, [tf.constant([1.0], tf.float64)], times, rtol=1e-6, atol=1e-9)
    steps = info["step_sizes"].numpy()
    assert steps.shape == (3,) and np.all(np.isfinite(steps)) and np.all(steps > 0)
    np.testing.assert_allclose(outs[0].numpy()[:, 0], np.exp(-times.numpy()), rtol=1e-5)
    # a given first step is the one recorded at t0
    _, info0 = integrate(fn, 0.0, [tf.constant([1.0], tf.float64)], tf.constant([0.0, 1.0], tf.float64),
                         rtol=1e-6, atol=1e-9, first_step=0.01)  # fmt: skip
    assert info0["step_sizes"].numpy()[0] == pytest.approx(0.01)


_A = np.array([[-0.5, 1.5, 0.0], [-1.5, -0.5, 0.3], [0.2, 0.0, -1.0]])
_Y0 = np.array([1.0, -0.5, 2.0])
_W = np.array([0.3, -1.0, 0.7])


def _linear_adjoint(first, tol=1e-8):
    """dL/dy0 and dL/dA of L = w·y(2) for y' = A y (solution times 1 and 2), and the backward NFE."""
    matrix = tf.Variable(_A)
    nfe = tf.Variable(0)

    def fn(t, y, cs):
        return [tf.linalg.matvec(matrix, y[0])]

    @tf.function(jit_compile=True)
    def run(y):
        with tf.GradientTape() as tape:
            tape.watch(y)
            outs, _ = adjoint.adjoint_solve(
                fn, tf.constant(0.0, tf.float64), [y], tf.constant([1.0, 2.0], tf.float64), [],
                options=dict(rtol=tol, atol=tol * 1e-2, adjoint_first_step=first),
                on_backward=lambda info: [nfe.assign(info["nfe"])],
            )  # fmt: skip
            loss = tf.reduce_sum(outs[0][-1] * _W)
        return tape.gradient(loss, [y, matrix])

    gy, ga = run(tf.constant(_Y0))
    return gy.numpy(), ga.numpy(), int(nfe.numpy())


@pytest.mark.parametrize("first", adjoint.ADJOINT_FIRST_STEPS)
def test_adjoint_backward_from_the_forward_steps_matches_the_closed_form(first):
    gy, ga, _ = _linear_adjoint(first)
    np.testing.assert_allclose(gy, scipy.linalg.expm(2.0 * _A).T @ _W, rtol=1e-6)
    # dL/dA = ∫0^2 λ(t) y(t)^T dt with λ(t) = expm((2 - t) A)^T w, y(t) = expm(t A) y0
    ts = np.linspace(0.0, 2.0, 2001)
    vals = [np.outer(scipy.linalg.expm((2.0 - t) * _A).T @ _W, scipy.linalg.expm(t * _A) @ _Y0) for t in ts]
    exact = scipy.integrate.simpson(np.array(vals), x=ts, axis=0)
    np.testing.assert_allclose(ga, exact, rtol=1e-5, atol=1e-8)


def test_starting_from_the_forward_steps_saves_backward_evaluations():
    # four backward solves (two intervals, one restart each), each a few steps long at this
    # tolerance: every one saves its probe and the ramp-up from Hairer's cautious first step
    # (52 against 86 when written; at 1e-8, with many steps per solve, it is a wash: 154 / 152)
    *_, forward = _linear_adjoint("forward", tol=1e-5)
    *_, select = _linear_adjoint("select", tol=1e-5)
    assert forward <= select - 12, (forward, select)


def test_a_bad_adjoint_first_step_is_refused():
    with pytest.raises(ValueError, match="adjoint_first_step"):
        adjoint.adjoint_solve(
            lambda t, y, c: y, 0.0, [tf.constant([1.0])], tf.constant([1.0]), [],
            options=dict(rtol=1e-3, atol=1e-6, adjoint_first_step="guess"),
        )  # fmt: skip


# --------------------------------------------------------------------------- ODE-Net's field and stem
def test_odenet_field_equals_concatenate_then_convolve_with_keras_group_norm():
    from odezoo.plugins.ode.model import ODEConvField

    rng = np.random.default_rng(5)
    field = ODEConvField(64)
    field.build((), (None, 7, 7, 64))
    for v in field.weights:
        v.assign(rng.normal(size=v.shape).astype("float32") * 0.2 + (1.0 if "gamma" in v.path else 0.0))

    def reference(t, y):
        def gn(layer, x):
            return keras.layers.GroupNormalization.call(layer, x)

        def concat_conv(conv, x):
            return conv(tf.concat([x, tf.ones_like(x[..., :1]) * t], -1))

        z = concat_conv(field.conv1, tf.nn.relu(gn(field.norm1, y)))
        z = concat_conv(field.conv2, tf.nn.relu(gn(field.norm2, z)))
        return gn(field.norm3, z)

    y = tf.constant(rng.normal(size=(3, 7, 7, 64)).astype("float32") * 3.0 + 20.0)  # a large mean: stability
    t = tf.constant(0.37)
    w = tf.constant(rng.normal(size=y.shape).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(y)
        new, old = field(t, y), reference(t, y)
        loss_new, loss_old = tf.reduce_sum(new * w), tf.reduce_sum(old * w)
    np.testing.assert_allclose(new.numpy(), old.numpy(), atol=2e-5)
    sources = [y] + field.trainable_variables
    for a, b in zip(tape.gradient(loss_new, sources), tape.gradient(loss_old, sources)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4 * float(np.abs(b.numpy()).max()))


def test_the_reference_stem_gives_torchdiffeqs_six_by_six_state():
    model = odezoo.build("odenet", channels=32, stem="reference")
    block = model.ode_blocks()[0]
    assert tuple(block._y_shape[1:]) == (6, 6, 32)
    assert tuple(odezoo.build("odenet", channels=32).ode_blocks()[0]._y_shape[1:]) == (7, 7, 32)
    with pytest.raises(ValueError, match=r"stem.*'same', 'reference'"):
        odezoo.build("odenet", channels=32, stem="valid")


def test_odeint_compiles_either_way_with_the_same_answer_and_refuses_a_bad_mode():
    kernel = tf.constant(np.random.default_rng(6).normal(size=(3, 3, 2, 2)) * 0.3)

    def f(t, y):
        return tf.tanh(tf.nn.conv2d(y, kernel, 1, "SAME"))

    y0 = tf.constant(np.random.default_rng(7).normal(size=(1, 4, 4, 2)))
    t = tf.constant([0.0, 0.5, 1.0], tf.float64)
    a = odezoo.odeint(f, y0, t, compile="graph").numpy()
    b = odezoo.odeint(f, y0, t, compile="xla").numpy()
    c = odezoo.odeint(f, y0, t).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a, c, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"compile.*'auto', 'xla', 'graph'"):
        odezoo.odeint(f, y0, t, compile="eager")


def test_the_flow_solves_by_xla_for_its_mlp_fields_and_by_the_graph_executor_on_request():
    from odezoo.plugins.ffjord.flow import FFJORDFlow

    keras.utils.set_random_seed(8)
    flow = FFJORDFlow(2, hidden=(8,), rtol=1e-6, atol=1e-6, trace="exact")
    assert flow.solver_compile == "auto" and flow.compiled_by == "xla" and flow.supports_jit
    x = tf.constant(np.random.default_rng(9).normal(size=(5, 2)).astype("float32"))
    xla = flow.log_prob(x).numpy()
    flow.solver_compile = "graph"
    assert flow.compiled_by == "graph" and not flow.supports_jit
    np.testing.assert_allclose(flow.log_prob(x).numpy(), xla, rtol=1e-5, atol=1e-5)
    assert FFJORDFlow.from_config(flow.get_config()).solver_compile == "graph"
    with pytest.raises(ValueError, match="solver_compile"):
        flow.solver_compile = "fast"
