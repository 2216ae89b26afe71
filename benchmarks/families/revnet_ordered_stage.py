"""Probe for the RevNet memory finding: the stage gradient with every block's
reconstruction ordered after that block's upstream gradient.

Not part of odezoo. ``memory.py --patch revnet_ordered_stage`` imports this
module in each fresh process; ``apply()`` replaces
``odezoo.plugins.reversible._tf_reversible_stage`` with the version below so
the same benchmark measures it (a copy of the shipped function with only the
ordering changed). ``revnet_ordered_stage.patch`` is the
proposed core change (the data-dependency variant) as a diff against
plugins/reversible.py (not applied). Results: benchmarks/README.md.

What changes: the shipped grad() orders only the FIRST reconstruction (the
stage output) after the upstream gradient (d1, d2). Every later block's
recomputation depends only on that first one, so the executor is free to
rebuild the whole stage as soon as the stage's gradient arrives, running
ahead of the (slower) backward chain and keeping every block's recomputed
activations alive until their gradients are taken: memory O(depth) again.
Here each block's reconstruction waits for the running gradient (d1, d2) of
the block above (see ``_after`` for the two ways measured). Under XLA only a
data dependency works: control dependencies between pure ops are dropped and
an optimization barrier did not change the compiled temp buffer.
"""

import os

import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla
from tensorflow.python.ops import control_flow_util


def _after(tensors, deps):
    """``tensors``, made to be computed only once ``deps`` exist.

    REVNET_ORDER=data (default, the proposed fix): a true data dependency,
    t + 0·Σ d[..., :1, :1, :1]; it holds in graph mode and under XLA alike.
    REVNET_ORDER=control: a control dependency in graph mode, an XLA
    optimization barrier under jit_compile (measured: fixes graph mode only).
    """
    if os.environ.get("REVNET_ORDER", "data") == "data":
        zero = tf.add_n([tf.reduce_sum(d[..., :1, :1, :1]) for d in deps]) * 0.0
        return [t + zero for t in tensors]
    if control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
        out = xla.optimization_barrier(*deps, *tensors)
        return list(out[len(deps):])
    with tf.control_dependencies(deps):
        return [tf.identity(t) for t in tensors]


def _tf_reversible_stage(blocks, state, training):
    from odezoo.plugins import reversible as rev

    def forward(y1, y2):
        for b in blocks:
            y1, y2 = b.scheme.step(b.fields_for_training(training), b.t, (y1, y2), b.h)
        return (y1, y2)

    @tf.custom_gradient
    def stage(y1, y2):
        out1, out2 = forward(y1, y2)

        def grad(d1, d2, variables=None):
            z1, z2 = out1, out2
            var_grads = {}
            with rev._frozen_batchnorm_statistics(blocks):
                for b in reversed(blocks):
                    # Rebuild this block only once the gradient above it exists.
                    z1, z2 = _after([z1, z2], [d1, d2])
                    F, G = b.fields_for_training(training)
                    h, t = b.h, b.t
                    w_g = [v.value for v in b.fields[1].trainable_variables]
                    w_f = [v.value for v in b.fields[0].trainable_variables]
                    with tf.GradientTape() as tape:
                        tape.watch(z1)
                        g = h * G(t + h, z1)
                    gz1, *gw = tape.gradient(g, [z1] + w_g, output_gradients=d2)
                    rev._accumulate(var_grads, w_g, gw)
                    d1 = d1 + gz1
                    x2 = z2 - g
                    with tf.GradientTape() as tape:
                        tape.watch(x2)
                        f = h * F(t, x2)
                    gx2, *fw = tape.gradient(f, [x2] + w_f, output_gradients=d1)
                    rev._accumulate(var_grads, w_f, fw)
                    d2 = d2 + gx2
                    z1, z2 = z1 - f, x2
            variables = variables or []
            return (d1, d2), [var_grads[v.ref()] if v.ref() in var_grads else tf.zeros_like(v)
                              for v in variables]

        return (out1, out2), grad

    return stage(*state)


def apply():
    from odezoo.plugins import reversible as rev
    rev._tf_reversible_stage = _tf_reversible_stage
