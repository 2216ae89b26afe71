"""``gradient="checkpoint"``: exact gradients of the discrete adaptive solve, by checkpointed replay.

The forward solve (:func:`odezoo.ode.integrator.integrate` with ``checkpoint_stride``)
records every accepted step's start, size and end (scalars) and the state at the start of
every ``stride``-th accepted step, ``stride = ceil(sqrt(max_steps))``. The backward pass
takes the segments of ``stride`` steps from the last to the first: it replays a segment
from its checkpoint (keeping its states), then walks it backward, one vector-Jacobian
product of a whole step (its stages, and the dense output at any solution time inside it)
at a time. The gradient is that of the computation the forward pass did, to rounding:
the step sizes are constants of it (the controller's choices are not differentiated, as in
``"backprop"``), rejected attempts do not enter it.

Memory: the checkpoints and one segment's states, ``2·sqrt(max_steps)`` states at most
(fixed when the solve is compiled: XLA sizes its buffers statically), and the states of one
step's stages for its VJP; ``"backprop"`` keeps every stage of every attempted step
(``max_steps·s`` states under XLA). Cost: the forward solve, then per accepted step two
replays of it (one to rebuild the segment, one under the tape) and its VJP.
"""

from __future__ import annotations

import math

import tensorflow as tf

from odezoo.ode.integrator import attempt_implicit_step, attempt_step, dense_output, integrate
from odezoo.ode.status import OK, run_hook
from odezoo.ode.tableau import DOPRI5

_INFO_KEYS = ("reason", "nfe", "steps", "accepted", "t")


def checkpoint_stride(max_steps: int) -> int:
    """The number of accepted steps between checkpoints: ceil(sqrt(max_steps))."""
    return max(1, math.isqrt(int(max_steps) - 1) + 1)


@tf.autograph.experimental.do_not_convert
def checkpoint_solve(fn, t0, y0, times, constants, *, options, on_forward=None, on_backward=None):
    """:func:`integrate` under a checkpointed-replay custom gradient (arguments as
    :func:`odezoo.ode.adjoint.adjoint_solve`'s; ``adjoint_*`` options are ignored).

    Gradients reach ``y0``, the ``constants`` and the ``tf.Variable``s the field reads; a
    failed forward solve (non-OK reason) gives NaN gradients, never plausible numbers.
    """
    return recorded_solve(fn, t0, y0, times, constants, options=options, backward=_replay_backward,
                          on_forward=on_forward, on_backward=on_backward)  # fmt: skip


@tf.autograph.experimental.do_not_convert
def recorded_solve(fn, t0, y0, times, constants, *, options, backward, on_forward=None, on_backward=None):
    """:func:`integrate`, recording its accepted steps and checkpoints, under the custom gradient
    ``backward(fn, tableau, t0, times, record, info, dys, constants, variables, options, stride)``
    -> ``(g_y0, g_constants, g_variables, backward info)`` (this module's replay, or
    :mod:`odezoo.ode.interpolated`'s adjoint)."""
    ny = len(y0)
    options = {k: v for k, v in options.items() if not k.startswith("adjoint_")}
    stride = checkpoint_stride(options.get("max_steps", 10000))
    tableau = options.get("tableau", DOPRI5)
    times = tf.convert_to_tensor(times)

    @tf.custom_gradient
    def _solve(*args):
        ys, cs = list(args[:ny]), list(args[ny:])
        outputs, info = integrate(lambda t, y: fn(t, y, cs), t0, ys, times, checkpoint_stride=stride, **options)
        record = info.pop("record")
        with tf.control_dependencies(run_hook(on_forward, info)):
            outputs = [tf.identity(o) for o in outputs]
        info_flat = [info[k] for k in _INFO_KEYS]

        def grad_fn(*dys, variables=None):
            variables = list(variables or [])
            dys = [tf.zeros_like(o) if d is None else d for d, o in zip(dys[:ny], outputs)]
            grads_y, grads_c, grads_v, binfo = backward(
                fn, tableau, t0, times, record, info, dys, cs, variables, options, stride
            )
            with tf.control_dependencies(run_hook(on_backward, binfo)):
                grads_y = [tf.identity(g) for g in grads_y]
            return grads_y + grads_c, grads_v

        return outputs + info_flat, grad_fn

    res = _solve(*y0, *constants)
    return list(res[:ny]), dict(zip(_INFO_KEYS, res[ny:]))


def replay_step(tableau, call, t, h, y, k1, options):
    """One accepted step replayed as the forward solve took it, from ``k1`` = f(t, y):
    ``(y_new, ks, f_new, calls)``, ``calls`` the field evaluations it made.

    An implicit pair's stages are replayed by the same Newton iterations (the same count, as
    the inputs are the same), and differentiated through them with the step's Jacobian held
    constant, as the forward solve held it."""
    mask = options.get("norm_mask") or [True] * len(y)
    options = dict(rtol=options["rtol"], atol=options["atol"], mask=mask)
    if tableau.implicit:
        y_new, ks, f_new, _, _, _, calls = attempt_implicit_step(tableau, call, t, y, k1, h, **options)
        return y_new, ks, f_new, calls
    y_new, ks, f_new = attempt_step(tableau, call, t, y, k1, h, **options)[:3]
    return y_new, ks, f_new, tableau.evaluations_per_step


def _step(tableau, call, t, h, y, options):
    """:func:`replay_step` from ``y`` alone: ``(y_new, stages, f(t_new, y_new))``."""
    return replay_step(tableau, call, t, h, y, call(t, y), options)[:3]


@tf.autograph.experimental.do_not_convert
def _replay_backward(fn, tableau, t0, times, record, info, dys, consts, variables, options, stride):
    """Walk the accepted steps backward, segment by segment; ``(g_y0, g_c, g_v, info)``."""
    ny = len(dys)
    dtype = dys[0].dtype
    n_times = times.shape[0]
    times = tf.cast(times, dtype)
    n = info["accepted"]
    calls = []

    def call(t, y, cs=consts):
        calls.append(None)  # counted once per traced call site: field evaluations per replayed step
        return [tf.cast(tf.convert_to_tensor(o), dtype) for o in fn(t, y, cs)]

    ts, hs, ends, ids = record["t"], record["h"], record["t_new"], record["idx"]
    ckpts = record["checkpoints"]
    first_idx = tf.concat([[record["idx0"]], ids], 0)  # step k fills solution times [first_idx[k], ids[k])
    index = tf.range(n_times)

    def forward(k, y):
        y_new, _, _ = _step(tableau, call, ts[k], hs[k], y, options)
        return y_new

    per_replay = []  # field calls in the taped replay of a step (the rest of `calls`: the rebuild's)

    def vjp(k, y, a, g_c, g_v):
        """The cotangent of y_k from that of y_{k+1} and of the solution times inside step k."""
        inside = tf.logical_and(index >= first_idx[k], index < ids[k])
        with tf.GradientTape() as tape:
            tape.watch(y)
            tape.watch(consts)
            for v in variables:
                tape.watch(v)
            start = len(calls)
            y_new, ks, f_new = _step(tableau, call, ts[k], hs[k], y, options)
            per_replay.append(len(calls) - start)
            total = tf.add_n([tf.reduce_sum(ai * yi) for ai, yi in zip(a, y_new)])
            # the solution times inside this step: the dense output at all of them at once, masked
            shape = [n_times] + [1] * y[0].shape.rank
            t_i = tf.reshape(times, shape)
            vals = dense_output(tableau, ts[k], hs[k], y, y_new, ks, t_i, ends[k], f_new)
            for d, v in zip(dys, vals):
                weight = tf.reshape(tf.cast(inside, dtype), shape)
                total += tf.reduce_sum(weight * d * tf.broadcast_to(v, tf.shape(d)))
        grads = tape.gradient(
            total, list(y) + list(consts) + list(variables), unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        grads = [tf.convert_to_tensor(g) for g in grads]
        g_y, rest = grads[:ny], grads[ny:]
        return (
            g_y,
            [a_ + b_ for a_, b_ in zip(g_c, rest[: len(consts)])],
            [a_ + b_ for a_, b_ in zip(g_v, rest[len(consts) :])],
        )

    segment_states = [tf.TensorArray(d.dtype, size=stride, element_shape=d.shape[1:]) for d in dys]

    def segment(j, a, g_c, g_v):
        lo = j * stride
        hi = tf.minimum(lo + stride, n)

        def rebuild(k, y, tas):
            tas = [ta.write(k - lo, yi) for ta, yi in zip(tas, y)]
            return k + 1, forward(k, y), tas

        _, _, tas = tf.while_loop(
            lambda k, y, tas: k < hi, rebuild, (lo, [c[j] for c in ckpts], segment_states), maximum_iterations=stride
        )

        def back(k, a, g_c, g_v):
            y = [ta.read(k - lo) for ta in tas]
            a, g_c, g_v = vjp(k, y, a, g_c, g_v)
            return k - 1, a, g_c, g_v

        _, a, g_c, g_v = tf.while_loop(lambda k, *_: k >= lo, back, (hi - 1, a, g_c, g_v), maximum_iterations=stride)
        return j - 1, a, g_c, g_v

    a0 = [tf.zeros(d.shape[1:], dtype) for d in dys]
    g_c0 = [tf.zeros_like(c) for c in consts]
    g_v0 = [tf.zeros(v.shape, dtype) for v in variables]
    segments = (n + stride - 1) // stride
    max_segments = ckpts[0].shape[0] - 1
    _, a, g_c, g_v = tf.while_loop(
        lambda j, *_: j >= 0, segment, (segments - 1, a0, g_c0, g_v0), maximum_iterations=max_segments
    )
    # solution times at t0 itself are y0
    at_start = tf.cast(index < record["idx0"], dtype)
    a = [ai + tf.reduce_sum(tf.reshape(at_start, [n_times] + [1] * ai.shape.rank) * d, 0) for ai, d in zip(a, dys)]
    failed = tf.not_equal(info["reason"], OK)

    def blank(g):
        return tf.where(failed, tf.cast(float("nan"), g.dtype), g)

    replay_calls = sum(per_replay) // max(len(per_replay), 1)
    rebuild_calls = len(calls) - sum(per_replay)
    nfe = n * (replay_calls + rebuild_calls)
    binfo = dict(nfe=nfe, reason=info["reason"], steps=n, t=tf.cast(t0, dtype))
    return [blank(g) for g in a], [blank(g) for g in g_c], [blank(g) for g in g_v], binfo


__all__ = ["checkpoint_solve", "checkpoint_stride", "recorded_solve", "replay_step"]
