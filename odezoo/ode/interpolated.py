"""The continuous adjoint with y interpolated from the forward solve: the adjoint of the implicit pairs.

The backsolve adjoint (:mod:`odezoo.ode.adjoint`) integrates y backward beside the adjoint
a. Backward in time a dissipative stiff field is violently unstable (y' = -1000 y grows as
e^{1000 t} in reverse), so for the problems an implicit pair is chosen for, that y is
garbage (its drift guard fails the gradient, status 6). The adjoint equation itself,
a' = -a·∂f/∂y, is stable backward exactly where y is stable forward. So here y is not
integrated backward at all: it is read off the forward solve, and only a and the parameter
integrals ∫a·∂f/∂θ are (Hindmarsh et al.'s CVODES, and SciMLSensitivity's
``InterpolatingAdjoint``, do the same; Kim et al., "Stiff neural ordinary differential
equations", Chaos 31, 2021, on why training stiff Neural ODEs needs it).

How y is read: the forward solve records its accepted steps and a checkpoint every
``stride = ceil(sqrt(max_steps))`` of them (as ``gradient="checkpoint"`` does). The
backward pass takes the segments from the last to the first, replays one from its
checkpoint (from the first stage the forward solve carried into it) to get y_k and the pair's
slope f_k at its step ends, and walks its steps backward: in step k, y(t) is the cubic Hermite
interpolant of (y_k, f_k, y_{k+1}, f_{k+1}) (fourth order in the forward step; not the quintic
with y'' at the ends: on a stiff field a computed state's small error δ off the slow solution
comes back from f(t, y) as J·δ and from y'' as J²·δ, J the stiffness, and Robertson's
sensitivities through kvaerno5 were 8e-2 off with it, 1e-6 with the cubic on the pair's slopes
(Y - known)/(hγ)), and (a, ∫) are integrated adaptively with the same pair from
t_{k+1} to t_k, stopping at each solution time inside to add its cotangent. The backward
solves are integrated with error control on a only (the seminorm), their first step the
forward step's length. Memory: as the checkpoint gradient's (the checkpoints and one
segment's step ends).
"""

from __future__ import annotations

import tensorflow as tf

from odezoo.ode.checkpoint import recorded_solve, replay_step
from odezoo.ode.integrator import integrate
from odezoo.ode.newton import jacobian
from odezoo.ode.status import OK


def hermite(t0, t1, y0, f0, y1, f1, t, d0=None, d1=None):
    """The Hermite interpolant through (t0, y0) and (t1, y1) at ``t`` (lists of components): cubic with
    the slopes f0, f1; quintic (error O(h^6)) when the second derivatives d0, d1 are given too."""
    h = t1 - t0
    s = (t - t0) / h
    if d0 is None:
        h00 = (1.0 + 2.0 * s) * (1.0 - s) ** 2
        h10 = s * (1.0 - s) ** 2
        h01 = s**2 * (3.0 - 2.0 * s)
        h11 = s**2 * (s - 1.0)
        return [h00 * a + h01 * b + h * (h10 * fa + h11 * fb) for a, fa, b, fb in zip(y0, f0, y1, f1)]
    s3 = s**3
    w_y0 = 1.0 - s3 * (10.0 - 15.0 * s + 6.0 * s**2)
    w_f0 = s - s3 * (6.0 - 8.0 * s + 3.0 * s**2)
    w_d0 = 0.5 * s**2 * (1.0 - s) ** 3
    w_d1 = 0.5 * s3 * (1.0 - s) ** 2
    w_f1 = -s3 * (4.0 - 7.0 * s + 3.0 * s**2)
    w_y1 = 1.0 - w_y0
    return [w_y0 * a + w_y1 * b + h * (w_f0 * fa + w_f1 * fb) + h * h * (w_d0 * da + w_d1 * db)
            for a, fa, da, b, fb, db in zip(y0, f0, d0, y1, f1, d1)]  # fmt: skip


@tf.autograph.experimental.do_not_convert
def interpolated_adjoint_solve(fn, t0, y0, times, constants, *, options, rtol, atol, on_forward=None,
                               on_backward=None):  # fmt: skip
    """:func:`~odezoo.ode.integrator.integrate` under the interpolated continuous adjoint.

    Arguments as :func:`odezoo.ode.adjoint.adjoint_solve`'s (which calls this for an implicit
    pair, ``options["tableau"]``, the only kind it serves), but the backward solves' tolerances
    ``rtol`` and ``atol`` given resolved; ``adjoint_*`` options have no use here.
    """

    def backward(fn, tableau, t0, times, record, info, dys, consts, variables, solve_options, stride):
        return _interpolated_backward(fn, tableau, t0, times, record, info, dys, consts, variables,
                                      dict(solve_options, rtol=rtol, atol=atol), stride)  # fmt: skip

    return recorded_solve(fn, t0, y0, times, constants, options=options, backward=backward, on_forward=on_forward,
                          on_backward=on_backward)  # fmt: skip


@tf.autograph.experimental.do_not_convert
def _interpolated_backward(fn, tableau, t0, times, record, info, dys, consts, variables, options, stride):
    """Walk the accepted steps backward, integrating (a, ∫a·∂f/∂c, ∫a·∂f/∂θ); ``(g_y0, g_c, g_v, info)``."""
    ny, nc = len(dys), len(consts)
    dtype = dys[0].dtype
    n_times = times.shape[0]
    times = tf.cast(times, dtype)
    n = info["accepted"]
    ts, hs, ends, ids = record["t"], record["h"], record["t_new"], record["idx"]
    ckpts = record["checkpoints"]
    first_idx = tf.concat([[record["idx0"]], ids], 0)  # step k fills solution times [first_idx[k], ids[k])
    solve_options = {k: v for k, v in options.items() if k in ("controller", "max_steps", "tableau")}
    mask = [True] * ny + [False] * (nc + len(variables))

    def call(t, y):
        return [tf.cast(tf.convert_to_tensor(o), dtype) for o in fn(t, y, consts)]

    def interpolant(k_interp, t):
        return hermite(*k_interp, t)

    def adjoint_field(t, state, k_interp):
        a = state[:ny]
        y = interpolant(k_interp, t)
        with tf.GradientTape() as tape:
            tape.watch(y)
            tape.watch(consts)
            for v in variables:
                tape.watch(v)
            fy = call(t, y)
        vjps = tape.gradient(fy, y + list(consts) + list(variables), output_gradients=a,
                             unconnected_gradients=tf.UnconnectedGradients.ZERO)  # fmt: skip
        return [-tf.convert_to_tensor(g) for g in vjps]

    def backward_solve(k_interp, tau, target, state, first_step):
        """(a, ∫) from ``tau`` back to ``target`` (nothing when they are equal): ``(state, nfe, reason)``."""

        def field(t, s):
            return adjoint_field(t, s, k_interp)

        field.jacobian = adjoint_jacobian(call, lambda t: interpolant(k_interp, t))

        def run():
            outs, binfo = integrate(field, tau, state, tf.reshape(target, [1]), rtol=options["rtol"],
                                    atol=options["atol"], first_step=first_step, norm_mask=mask,
                                    **solve_options)  # fmt: skip
            return [o[0] for o in outs], binfo["nfe"], binfo["reason"]

        def skip():
            return list(state), tf.constant(0, tf.int32), tf.constant(OK, tf.int32)

        return tf.cond(tf.equal(tau, target), skip, run)

    index = tf.range(n_times)
    seg_y = [tf.TensorArray(d.dtype, size=stride + 1, element_shape=d.shape[1:]) for d in dys]
    seg_f = [tf.TensorArray(d.dtype, size=stride + 1, element_shape=d.shape[1:]) for d in dys]

    def segment(j, state, nfe, reason):
        lo = j * stride
        hi = tf.minimum(lo + stride, n)

        def rebuild(k, y, f, tas_y, tas_f, calls):
            tas_y = [ta.write(k - lo, yi) for ta, yi in zip(tas_y, y)]
            tas_f = [ta.write(k - lo, fi) for ta, fi in zip(tas_f, f)]
            y_new, _, f_new, step_calls = replay_step(tableau, call, ts[k], hs[k], y, f, options)
            return k + 1, y_new, f_new, tas_y, tas_f, calls + step_calls

        # an implicit pair's checkpoint: the state, and the first stage the forward solve carried into the step
        y_lo, f_lo = [c[j] for c in ckpts[:ny]], [c[j] for c in ckpts[ny:]]
        _, y_hi, f_hi, tas_y, tas_f, segment_nfe = tf.while_loop(
            lambda k, *_: k < hi,
            rebuild,
            (lo, y_lo, f_lo, seg_y, seg_f, tf.constant(0, tf.int32)),
            maximum_iterations=stride,
        )
        tas_y = [ta.write(hi - lo, yi) for ta, yi in zip(tas_y, y_hi)]
        tas_f = [ta.write(hi - lo, fi) for ta, fi in zip(tas_f, f_hi)]

        def step_back(k, state, nfe, reason):
            ends_k = ([ta.read(k - lo + e) for ta in tas] for e in (0, 1) for tas in (tas_y, tas_f))
            k_interp = (ts[k], ends[k], *ends_k)  # t_k, t_{k+1}, y_k, f_k, y_{k+1}, f_{k+1}
            first_step = tf.abs(ends[k] - ts[k])

            def sub(i, tau, state, nfe, reason):
                inside = i >= first_idx[k]
                target = tf.where(inside, times[tf.maximum(i, 0)], ts[k])
                state, calls, why = backward_solve(k_interp, tau, target, state, first_step)
                kick = tf.cast(inside, dtype)
                a = [s + kick * tf.gather(d, tf.maximum(i, 0)) for s, d in zip(state[:ny], dys)]
                return i - 1, target, a + state[ny:], nfe + calls, why

            _, _, state, nfe, reason = tf.while_loop(
                lambda i, tau, state, nfe, reason: tf.logical_and(i >= first_idx[k] - 1, tf.equal(reason, OK)),
                sub,
                (ids[k] - 1, ends[k], state, nfe, reason),
                maximum_iterations=n_times + 1,
            )
            return k - 1, state, nfe, reason

        _, state, nfe, reason = tf.while_loop(
            lambda k, state, nfe, reason: tf.logical_and(k >= lo, tf.equal(reason, OK)),
            step_back,
            (hi - 1, state, nfe + segment_nfe, reason),
            maximum_iterations=stride,
        )
        return j - 1, state, nfe, reason

    state0 = [tf.zeros_like(d[0]) for d in dys]
    state0 += [tf.zeros_like(c) for c in consts] + [tf.zeros(v.shape, dtype) for v in variables]
    segments = (n + stride - 1) // stride
    max_segments = ckpts[0].shape[0] - 1
    _, state, nfe, reason = tf.while_loop(
        lambda j, state, nfe, reason: tf.logical_and(j >= 0, tf.equal(reason, OK)),
        segment,
        (segments - 1, state0, tf.constant(0, tf.int32), tf.constant(OK, tf.int32)),
        maximum_iterations=max_segments,
    )
    a, g_c, g_v = state[:ny], state[ny : ny + nc], state[ny + nc :]
    # solution times at t0 itself are y0
    at_start = tf.cast(index < record["idx0"], dtype)
    a = [ai + tf.reduce_sum(tf.reshape(at_start, [n_times] + [1] * ai.shape.rank) * d, 0) for ai, d in zip(a, dys)]
    reason = tf.where(tf.equal(info["reason"], OK), reason, info["reason"])
    failed = tf.not_equal(reason, OK)  # a failed solve, forward or backward: NaN gradients

    def blank(g):
        return tf.where(failed, tf.cast(float("nan"), g.dtype), g)

    binfo = dict(nfe=nfe, reason=reason, steps=n, t=tf.cast(t0, dtype))
    return [blank(g) for g in a], [blank(g) for g in g_c], [blank(g) for g in g_v], binfo


def adjoint_jacobian(call, y_at):
    """The ``jacobian`` of an adjoint field a' = -a·∂f/∂y(t, y_at(t)) (:func:`odezoo.ode.newton.jacobian`'s
    hook): linear in a, its Jacobian over a is -(∂f/∂y)ᵀ, taken from f itself."""

    def jac(t, state, mask, kind):
        y = y_at(t)
        return -tf.linalg.matrix_transpose(jacobian(call, t, y, [True] * len(y), kind))

    return jac


__all__ = ["interpolated_adjoint_solve", "hermite", "adjoint_jacobian"]
