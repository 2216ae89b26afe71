"""RevNet's memory-saving stage gradient on Keras's JAX backend (a ``jax.custom_vjp``).

``Reversible.run_stage`` dispatches here when training under JAX. The whole
stage is one ``jax.custom_vjp`` function whose residuals are only the stage
output and the fields' weights, never the activations: the backward pass
reconstructs each block's input from its output with the exact inverse
(y2 = y2' − h·G(y1'), y1 = y1' − h·F(y2)) and re-runs that block's fields under
``jax.vjp`` to get its gradients, as the TensorFlow form does with
``tf.custom_gradient``.

Two things differ from TensorFlow and shape the code:

* A ``custom_vjp`` function cannot differentiate values it closes over, so
  the fields' weights are its explicit arguments, and each field runs on them
  statelessly (``keras.StatelessScope``), never on the variables it owns.
* Keras-JAX layer state is functional: the trainer runs the model in a
  ``StatelessScope`` and collects what was assigned to the non-trainable
  variables (BatchNorm's moving statistics). The stage function therefore
  also takes the fields' non-trainable values and returns their updated
  values from the forward pass, which this module assigns back to the
  variables once; the backward pass's re-runs start from the same values and
  their updates are discarded, so a batch is counted once.

The backward pass is one ``jax.lax.scan`` over the blocks (their weights
stacked, run through the first block's fields) when all blocks of the stage
share their fields' structure, as the families' do. Unrolled, XLA's schedule
kept memory growing with depth even with the reconstruction ordered by an
``optimization_barrier``; the scan keeps it flat (benchmarks/jax_revnet_memory.py).
Stages with mixed fields fall back to the unrolled form.

This module imports JAX, so it is imported only under that backend.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import keras

# Read variables at their stored dtype: under a mixed-precision policy the
# caller's autocast scope would otherwise hand float16 copies of float32 weights
# to the stage function.
from keras.src.backend import AutocastScope


def reversible_stage(blocks, state, training):
    """Run a stage of reversible ``SchemeBlock`` s on ``state = (y1, y2)`` under one custom VJP."""
    layers = [field for b in blocks for field in b.fields[:2]]  # F0, G0, F1, G1, ...
    with AutocastScope(None):
        weights = [[v.value for v in layer.trainable_variables] for layer in layers]
        stats = [[v.value for v in layer.non_trainable_variables] for layer in layers]
    stage = stage_function(blocks, training)
    out, new_stats = stage(weights, stats, *state)
    for layer, values in zip(layers, new_stats):
        for variable, value in zip(layer.non_trainable_variables, values):
            variable.assign(value)
    return out


def stage_function(blocks, training, *, memory_saving=True):
    """``stage(weights, stats, y1, y2) -> ((y1', y2'), new_stats)`` for ``blocks``.

    ``weights[i]`` / ``stats[i]`` are the trainable / non-trainable values of
    field i (the order of ``[b.fields[0], b.fields[1] for b in blocks]``). With
    ``memory_saving=False`` it is the plain function JAX differentiates by
    itself (what tests compare the custom gradient with).
    """
    steps = [(float(b.h), b.t, b.fields[0], b.fields[1]) for b in blocks]

    def apply(layer, w, s, t, y):
        mapping = list(zip(layer.trainable_variables, w)) + list(zip(layer.non_trainable_variables, s))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            out = layer(t, y, training=training)
        return out, [scope.get_current_value(v) for v in layer.non_trainable_variables]

    def forward(weights, stats, y1, y2):
        new_stats = []
        for i, (h, t, F, G) in enumerate(steps):
            f, sf = apply(F, weights[2 * i], stats[2 * i], t, y2)
            y1 = y1 + h * f
            g, sg = apply(G, weights[2 * i + 1], stats[2 * i + 1], t + h, y1)
            y2 = y2 + h * g
            new_stats += [sf, sg]
        return (y1, y2), new_stats

    if not memory_saving:
        return forward

    @jax.custom_vjp
    def stage(weights, stats, y1, y2):
        return forward(weights, stats, y1, y2)

    def stage_fwd(weights, stats, y1, y2):
        out, new_stats = forward(weights, stats, y1, y2)
        return (out, new_stats), (weights, stats, out)

    def block_backward(F, G, wf, wg, sf, sg, t, h, carry):
        """Rebuild one block's input from its output and backpropagate through it."""
        z1, z2, d1, d2 = carry
        # y2' = y2 + h·G(t + h, y1')
        g, g_vjp = jax.vjp(lambda y, w: h * apply(G, w, sg, t + h, y)[0], z1, wg)
        g_y1, grad_g = g_vjp(d2)
        d1 = d1 + g_y1
        x2 = z2 - g
        # y1' = y1 + h·F(t, y2)
        f, f_vjp = jax.vjp(lambda y, w: h * apply(F, w, sf, t, y)[0], x2, wf)
        f_y2, grad_f = f_vjp(d1)
        return (z1 - f, x2, d1, d2 + f_y2), grad_f, grad_g

    def stage_bwd(residuals, cotangents):
        weights, stats, out = residuals
        (d1, d2), _ = cotangents  # the statistics' cotangents: they feed no loss
        carry = (*out, d1, d2)
        n = len(steps)
        if _uniform(blocks):
            # One lax.scan over the blocks, top to bottom, with the blocks' weights stacked
            # and run through the first block's fields. Written as straight-line code, XLA
            # keeps memory growing with depth (measured: benchmarks/jax_revnet_memory.py);
            # a loop holds one iteration's tensors at a time.
            def stacked(values, k):  # field k (0: F, 1: G) of every block, per variable
                return [jnp.stack([values[2 * i + k][j] for i in range(n)]) for j in range(len(values[k]))]

            wf, wg, sf, sg = stacked(weights, 0), stacked(weights, 1), stacked(stats, 0), stacked(stats, 1)
            times = jnp.stack([jnp.asarray(t) for _, t, _, _ in steps])
            sizes = jnp.asarray([h for h, _, _, _ in steps], dtype=times.dtype)
            F, G = steps[0][2], steps[0][3]

            def body(carry, xs):
                wf_i, wg_i, sf_i, sg_i, t, h = xs
                carry, grad_f, grad_g = block_backward(F, G, wf_i, wg_i, sf_i, sg_i, t, h, carry)
                return carry, (grad_f, grad_g)

            carry, (gf, gg) = jax.lax.scan(body, carry, (wf, wg, sf, sg, times, sizes), reverse=True)
            grads = []
            for i in range(n):
                grads += [[g[i] for g in gf], [g[i] for g in gg]]
        else:
            grads = [None] * len(weights)
            for i in reversed(range(n)):
                h, t, F, G = steps[i]
                # Rebuild a block only once the gradient of the block above exists: the
                # barrier ties the two, so XLA cannot rebuild the stage ahead of the chain.
                carry = jax.lax.optimization_barrier(carry)
                carry, grads[2 * i], grads[2 * i + 1] = block_backward(
                    F, G, weights[2 * i], weights[2 * i + 1], stats[2 * i], stats[2 * i + 1], t, h, carry
                )
        _, _, d1, d2 = carry
        return grads, jax.tree_util.tree_map(_zero_cotangent, stats), d1, d2

    stage.defvjp(stage_fwd, stage_bwd)
    return stage


def _uniform(blocks):
    """True when every block's F (and every G) matches the first block's: class, config, variables."""

    def signature(field):
        config = {k: v for k, v in field.get_config().items() if k != "name"}
        return (
            type(field),
            repr(sorted(config.items())),
            [(tuple(v.shape), str(v.dtype), v.trainable) for v in field.variables],
        )

    try:
        first = [signature(f) for f in blocks[0].fields[:2]]
        return all([signature(f) for f in b.fields[:2]] == first for b in blocks[1:])
    except NotImplementedError:  # a field without get_config: run the blocks one by one
        return False


def _zero_cotangent(x):
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return jnp.zeros(x.shape, dtype=jax.dtypes.float0)  # integer state (a seed) has no tangent
