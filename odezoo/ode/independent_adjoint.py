"""``batch_mode="independent"`` with ``gradient="adjoint"``: each row's continuous adjoint on its own steps.

Every row b of the batch has its own steps t_{b,0} < t_{b,1} < ... (:mod:`odezoo.ode.independent`),
so a backward solve shared by the batch does not exist, and one adaptive backward solve per
row cannot accumulate the parameter integral ∫a·∂f/∂θ, a sum over the rows, without keeping
one copy of it per row. Here the adjoint equations

    a' = -a·∂f/∂y,   (∫)' = -a·∂f/∂θ,   integrated from t1 back to t0,

are integrated per row over the row's own accepted forward steps, backward, one step of the same
pair per forward step (the ESDIRK pairs' stages by per-row Newton), so every row's step is taken
and the parameter integral is one vector-Jacobian product of the whole batch per stage, summed
over the rows. The forward steps were sized by the error control on y; the adjoint has the same
Jacobian, hence the same time scales, and no error control of its own. y inside a step is the
cubic Hermite interpolant of the step's ends (as in :mod:`odezoo.ode.interpolated`, never
re-integrated backward: stable on stiff rows), read by replaying the row's steps from
checkpoints every ``ceil(sqrt(max_steps))`` accepted steps. The forward steps end on each row's
solution times (the pair's ``hit_times``), where the cotangents enter.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from odezoo.ode.checkpoint import checkpoint_stride
from odezoo.ode.independent import integrate_independent, row_implicit_stages, row_shaped, row_stages
from odezoo.ode.integrator import lincomb
from odezoo.ode.interpolated import adjoint_jacobian, hermite, read_at, second_derivative, write_at
from odezoo.ode.status import NEWTON, OK, run_hook
from odezoo.ode.tableau import DOPRI5

_INFO_KEYS = ("reason", "nfe", "steps", "accepted", "t", "iterations")


@tf.autograph.experimental.do_not_convert
def independent_adjoint_solve(fn, y0, times, lengths, constants, *, options, on_forward=None, on_backward=None):
    """:func:`~odezoo.ode.independent.integrate_independent` under the per-row continuous adjoint.

    Args:
        fn: ``fn(t, flat, constants) -> flat``, ``t`` of shape (batch, 1, ..., 1).
        y0, constants: flat lists of tensors (constants receive gradients); y0's leading axis the batch.
        times, lengths: as :func:`~odezoo.ode.independent.integrate_independent`'s (no gradient).
        options: its keyword options (``rtol``, ``atol``, ``max_steps``, ``controller``,
            ``tableau``, ``first_step``); the pair's steps are made to end on the solution times.
        on_forward / on_backward: optional ``callable(info)`` as :func:`odezoo.ode.adjoint.adjoint_solve`'s.

    Returns ``(outputs, info)`` as ``integrate_independent``. The gradient of a failed row's y0 is
    NaN, and so are the constants' and variables' gradients if any row failed.
    """
    ny = len(y0)
    options = dict(options)
    stride = checkpoint_stride(options.get("max_steps", 10000))
    options["tableau"] = dataclasses.replace(options.get("tableau") or DOPRI5, hit_times=True)

    @tf.custom_gradient
    def _solve(*args):
        ys, cs = list(args[:ny]), list(args[ny:])
        outputs, info = integrate_independent(lambda t, y: fn(t, y, cs), ys, times, lengths,
                                              checkpoint_stride=stride, **options)  # fmt: skip
        record = info.pop("record")
        with tf.control_dependencies(run_hook(on_forward, info)):
            outputs = [tf.identity(o) for o in outputs]

        def grad_fn(*dys, variables=None):
            variables = list(variables or [])
            dys = [tf.zeros_like(o) if d is None else d for d, o in zip(dys[:ny], outputs)]
            grads_y, grads_c, grads_v, binfo = _rows_backward(fn, options, record, info, dys, cs, variables, stride)
            with tf.control_dependencies(run_hook(on_backward, binfo)):
                grads_y = [tf.identity(g) for g in grads_y]
            return grads_y + grads_c, grads_v

        return outputs + [info[k] for k in _INFO_KEYS], grad_fn

    res = _solve(*y0, *constants)
    return list(res[:ny]), dict(zip(_INFO_KEYS, res[ny:]))


@tf.autograph.experimental.do_not_convert
def _rows_backward(fn, options, record, info, dys, consts, variables, stride):
    """Walk every row's accepted steps backward; ``(g_y0, g_c, g_v, info)``."""
    tableau = options["tableau"]
    nc = len(consts)
    dtype = dys[0].dtype
    batch = tf.shape(dys[0])[1]
    rows = tf.range(batch)
    n = info["accepted"]
    ts, hs, ends, ids, ckpts = record["t"], record["h"], record["t_new"], record["idx"], record["checkpoints"]
    rtol, atol = options["rtol"], options["atol"]
    weighted = [i for i in range(tableau.stages) if tableau.b[i] != 0.0]  # the stages in the parameter integral

    def call(t, y):
        return [tf.cast(tf.convert_to_tensor(o), dtype) for o in fn(row_shaped(t, y[0]), y, consts)]

    def adjoint_step(k, a, g, y_k, f_k, d_k, y_k1, f_k1, d_k1):
        """One backward step of every row over its step k: ``(a, g, converged, calls)``."""
        act = k < n
        t_lo, t_hi = ts[k], ends[k]
        span = tf.where(act, t_hi - t_lo, tf.zeros_like(t_hi))
        safe_hi = tf.where(act, t_hi, t_lo + 1.0)  # a finished row: any finite interval (its step is 0)

        def y_at(t):
            return hermite(row_shaped(t_lo, y_k[0]), row_shaped(safe_hi, y_k[0]), y_k, f_k, y_k1, f_k1,
                           row_shaped(t, y_k[0]), d_k, d_k1)  # fmt: skip

        def adjoint_field(t, adj):
            y = y_at(t)
            with tf.GradientTape() as tape:
                tape.watch(y)
                fy = call(t, y)
            vjp = tape.gradient(fy, y, output_gradients=adj, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return [-tf.convert_to_tensor(v) for v in vjp]

        adjoint_field.jacobian = adjoint_jacobian(call, y_at)
        h = -span
        k1 = adjoint_field(t_hi, a)
        if tableau.implicit:
            a_new, ks, _, converged, calls = row_implicit_stages(tableau, adjoint_field, t_hi, a, k1, h,
                                                                 rtol=rtol, atol=atol)  # fmt: skip
        else:
            a_new, ks, _ = row_stages(tableau, adjoint_field, t_hi, a, k1, h)
            converged, calls = tf.ones(tf.shape(act), tf.bool), tf.fill(tf.shape(act), tableau.evaluations_per_step)
        # the parameter integral: sum over stages and rows of (H b_i)·a_i·∂f/∂θ at the stage
        hb = row_shaped(h, a[0])
        stages_t, stages_a, weights = [], [], []
        for i in weighted:
            row = tuple(tableau.a[i]) + (0.0,) * (tableau.stages - len(tableau.a[i]))
            stages_t.append(t_hi + tableau.c[i] * h)
            stages_a.append(lincomb(a, hb, row[: len(ks)], ks))
            weights.append(row_shaped(span * tableau.b[i], a[0]))
        with tf.GradientTape() as tape:
            tape.watch(consts)
            for v in variables:
                tape.watch(v)
            outs = [call(t_i, y_at(t_i)) for t_i in stages_t]
        on = row_shaped(act, a[0])  # a finished row's stages (its step 0, k = 0/0) must not reach the sum
        cotangents = [[tf.where(on, w * ai, tf.zeros_like(ai)) for ai in adj] for w, adj in zip(weights, stages_a)]
        flat_out = [o for out in outs for o in out]
        flat_cot = [c for cot in cotangents for c in cot]
        dg = tape.gradient(flat_out, list(consts) + list(variables), output_gradients=flat_cot,
                           unconnected_gradients=tf.UnconnectedGradients.ZERO)  # fmt: skip
        g = [gi + tf.convert_to_tensor(d) for gi, d in zip(g, dg)]
        a_new = [tf.where(row_shaped(act, x), x, y) for x, y in zip(a_new, a)]
        return a_new, g, tf.logical_or(converged, tf.logical_not(act)), calls + len(stages_t) + 1

    seg_y = [tf.TensorArray(dtype, size=stride + 1, element_shape=d.shape[1:]) for d in dys]
    seg_f = [tf.TensorArray(dtype, size=stride + 1, element_shape=d.shape[1:]) for d in dys]
    quintic = int(not tableau.implicit)  # y'' at the step ends (second_derivative), one field call each
    seg_d = [tf.TensorArray(dtype, size=stride + 1, element_shape=d.shape[1:]) for d in dys] if quintic else []

    def replay(k, y, f):
        """Every row's step k again (a finished row keeps its state): ``(y_{k+1}, f_{k+1}, calls)``."""
        act = k < n
        h = tf.where(act, hs[k], tf.zeros_like(hs[k]))
        if tableau.implicit:
            y_new, _, f_new, _, calls = row_implicit_stages(tableau, call, ts[k], y, f, h, rtol=rtol, atol=atol)
            calls = tf.reduce_max(tf.cast(act, tf.int32) * calls)
        else:
            y_new, _, f_new = row_stages(tableau, call, ts[k], y, f, h)
            calls = tableau.evaluations_per_step
        keep = row_shaped(act, y[0])
        return [tf.where(keep, a, b) for a, b in zip(y_new, y)], [tf.where(keep, a, b) for a, b in zip(f_new, f)], calls

    def segment(j, a, g, reason, nfe):
        lo = j * stride
        hi = tf.minimum(lo + stride, tf.reduce_max(n))

        def rebuild(k, y, f, tas_y, tas_f, tas_d, nfe):
            tas_y = [ta.write(k - lo, v) for ta, v in zip(tas_y, y)]
            tas_f = [ta.write(k - lo, v) for ta, v in zip(tas_f, f)]
            tas_d = write_at(tas_d, k - lo, second_derivative(call, ts[k], y, f, tableau))
            y, f, calls = replay(k, y, f)
            return k + 1, y, f, tas_y, tas_f, tas_d, nfe + calls + quintic

        y_lo = [c[j] for c in ckpts]
        _, y_hi, f_hi, tas_y, tas_f, tas_d, nfe = tf.while_loop(
            lambda k, *_: k < hi,
            rebuild,
            (lo, y_lo, call(ts[lo], y_lo), seg_y, seg_f, seg_d, nfe + 1 + quintic),
            maximum_iterations=stride,
        )
        # each row's time there: the end of its last step in this segment (of all, for a finished row)
        t_hi = tf.gather_nd(ends, tf.stack([tf.maximum(tf.minimum(hi, n) - 1, 0), rows], 1))
        tas_y = [ta.write(hi - lo, v) for ta, v in zip(tas_y, y_hi)]
        tas_f = [ta.write(hi - lo, v) for ta, v in zip(tas_f, f_hi)]
        tas_d = write_at(tas_d, hi - lo, second_derivative(call, t_hi, y_hi, f_hi, tableau))

        def back(k, a, g, reason, nfe):
            act = k < n
            # the cotangent of the solution time step k ended on (steps end on them: at most one)
            before = tf.where(k > 0, ids[tf.maximum(k - 1, 0)], tf.ones_like(ids[k]))
            ended = tf.logical_and(act, ids[k] > before)
            at = tf.stack([tf.maximum(ids[k] - 1, 0), rows], 1)
            a = [ai + tf.where(row_shaped(ended, ai), tf.gather_nd(d, at), tf.zeros_like(ai)) for ai, d in zip(a, dys)]
            read = (read_at(tas, k - lo) for tas in (tas_y, tas_f, tas_d))
            after = (read_at(tas, k - lo + 1) for tas in (tas_y, tas_f, tas_d))
            a, g, converged, calls = adjoint_step(k, a, g, *read, *after)
            reason = tf.where(tf.logical_and(tf.equal(reason, OK), tf.logical_not(converged)), NEWTON, reason)
            return k - 1, a, g, reason, nfe + tf.reduce_max(tf.cast(act, tf.int32) * calls)

        _, a, g, reason, nfe = tf.while_loop(
            lambda k, *_: k >= lo, back, (hi - 1, a, g, reason, nfe), maximum_iterations=stride
        )
        return j - 1, a, g, reason, nfe

    a0 = [tf.zeros_like(d[0]) for d in dys]
    g0 = [tf.zeros_like(c) for c in consts] + [tf.zeros(v.shape, dtype) for v in variables]
    segments = (tf.reduce_max(n) + stride - 1) // stride
    _, a, g, reason, nfe = tf.while_loop(
        lambda j, *_: j >= 0,
        segment,
        (segments - 1, a0, g0, tf.fill([batch], OK), tf.constant(0, tf.int32)),
        maximum_iterations=ckpts[0].shape[0] - 1,
    )
    a = [ai + d[0] for ai, d in zip(a, dys)]  # solution time 0 is t0: y0 itself
    reason = tf.where(tf.equal(info["reason"], OK), reason, info["reason"])
    failed = tf.not_equal(reason, OK)
    nan = tf.constant(float("nan"), dtype)
    a = [tf.where(row_shaped(failed, ai), nan, ai) for ai in a]
    g = [tf.where(tf.reduce_any(failed), nan, gi) for gi in g]
    binfo = dict(nfe=nfe, reason=tf.reduce_max(reason), steps=tf.reduce_max(n), t=tf.reduce_min(ts[0]))
    return a, g[:nc], g[nc:], binfo


__all__ = ["independent_adjoint_solve"]
