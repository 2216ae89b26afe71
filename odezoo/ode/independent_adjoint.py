"""``batch_mode="independent"`` with ``gradient="adjoint"``: each row's continuous adjoint on its own steps.

Every row b of the batch has its own steps t_{b,0} < t_{b,1} < ... (:mod:`odezoo.ode.independent`),
so a backward solve shared by the batch does not exist, and one adaptive backward solve per
row cannot accumulate the parameter integral ∫a·∂f/∂θ, a sum over the rows, without keeping
one copy of it per row. Here the adjoint equations

    a' = -a·∂f/∂y,   (∫)' = -a·∂f/∂θ,   integrated from t1 back to t0,

are integrated per row over the row's own accepted forward steps, backward, one step of the same
pair per forward step (the ESDIRK pairs' stages by per-row Newton), so every row's step is taken
and the parameter integral is one vector-Jacobian product of the whole batch per stage, summed
over the rows (an explicit pair's stage gives its derivative and its parameter share from one
evaluation of f). The forward steps were sized by the error control on y; the adjoint has the
same Jacobian, hence the same time scales, and no error control of its own. y inside a step is
read off the forward solve, never re-integrated backward (stable on stiff rows): the quintic
Hermite interpolant of the step's ends (y, f and y'' by one Jacobian-vector product) for an
explicit pair, the cubic for an implicit one (:mod:`odezoo.ode.interpolated` says why), the
ends found by replaying the row's steps from
checkpoints every ``ceil(sqrt(max_steps))`` accepted steps. The forward steps end on each row's
solution times (the pair's ``hit_times``), where the cotangents enter.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from odezoo.ode.checkpoint import checkpoint_stride
from odezoo.ode.independent import integrate_independent, row_implicit_stages, row_shaped, row_stages
from odezoo.ode.integrator import lincomb
from odezoo.ode.interpolated import adjoint_jacobian, hermite
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
        on = row_shaped(act, a[0])  # a finished row's stages (its step 0) must not reach the sum
        t_lo, t_hi = ts[k], ends[k]
        span = tf.where(act, t_hi - t_lo, tf.zeros_like(t_hi))
        safe_hi = tf.where(act, t_hi, t_lo + 1.0)  # a finished row: any finite interval (its step is 0)
        h = -span
        hb = row_shaped(h, a[0])

        def y_at(t):
            return hermite(row_shaped(t_lo, y_k[0]), row_shaped(safe_hi, y_k[0]), y_k, f_k, y_k1, f_k1,
                           row_shaped(t, y_k[0]), d_k, d_k1)  # fmt: skip

        def derivative(t, adj, weight=None):
            """The adjoint's derivative -adj·∂f/∂y at (t, y_at(t)); with a (batch,) ``weight``, also its
            share of the parameter integral, weight·adj·∂f/∂θ summed over the rows, from the same f."""
            y = y_at(t)
            with tf.GradientTape(persistent=weight is not None) as tape:
                tape.watch(y)
                tape.watch(consts)
                for v in variables:
                    tape.watch(v)
                fy = call(t, y)
            zero = tf.UnconnectedGradients.ZERO
            k = [-tf.convert_to_tensor(v) for v in tape.gradient(fy, y, adj, unconnected_gradients=zero)]
            if weight is None:
                return k
            cot = [tf.where(on, row_shaped(weight, x) * x, tf.zeros_like(x)) for x in adj]
            share = tape.gradient(fy, list(consts) + list(variables), cot, unconnected_gradients=zero)
            return k, [tf.convert_to_tensor(d) for d in share]

        def adjoint_field(t, adj):
            return derivative(t, adj)

        def stage_time(i):
            return t_hi + tableau.c[i] * h

        if tableau.implicit:  # Newton's stages first (each iterate a field call), then the parameter shares
            adjoint_field.jacobian = adjoint_jacobian(call, y_at)
            k1 = adjoint_field(t_hi, a)
            a_new, ks, _, converged, calls = row_implicit_stages(tableau, adjoint_field, t_hi, a, k1, h, rtol=rtol,
                                                                 atol=atol)  # fmt: skip
            shares = [derivative(stage_time(i), lincomb(a, hb, tableau.a[i], ks), span * tableau.b[i])[1]
                      for i in weighted]  # fmt: skip
            calls = calls + 1 + len(weighted)
        else:  # one evaluation a stage gives both (an FSAL pair's last stage is not needed)
            ks, shares = [], []
            for i in range(tableau.stages - int(tableau.fsal)):
                stage_a = lincomb(a, hb, tableau.a[i], ks)
                if tableau.b[i] != 0.0:
                    k_i, share = derivative(stage_time(i), stage_a, span * tableau.b[i])
                    shares.append(share)
                else:
                    k_i = derivative(stage_time(i), stage_a)
                ks.append(k_i)
            a_new = lincomb(a, hb, tableau.b, ks)
            converged, calls = tf.ones(tf.shape(act), tf.bool), tf.fill(tf.shape(act), len(ks))
        g = [gi + tf.add_n([sh[j] for sh in shares]) for j, gi in enumerate(g)]
        a_new = [tf.where(on, x, y) for x, y in zip(a_new, a)]
        return a_new, g, tf.logical_or(converged, tf.logical_not(act)), calls

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
            tas_d = _write(tas_d, k - lo, second_derivative(call, ts[k], y, f) if quintic else None)
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
        tas_d = _write(tas_d, hi - lo, second_derivative(call, t_hi, y_hi, f_hi) if quintic else None)

        def back(k, a, g, reason, nfe):
            act = k < n
            # the cotangent of the solution time step k ended on (steps end on them: at most one)
            before = tf.where(k > 0, ids[tf.maximum(k - 1, 0)], tf.ones_like(ids[k]))
            ended = tf.logical_and(act, ids[k] > before)
            at = tf.stack([tf.maximum(ids[k] - 1, 0), rows], 1)
            a = [ai + tf.where(row_shaped(ended, ai), tf.gather_nd(d, at), tf.zeros_like(ai)) for ai, d in zip(a, dys)]
            read = (_read(tas, k - lo) for tas in (tas_y, tas_f, tas_d))
            after = (_read(tas, k - lo + 1) for tas in (tas_y, tas_f, tas_d))
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


def second_derivative(call, t, y, f):
    """y'' = ∂f/∂t + (∂f/∂y)·f at (t, y), f = f(t, y): one Jacobian-vector product of the field (the
    quintic Hermite's end data; an explicit pair's only: see :mod:`odezoo.ode.interpolated` on why
    the implicit pairs keep the cubic)."""
    t = tf.convert_to_tensor(t)
    with tf.autodiff.ForwardAccumulator([t] + list(y), [tf.ones_like(t)] + list(f)) as acc:
        out = call(t, y)
    return [acc.jvp(o, unconnected_gradients=tf.UnconnectedGradients.ZERO) for o in out]


def _write(tas, i, values):
    """Write ``values`` at ``i`` (None, an implicit pair's absent second derivatives: nothing)."""
    return tas if values is None else [ta.write(i, v) for ta, v in zip(tas, values)]


def _read(tas, i):
    """The values at ``i``, or None where nothing is kept (``_write``)."""
    return [ta.read(i) for ta in tas] if tas else None


__all__ = ["independent_adjoint_solve"]
