"""RevNet's reversible coupling (Gomez et al., NeurIPS 2017) as symplectic Euler."""

import keras
import numpy as np
from keras import ops

import odezoo
from odezoo import checks
from odezoo.layers import frozen_batchnorm_statistics

ODEZOO_PLUGIN_API = 1


@odezoo.register_scheme("reversible")
class Reversible(odezoo.Scheme):
    """RevNet coupling on channel halves; symplectic Euler as a solver. Order 1.

    The state is the pair (y1, y2) of channel halves (``init`` splits, ``output``
    concatenates). For the partitioned system y1' = F(t, y2), y2' = G(t, y1),
    symplectic Euler is

        y1_{n+1} = y1_n + h·F(t_n, y2_n)
        y2_{n+1} = y2_n + h·G(t_n + h, y1_{n+1}),

    which with h = 1 is exactly the RevNet block, so ``block_step`` is ``step``.
    It is inverted exactly by y2_n = y2_{n+1} − h·G(y1_{n+1}),
    y1_n = y1_{n+1} − h·F(y2_n) (:meth:`inverse`).

    :meth:`run_stage` (TensorFlow backend, training) runs a whole stage under one
    custom gradient that keeps no activations: its backward pass rebuilds each
    block's input from its output (the inverse above), top to bottom, and
    re-runs that block's fields to take its gradient. Activation memory then
    stays flat in depth, with and without XLA. Two forms, by the option
    ``backward`` (memory and step time: benchmarks/README.md, "RevNet"):

    - ``"unrolled"`` (default): one reconstruction per block, each behind a
      conditional the compiler cannot remove (:func:`_barrier`), which orders it
      after the gradient of the block above and, under XLA, stops fusion from
      carrying the running gradient sums across blocks.
    - ``"loop"``: one ``tf.while_loop`` over the blocks (their fields must share
      one structure; otherwise plain backprop). Also flat; kept as an option, no
      longer needed for memory. On CPU, XLA compiles the convolutions' gradients
      inside the loop into code 9-16× slower than the graph executor runs
      them (benchmarks/README.md, "RevNet's loop under the compile policy"), the
      same cause as the ODE layer's; so ``compile`` decides, as for
      :class:`odezoo.ode.ODEBlock`: ``"auto"`` (default) keeps a training step
      holding a loop stage out of XLA when its fields convolve and no GPU or TPU
      is visible (:meth:`stage_supports_jit`), ``"xla"`` and ``"graph"`` force
      the choice. ``compile`` has no effect on ``"unrolled"``, which XLA runs at
      the speed of plain Keras.
    """

    order, num_fields, state_size = 1, 2, 2

    def __init__(self, backward="unrolled", compile="auto"):
        if backward not in ("unrolled", "loop"):
            raise checks.bad_value("backward", backward, "'unrolled', 'loop'")
        self.backward = backward
        from odezoo.ode.options import COMPILE_MODES  # TF-free: the JAX backend builds RevNet without TF

        self.compile = checks.choice("compile", compile, COMPILE_MODES)

    def stage_supports_jit(self, blocks, input_shape):
        if self.backward != "loop" or keras.backend.backend() != "tensorflow" or not _uniform_fields(blocks):
            return True  # straight-line code (unlike fields fall back to plain backprop)
        from odezoo.ode import compilation

        def convolution():
            import tensorflow as tf

            field = blocks[0].fields_for_training(False)[0]
            dtype = blocks[0].fields[0].compute_dtype
            spec = tf.TensorSpec((None, *input_shape[1:-1], input_shape[-1] // 2), dtype)
            return compilation.uses_convolution(lambda y: field(blocks[0].t, y), spec)

        return compilation.resolve_compile(self.compile, convolution) == "xla"

    def init(self, y0):
        c = y0.shape[-1]
        if c is not None and c % 2:
            raise ValueError(f"The reversible scheme splits channels in half; got {c} channels (odd).")
        return (y0[..., : c // 2], y0[..., c // 2 :])

    def output(self, state):
        return (
            ops.concatenate(list(state), axis=-1) if not isinstance(state[0], np.ndarray) else np.concatenate(state, -1)
        )

    def block_fields(self, channels):
        return [channels // 2, channels // 2]

    def step(self, fields, t, state, h):
        y1, y2 = state
        y1 = y1 + h * fields[0](t, y2)
        y2 = y2 + h * fields[1](t + h, y1)
        return (y1, y2)

    def inverse(self, fields, t, state, h):
        """The exact inverse of :meth:`step`."""
        y1, y2 = state
        y2 = y2 - h * fields[1](t + h, y1)
        y1 = y1 - h * fields[0](t, y2)
        return (y1, y2)

    def test_problem(self):
        # A harmonic oscillator with forcing: y1' = y2, y2' = -y1 + cos t ... written as
        # y1' = F(t, y2) = y2 + sin t, y2' = G(t, y1) = -y1; exact solution below.
        def F(t, y2):
            return y2 + np.sin(t)

        def G(t, y1):
            return -y1

        # y1'' = y2' + cos t = -y1 + cos t  =>  y1 = cos t + (t/2) sin t (y1(0) = 1, y1'(0) = 0)
        def exact(t):
            y1 = np.cos(t) + 0.5 * t * np.sin(t)
            dy1 = -np.sin(t) + 0.5 * np.sin(t) + 0.5 * t * np.cos(t)
            return (np.array([y1]), np.array([dy1 - np.sin(t)]))

        return {"fields": [F, G], "y0": exact(0.0), "t0": 0.0, "t1": 2.0, "exact": exact}

    # -- memory-saving stage gradient ------------------------------------------------
    def run_stage(self, blocks, state, *, training=None, ctx=None):
        if training and keras.backend.backend() == "jax":
            from ._reversible_jax import reversible_stage  # imports JAX: only under that backend

            return reversible_stage(blocks, state, training)
        if not training or keras.backend.backend() != "tensorflow":
            return super().run_stage(blocks, state, training=training, ctx=ctx)
        if self.backward == "loop" and not _uniform_fields(blocks):
            return super().run_stage(blocks, state, training=training, ctx=ctx)
        return _tf_reversible_stage(blocks, state, training, self.backward)


def _uniform_fields(blocks):
    """True when every block's fields hold variables of the same shapes, dtypes and roles."""

    def signature(b):
        return [[(tuple(v.shape), str(v.dtype), v.trainable) for v in f.variables] for f in b.fields]

    first = signature(blocks[0])
    return all(signature(b) == first for b in blocks[1:])


def _tf_reversible_stage(blocks, state, training, backward="unrolled"):
    import tensorflow as tf

    def forward(y1, y2):
        for b in blocks:
            y1, y2 = b.scheme.step(b.fields_for_training(training), b.t, (y1, y2), b.h)
        return (y1, y2)

    @tf.custom_gradient
    def stage(y1, y2):
        out = forward(y1, y2)

        def grad(d1, d2, variables=None):
            backprop = _tf_loop_backward if backward == "loop" else _tf_unrolled_backward
            return backprop(blocks, training, out, (d1, d2), variables or [])

        return out, grad

    return stage(*state)


def _tf_unrolled_backward(blocks, training, out, upstream, variables):
    """The stage's backward pass as straight-line code, one reconstruction per block."""
    import tensorflow as tf

    (z1, z2), (d1, d2) = out, upstream
    var_grads = {}
    # True for every value, NaN included (NaN > inf is false), but the compiler cannot know it.
    keep = tf.logical_not(tf.reshape(z1, [-1])[0] > float("inf"))
    with frozen_batchnorm_statistics(blocks):
        for b in reversed(blocks):
            z1, z2, d1, d2 = _barrier(keep, (z1, z2, d1, d2))
            # Without XLA the conditional is lowered to per-tensor switches, which order
            # nothing; a data dependency on the (now materialised) gradient does.
            zero = 0.0 * (tf.reshape(d1, [-1])[0] + tf.reshape(d2, [-1])[0])
            z1, z2 = z1 + zero, z2 + zero
            F, G = b.fields_for_training(training)
            h, t = b.h, b.t
            w_g = [v.value for v in b.fields[1].trainable_variables]
            w_f = [v.value for v in b.fields[0].trainable_variables]
            with tf.GradientTape() as tape:
                tape.watch(z1)
                g = h * G(t + h, z1)
            gz1, *gw = tape.gradient(g, [z1] + w_g, output_gradients=d2)
            _accumulate(var_grads, w_g, gw)
            d1 = d1 + gz1
            x2 = z2 - g
            with tf.GradientTape() as tape:
                tape.watch(x2)
                f = h * F(t, x2)
            gx2, *fw = tape.gradient(f, [x2] + w_f, output_gradients=d1)
            _accumulate(var_grads, w_f, fw)
            d2 = d2 + gx2
            z1, z2 = z1 - f, x2
    return (d1, d2), [var_grads[v.ref()] if v.ref() in var_grads else tf.zeros_like(v) for v in variables]


def _barrier(keep, tensors):
    """Pass ``tensors`` through a conditional the compiler cannot remove; returns them unchanged.

    Between two blocks of the backward pass, under XLA, this does two jobs.
    (1) Order: the block below is rebuilt from the conditional's outputs, so
    only once the gradient of the block above exists (otherwise the whole stage
    is rebuilt ahead of the backward chain, holding every block's activations).
    (2) Materialise the running gradient sums: XLA's CPU fusion duplicates cheap
    elementwise adds into all their consumers, so without a boundary each block's
    fusions recompute d1, d2 from the terms of every block above and keep those
    alive (O(depth) memory; benchmarks/README.md). Fusion cannot cross a
    conditional, and XLA keeps a conditional whose predicate it cannot evaluate. ``keep`` is always true; the
    other branch is never taken (it only has to differ from the first, so the
    two cannot be merged).
    """
    import tensorflow as tf

    return tf.cond(keep, lambda: tuple(tf.identity(t) for t in tensors), lambda: tuple(-t for t in tensors))


def _accumulate(table, variables, grads):
    for v, g in zip(variables, grads):
        if g is None:
            continue
        key = v.ref()
        table[key] = g if key not in table else table[key] + g


def _tf_loop_backward(blocks, training, out, upstream, variables):
    """The stage's backward pass as ONE ``tf.while_loop`` over its blocks, top to bottom.

    Iteration i takes block n−1−i's output (z1, z2) and the gradient (d1, d2)
    reaching it, rebuilds the block's input with the exact inverse, and
    backpropagates through the block's fields re-run on the rebuilt input.
    Each block's weights are gathered from per-variable stacks and substituted
    into the first block's fields by a ``keras.StatelessScope`` (all blocks of a
    stage share their fields' structure), which also discards the BatchNorm
    moving-statistics updates of the re-run: the forward pass already counted
    the batch. Weight gradients go into one TensorArray per variable.

    Why a loop exists: it was the first form whose memory stayed flat under XLA,
    before :func:`_barrier` made the default straight-line form
    (:func:`_tf_unrolled_backward`) flat too. A loop's state is stored between
    iterations and at most one iteration's tensors exist at a time
    (``parallel_iterations=1`` also stops graph mode from running ahead). It is
    slower than the default (benchmarks/README.md) and stays an option.
    """
    import tensorflow as tf

    n = len(blocks)
    fields = blocks[0].fields_for_training(training)
    templates = [list(f.variables) for f in blocks[0].fields]
    stacks = [
        [tf.stack([b.fields[k].variables[j].value for b in blocks]) for j in range(len(vs))]
        for k, vs in enumerate(templates)
    ]
    trained = [[j for j, v in enumerate(vs) if v.trainable] for vs in templates]
    times = tf.stack([ops.convert_to_tensor(b.t) for b in blocks])
    steps = tf.constant([b.h for b in blocks], dtype=times.dtype)

    def backprop(k, t, h, x, upstream_grad, pos):
        """h·field_k(t, x) with block ``pos``'s weights, and its vector-Jacobian products."""
        values = [tf.gather(s, pos) for s in stacks[k]]
        weights = [values[j] for j in trained[k]]
        with keras.StatelessScope(state_mapping=list(zip(templates[k], values))):
            with tf.GradientTape() as tape:
                tape.watch(x)
                tape.watch(weights)
                y = h * fields[k](t, x)
        gx, *gw = tape.gradient(y, [x] + weights, output_gradients=upstream_grad)
        return y, gx, [tf.zeros_like(w) if g is None else g for w, g in zip(weights, gw)]

    def body(i, z1, z2, d1, d2, arrays_f, arrays_g):
        pos = n - 1 - i
        t, h = tf.gather(times, pos), tf.gather(steps, pos)
        g, gz1, gw = backprop(1, t + h, h, z1, d2, pos)
        d1 = d1 + gz1
        x2 = z2 - g
        f, gx2, fw = backprop(0, t, h, x2, d1, pos)
        d2 = d2 + gx2
        arrays_f = [a.write(pos, w) for a, w in zip(arrays_f, fw)]
        arrays_g = [a.write(pos, w) for a, w in zip(arrays_g, gw)]
        return i + 1, z1 - f, x2, d1, d2, arrays_f, arrays_g

    arrays = [
        [tf.TensorArray(stacks[k][j].dtype, size=n, element_shape=stacks[k][j].shape[1:]) for j in trained[k]]
        for k in range(2)
    ]
    *_, d1, d2, arrays_f, arrays_g = tf.while_loop(
        lambda i, *_: i < n, body, (tf.constant(0), *out, *upstream, *arrays), parallel_iterations=1
    )
    table = {}
    for k, arrays_k in ((0, arrays_f), (1, arrays_g)):
        for j, array in zip(trained[k], arrays_k):
            stacked = array.stack()
            for pos, b in enumerate(blocks):
                table[b.fields[k].variables[j].value.ref()] = stacked[pos]
    return (d1, d2), [table[v.ref()] if v.ref() in table else tf.zeros_like(v) for v in variables]
