"""``gradient="checkpoint"``: exact gradients of the discrete adaptive solve, by checkpointed replay.

The forward solve (:func:`odezoo.ode.integrator.integrate` with ``checkpoint_stride``)
records every accepted step's start, size and end (scalars), the state at the start of
every ``stride``-th accepted step, ``stride = ceil(sqrt(max_steps))``, and a ring of the
last ``stride`` states. The backward pass takes the segments of ``stride`` steps from the
last to the first: the last one's states are the ring's, an earlier one's are rebuilt from
its checkpoint; it then walks the segment backward, one vector-Jacobian product of a whole
step (its stages, and the dense output at any solution time strictly inside it) at a time.
The gradient is that of the computation the forward pass did, to rounding: the step sizes
are constants of it (the controller's choices are not differentiated, as in
``"backprop"``), rejected attempts do not enter it.

Memory: the checkpoints and one segment's states (the ring), ``2·sqrt(max_steps)`` states
at most (fixed when the solve is compiled: XLA sizes its buffers statically), and the
states of one step's stages for its VJP; ``"backprop"`` keeps every stage of every
attempted step (``max_steps·s`` states under XLA). Cost: the forward solve, then per
accepted step one replay under the tape (an explicit pair's stages, without its error
estimate or, unless a solution time lies inside, its last FSAL stage) and its VJP, and for
a solve longer than ``stride`` steps one more replay of the earlier segments' steps.
"""

from __future__ import annotations

import math

import tensorflow as tf

from odezoo.ode.integrator import attempt_implicit_step, attempt_step, dense_output, integrate, lincomb
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
        record = dict(info.pop("record"), y0=ys)
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
    """One accepted step replayed as the forward solve took it, from its first stage ``k1`` (f(t, y);
    an implicit pair's, the one the forward solve carried in): ``(y_new, ks, f_new, calls)``,
    ``calls`` the field evaluations it made.

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


def explicit_stages(tableau, call, t, h, y, k1):
    """An explicit pair's step from ``k1`` = f(t, y), without what only its error estimate and
    dense output use (an FSAL pair's last stage, f at the new point): ``(y_new, ks)``."""
    ks = [k1]
    for i in range(1, tableau.stages - int(tableau.fsal)):
        ks.append(call(t + tableau.c[i] * h, lincomb(y, h, tableau.a[i], ks)))
    return lincomb(y, h, tableau.b, ks), ks  # an FSAL pair's last weight is 0


@tf.autograph.experimental.do_not_convert
def _replay_backward(fn, tableau, t0, times, record, info, dys, consts, variables, options, stride):
    """Walk the accepted steps backward, segment by segment; ``(g_y0, g_c, g_v, info)``.

    The last segment's states are the forward solve's ring of recent states; an earlier one is
    rebuilt from its checkpoint. Each step is then replayed under a tape from its state (its
    stages, and f at its end only where a solution time lies strictly inside it, for the dense
    output) and its vector-Jacobian product taken. An implicit pair's step also starts from the
    first stage the forward solve carried into it (the last step's (Y - known)/(hγ), which is not
    f(t, y)); its cotangent is carried backward beside y's, and at t0 it goes through f(t0, y0).
    """
    ny = len(dys)
    implicit = tableau.implicit
    dtype = dys[0].dtype
    n_times = times.shape[0]
    times = tf.cast(times, dtype)
    n = info["accepted"]

    def call(t, y, cs=consts):
        return [tf.cast(tf.convert_to_tensor(o), dtype) for o in fn(t, y, cs)]

    ts, hs, ends, ids = record["t"], record["h"], record["t_new"], record["idx"]
    ckpts = record["checkpoints"]
    first_idx = tf.concat([[record["idx0"]], ids], 0)  # step k fills solution times [first_idx[k], ids[k])
    index = tf.range(n_times)

    def forward(k, y, f):
        """Step k again from y and its first stage f: ``(y_{k+1}, its first stage, calls)``."""
        if implicit:
            y_new, _, f_new, calls = replay_step(tableau, call, ts[k], hs[k], y, f, options)
            return y_new, f_new, calls
        y_new, _ = explicit_stages(tableau, call, ts[k], hs[k], y, f)
        return y_new, call(ts[k] + hs[k], y_new), tableau.stages - int(tableau.fsal)

    def vjp(k, kept, adj, g_c, g_v):
        """The cotangents of step k's start (y_k, and an implicit pair's first stage) from those of its
        end and of the solution times it reached."""
        y, k1_kept = kept[:ny], kept[ny:]
        reached = tf.logical_and(index >= first_idx[k], index < ids[k])
        at_end = tf.logical_and(reached, tf.equal(times, ends[k]))  # the value there is y_{k+1} itself
        inside = tf.logical_and(reached, tf.logical_not(at_end))
        a = [ai + _masked_sum(at_end, d) for ai, d in zip(adj[:ny], dys)]
        t, h = ts[k], hs[k]
        with tf.GradientTape() as tape:
            tape.watch(kept)
            tape.watch(consts)
            for v in variables:
                tape.watch(v)
            if implicit:  # its steps end on the solution times: nothing strictly inside
                y_new, _, f_new, calls = replay_step(tableau, call, t, h, y, k1_kept, options)
                total = _dot(a, y_new) + _dot(adj[ny:], f_new)
            else:
                y_new, ks = explicit_stages(tableau, call, t, h, y, call(t, y))
                calls = tableau.stages - int(tableau.fsal)

                def dense():  # the solution times strictly inside the step, all at once, masked
                    f_new = call(t + h, y_new)
                    stages = ks + [f_new] * tableau.fsal
                    terms = []
                    for i, d in enumerate(dys):  # each component with the times shaped for its rank
                        t_i = tf.reshape(times, [n_times] + [1] * y[i].shape.rank)
                        (v,) = dense_output(tableau, t, h, [y[i]], [y_new[i]], [[s[i]] for s in stages], t_i,
                                            ends[k], [f_new[i]])  # fmt: skip
                        terms.append(_dot([_masked(inside, d)], [tf.broadcast_to(v, tf.shape(d))]))
                    return tf.add_n(terms)

                needed = tf.reduce_any(inside)
                total = _dot(a, y_new) + tf.cond(needed, dense, lambda: tf.zeros([], dtype))
                calls += tf.cast(needed, tf.int32)
        grads = tape.gradient(
            total, list(kept) + list(consts) + list(variables), unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        grads = [tf.convert_to_tensor(g) for g in grads]
        g_kept, rest = grads[: len(kept)], grads[len(kept) :]
        return (
            g_kept,
            [a_ + b_ for a_, b_ in zip(g_c, rest[: len(consts)])],
            [a_ + b_ for a_, b_ in zip(g_v, rest[len(consts) :])],
            calls,
        )

    segments = (n + stride - 1) // stride

    def segment(j, adj, g_c, g_v, tas, nfe):
        lo = j * stride
        hi = tf.minimum(lo + stride, n)
        rebuilt = j < segments - 1  # the last segment's states are the forward's ring

        def rebuild(k, y, f, tas, nfe):
            tas = [ta.write(k - lo, v) for ta, v in zip(tas, y + (f if implicit else []))]
            y, f, calls = forward(k, y, f)
            return k + 1, y, f, tas, nfe + calls

        y_lo = [c[j] for c in ckpts[:ny]]
        if implicit:
            f_lo = [c[j] for c in ckpts[ny:]]
        else:
            f_lo = tf.cond(rebuilt, lambda: call(ts[lo], y_lo), lambda: [tf.zeros_like(v) for v in y_lo])
        _, _, _, tas, nfe = tf.while_loop(
            lambda k, *_: tf.logical_and(rebuilt, k < hi),
            rebuild,
            (lo, y_lo, f_lo, tas, nfe + tf.cast(tf.logical_and(rebuilt, not implicit), tf.int32)),
            maximum_iterations=stride,
        )

        def back(k, adj, g_c, g_v, nfe):
            adj, g_c, g_v, calls = vjp(k, [ta.read(k - lo) for ta in tas], adj, g_c, g_v)
            return k - 1, adj, g_c, g_v, nfe + calls

        _, adj, g_c, g_v, nfe = tf.while_loop(
            lambda k, *_: k >= lo, back, (hi - 1, adj, g_c, g_v, nfe), maximum_iterations=stride
        )
        return j - 1, adj, g_c, g_v, tas, nfe

    adj0 = [tf.zeros_like(d[0]) for d in dys] * (2 if implicit else 1)  # y's cotangent (and the first stage's)
    g_c0 = [tf.zeros_like(c) for c in consts]
    g_v0 = [tf.zeros(v.shape, dtype) for v in variables]
    ring = [tf.TensorArray(r.dtype, size=stride, element_shape=r.shape[1:]).unstack(r) for r in record["recent"]]
    max_segments = ckpts[0].shape[0] - 1
    _, adj, g_c, g_v, _, nfe = tf.while_loop(
        lambda j, *_: j >= 0,
        segment,
        (segments - 1, adj0, g_c0, g_v0, ring, tf.constant(0, tf.int32)),
        maximum_iterations=max_segments,
    )
    a = adj[:ny]
    if implicit:  # the first step's first stage is f(t0, y0)
        y0 = record["y0"]
        with tf.GradientTape() as tape:
            tape.watch(y0)
            tape.watch(consts)
            for v in variables:
                tape.watch(v)
            f0 = call(tf.cast(t0, dtype), y0)
        grads = tape.gradient(f0, list(y0) + list(consts) + list(variables), output_gradients=adj[ny:],
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)  # fmt: skip
        grads = [tf.convert_to_tensor(g) for g in grads]
        a = [ai + g for ai, g in zip(a, grads[:ny])]
        g_c = [x + g for x, g in zip(g_c, grads[ny : ny + len(consts)])]
        g_v = [x + g for x, g in zip(g_v, grads[ny + len(consts) :])]
        nfe += 1
    # solution times at t0 itself are y0
    a = [ai + _masked_sum(index < record["idx0"], d) for ai, d in zip(a, dys)]
    failed = tf.not_equal(info["reason"], OK)

    def blank(g):
        return tf.where(failed, tf.cast(float("nan"), g.dtype), g)

    binfo = dict(nfe=nfe, reason=info["reason"], steps=n, t=tf.cast(t0, dtype))
    return [blank(g) for g in a], [blank(g) for g in g_c], [blank(g) for g in g_v], binfo


def _masked(mask, d):
    """``d`` (times, ...) with the times where ``mask`` is False zeroed."""
    return tf.reshape(tf.cast(mask, d.dtype), [-1] + [1] * (d.shape.rank - 1)) * d


def _masked_sum(mask, d):
    """The sum over the times where ``mask`` holds of ``d`` (times, ...)."""
    return tf.reduce_sum(_masked(mask, d), 0)


def _dot(a, b):
    return tf.add_n([tf.reduce_sum(x * y) for x, y in zip(a, b)])


__all__ = ["checkpoint_solve", "checkpoint_stride", "recorded_solve", "replay_step"]
