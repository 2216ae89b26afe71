"""``batch_mode="independent"``: every row of a batch its own adaptive solve, in one XLA while_loop.

Each row b has its own time t_b, step h_b, error norm (the RMS over the row's entries),
accept/reject decision, controller memory, solution times ``times[b, :lengths[b]]`` and
status; the field is evaluated on the whole batch at once, with ``t`` of shape
(batch, 1, ..., 1) (broadcastable against the state), and a row that is done (its last
solution time reached, or failed) stops changing and stops counting evaluations. The loop
runs until every row is done or ``max_steps`` iterations have passed. A failed row is NaN
in the outputs and has its own non-zero reason; the other rows are unaffected.

Explicit embedded pairs, and the ESDIRK pairs with every row its own Newton iteration on its
own Jacobian (:func:`row_implicit_stages`: per-row factors, so states of at most
``DENSE_LIMIT`` entries per row); the gradient is backpropagation through the loop (compiled:
the loop has ``maximum_iterations = max_steps``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from odezoo.ode.controllers import StepMemory, make_controller
from odezoo.ode.integrator import dense_output, end_of_interval, lincomb, next_step, step_reason
from odezoo.ode.newton import DENSE_LIMIT, linearise, newton_tolerance, resolve_linear_solver, solve_stage_rows
from odezoo.ode.status import MAX_STEPS, NONFINITE, OK, UNORDERED
from odezoo.ode.tableau import DOPRI5, ButcherTableau


def row_shaped(x, like):
    """A (batch,) tensor reshaped to broadcast against ``like`` (batch, ...)."""
    return tf.reshape(x, tf.concat([tf.shape(x), tf.ones([like.shape.rank - 1], tf.int32)], 0))


_rows = row_shaped


def row_rms(parts):
    """The RMS of each row over every entry of every component: shape (batch,)."""
    total, count = None, 0
    for p in parts:
        s = tf.reduce_sum(tf.square(tf.reshape(p, [tf.shape(p)[0], -1])), 1)
        total = s if total is None else total + s
        count += int(np.prod(p.shape[1:]))
    return tf.sqrt(total / max(count, 1))


def row_finite(parts):
    ok = None
    for p in parts:
        r = tf.reduce_all(tf.math.is_finite(tf.reshape(p, [tf.shape(p)[0], -1])), 1)
        ok = r if ok is None else tf.logical_and(ok, r)
    return ok


def _where(pred, a, b):
    return [tf.where(_rows(pred, x), x, y) for x, y in zip(a, b)]


def row_stages(tableau, call, t, y, k1, h):
    """One explicit step of every row, ``t`` and ``h`` of shape (batch,): ``(y_new, ks, f_new)``."""
    hb = _rows(h, y[0])
    ks, yi = [k1], y
    for i in range(1, tableau.stages):
        yi = lincomb(y, hb, tableau.a[i], ks)
        ks.append(call(t + tableau.c[i] * h, yi))
    if tableau.fsal:  # the last stage is evaluated at the propagated solution
        return yi, ks, ks[-1]
    y_new = lincomb(y, hb, tableau.b, ks)
    return y_new, ks, call(t + h, y_new)


def row_implicit_stages(tableau, call, t, y, k1, h, *, rtol, atol):
    """One ESDIRK step of every row (``tableau.implicit``), each row's stages by its own Newton
    iteration with its own Jacobian (per-row factors, "rows"): ``(y_new, ks, f_new, converged,
    calls)``, the last two of shape (batch,)."""
    settings = dict(tableau.newton)
    mask = [True] * len(y)
    kind = resolve_linear_solver(settings["linear_solver"], y, mask)
    if kind != "rows":
        raise ValueError(
            f"batch_mode='independent' with the implicit pair {tableau.name!r} solves every row's Newton "
            f"iteration with the row's own dense Jacobian (linear_solver 'rows', states of at most "
            f"{DENSE_LIMIT} entries per row); this state resolves to linear_solver={kind!r}. Use "
            "batch_mode='shared' for it."
        )
    hg = h * tableau.gamma
    lin = linearise(call, t, y, hg, mask, "rows")
    scale = [tf.stop_gradient(atol + rtol * tf.abs(v)) for v in y]
    hb = _rows(h, y[0])
    ks, converged, calls = [k1], tf.ones(tf.shape(h), tf.bool), tf.zeros(tf.shape(h), tf.int32)
    stage = y
    for i in range(1, tableau.stages):
        known = lincomb(y, hb, tableau.a[i][:i], ks)
        weights = tableau.predictor[i - 1] if tableau.predictor is not None else (0.0,) * (i - 1) + (1.0,)
        guess = lincomb(known, _rows(hg, y[0]), weights, ks)
        stage, k, ok, iterations = solve_stage_rows(
            call, t + tableau.c[i] * h, known, hg, guess, lin, scale,
            kappa=newton_tolerance(settings["kappa"], rtol, y[0].dtype), max_iterations=settings["max_iterations"],
        )  # fmt: skip
        ks.append(k)
        converged = tf.logical_and(converged, ok)
        calls += iterations
    if tableau.fsal:  # stiffly accurate: the last stage is the new point
        return stage, ks, ks[-1], converged, calls
    y_new = lincomb(y, hb, tableau.b, ks)
    return y_new, ks, call(t + h, y_new), converged, calls + 1


class _State(NamedTuple):
    t: tf.Tensor
    y: list
    k1: list
    h: tf.Tensor
    h_prev: tf.Tensor
    err_prev: tf.Tensor
    err_prev2: tf.Tensor
    streak: tf.Tensor
    idx: tf.Tensor
    out: list
    steps: tf.Tensor
    accepted: tf.Tensor
    nfe: tf.Tensor
    reason: tf.Tensor
    active: tf.Tensor
    g: tf.Tensor  # the event function at (t, y), per row (zeros without an event)
    found: tf.Tensor  # the row's accepted step would have crossed its event: it stopped before it
    h_event: tf.Tensor  # that step
    record: tuple = ()  # with a checkpoint stride: each row's accepted steps and checkpoints (_record)


def integrate_independent(
    fn,
    y0,
    times,
    lengths,
    *,
    rtol,
    atol,
    max_steps=10000,
    controller="predictive",
    tableau: ButcherTableau = DOPRI5,
    first_step=None,
    event=None,
    event_direction=0.0,
    checkpoint_stride=None,
):
    """Integrate every row of ``y0`` from ``times[b, 0]`` through ``times[b, :lengths[b]]``.

    Args:
        fn: ``fn(t, flat) -> flat``, ``t`` of shape (batch, 1, ..., 1) (the first component's rank).
        y0: flat list of tensors, each (batch, ...), one float dtype.
        times: (batch, T) tensor, T static; row b's solution times are its first ``lengths[b]``
            entries, ``times[b, 0]`` its initial time, strictly increasing (a row whose times are
            not fails with UNORDERED; the others solve).
        lengths: (batch,) int tensor in [1, T].
        rtol, atol, max_steps, controller, tableau, first_step: as :func:`~odezoo.ode.integrator.integrate`
            (``max_steps`` bounds the loop's iterations, hence every row's attempted steps).
        event, event_direction: None, or ``event(t, flat) -> (batch,)`` (``t`` of shape (batch,),
            row b's value depending on row b only): a row stops before its first step whose end
            would change the sign of its event (as :func:`~odezoo.ode.integrator.integrate`'s
            ``event``, per row); ``info["event"]`` then holds, per row, ``found`` and the step that
            crossed: ``t``, ``y``, ``k1`` and ``h``.
        checkpoint_stride: None, or record what the per-row adjoint
            (:mod:`odezoo.ode.independent_adjoint`) replays: ``info["record"]`` holds, per row, each
            accepted step's start ``t``, size ``h``, end ``t_new`` and solution-time index after it
            ``idx`` ((max_steps + 1, batch), slot k the row's k-th accepted step), and
            ``checkpoints``, the state at the start of every ``checkpoint_stride``-th accepted
            step ((max_steps // stride + 2, batch, ...); unwritten slots hold y0).

    Returns:
        ``(outputs, info)``: outputs a list of (T, batch, ...) tensors (row b NaN past its length
        and everywhere if it failed; ``[0]`` is y0), info a dict of (batch,) tensors ``reason``,
        ``nfe``, ``steps``, ``accepted``, ``t`` and the scalar ``iterations``.
    """
    dtype = y0[0].dtype
    controller = make_controller(controller)
    times = tf.cast(times, dtype)
    n = times.shape[1]
    lengths = tf.cast(lengths, tf.int32)
    t0 = times[:, 0]
    last_index = tf.maximum(lengths - 1, 0)
    t_end = tf.gather(times, last_index, batch_dims=1)
    rtol, atol = tf.cast(rtol, dtype), tf.cast(atol, dtype)
    tiny = tf.constant(np.finfo(dtype.as_numpy_dtype).eps, dtype)
    stretch = 1.0 / controller.safety
    column = tf.range(n)[None, :]
    valid = column < lengths[:, None]
    diffs = times[:, 1:] - times[:, :-1]
    ordered = tf.reduce_all(tf.logical_or(diffs > 0.0, tf.logical_not(valid[:, 1:])), 1)

    def call(t, y):
        out = fn(_rows(t, y[0]), y)
        return [tf.cast(tf.convert_to_tensor(o), dtype) for o in out]

    def event_of(t, y):
        return tf.cast(tf.reshape(event(t, y), tf.shape(t)), dtype)

    def scale_of(a, b=None):
        return [atol + rtol * (tf.abs(x) if b is None else tf.maximum(tf.abs(x), tf.abs(z)))
                for x, z in zip(a, b if b is not None else a)]  # fmt: skip

    f0 = call(t0, y0)
    span = t_end - t0
    if first_step is None:  # Hairer's selection, per row
        scale0 = scale_of(y0)
        d0 = row_rms([y / s for y, s in zip(y0, scale0)])
        d1 = row_rms([f / s for f, s in zip(f0, scale0)])
        small = tf.logical_or(d0 < 1e-5, d1 < 1e-5)
        h0 = tf.where(small, tf.constant(1e-6, dtype), 0.01 * d0 / tf.where(small, tf.ones_like(d1), d1))
        h0 = tf.minimum(h0, tf.maximum(span, tiny))
        f1 = call(t0 + h0, [y + _rows(h0, y) * f for y, f in zip(y0, f0)])
        d2 = row_rms([(b - a) / s for a, b, s in zip(f0, f1, scale0)]) / h0
        dmax = tf.maximum(d1, d2)
        flat = dmax <= 1e-15
        h1 = tf.pow(0.01 / tf.where(flat, tf.ones_like(dmax), dmax), 1.0 / tableau.order)
        h1 = tf.where(flat, tf.maximum(tf.constant(1e-6, dtype), h0 * 1e-3), h1)
        h = tf.minimum(100.0 * h0, h1)
        nfe0 = 2
    else:
        h = tf.fill(tf.shape(t0), tf.cast(first_step, dtype))
        nfe0 = 1
    h = tf.stop_gradient(tf.minimum(tf.where(tf.logical_and(tf.math.is_finite(h), h > 0.0), h, span),
                                    tf.maximum(span, tiny)))  # fmt: skip
    finite0 = tf.logical_and(row_finite(y0), row_finite(f0))
    reason = tf.where(finite0, OK, NONFINITE)
    reason = tf.where(ordered, reason, UNORDERED)
    zero = tf.zeros_like(lengths)
    nan = tf.constant(np.nan, dtype)
    out = [tf.tile(tf.fill(tf.concat([[1], tf.shape(y)], 0), nan), [n] + [1] * y.shape.rank) for y in y0]
    out = [tf.tensor_scatter_nd_update(o, [[0]], [y]) for o, y in zip(out, y0)]
    idx = tf.ones_like(lengths)
    active = tf.logical_and(tf.equal(reason, OK), idx < lengths)
    small = tf.fill(tf.shape(h), tf.constant(1e-4, dtype))
    g0 = tf.zeros_like(h) if event is None else tf.stop_gradient(event_of(t0, y0))
    start = _State(t=t0, y=list(y0), k1=f0, h=h, h_prev=h, err_prev=small, err_prev2=small, streak=zero, idx=idx,
                   out=out, steps=zero, accepted=zero, nfe=tf.fill(tf.shape(lengths), nfe0), reason=reason,
                   active=active, g=g0, found=tf.zeros_like(active), h_event=tf.zeros_like(h))  # fmt: skip
    if checkpoint_stride is not None:
        if event is not None:
            raise ValueError("An event cannot be combined with checkpoint_stride.")
        slots = max_steps + 1  # the last one a scratch slot for the rows that did not accept
        rows_t0 = tf.tile(t0[None], [slots, 1])
        checkpoints = [tf.tile(y[None], [max_steps // checkpoint_stride + 2] + [1] * y.shape.rank) for y in y0]
        ids = tf.zeros([slots, tf.shape(t0)[0]], tf.int32)
        start = start._replace(record=(rows_t0, tf.zeros_like(rows_t0), rows_t0, ids, *checkpoints))
    t_grid = tf.transpose(times)  # (T, batch)

    def body(s: _State) -> _State:
        rejected = tf.logical_and(tf.equal(s.streak, 0), s.steps > 0)
        target = tf.gather(times, tf.minimum(s.idx, n - 1), batch_dims=1) if tableau.hit_times else t_end
        h, last = end_of_interval(s.t, s.h, target, 1.0, stretch)
        # a finished row's step is 0 (nothing left): a unit step instead keeps its unused
        # arithmetic finite, so that no 0/0 reaches the gradient through the discarded branches
        h = tf.where(s.active, h, tf.ones_like(h))
        hb = _rows(h, s.y[0])
        if tableau.implicit:
            y_new, ks, f_new, converged, calls = row_implicit_stages(tableau, call, s.t, s.y, s.k1, h, rtol=rtol,
                                                                     atol=atol)  # fmt: skip
        else:
            y_new, ks, f_new = row_stages(tableau, call, s.t, s.y, s.k1, h)
            converged, calls = tf.ones(tf.shape(h), tf.bool), tableau.evaluations_per_step
        zeros = [tf.zeros_like(v) for v in s.y]
        scale = scale_of(s.y, y_new)
        ratio = tf.stop_gradient(row_rms([e / c for e, c in zip(lincomb(zeros, hb, tableau.error, ks), scale)]))
        if tableau.error_low is not None:
            low = tf.stop_gradient(row_rms([e / c for e, c in zip(lincomb(zeros, hb, tableau.error_low, ks), scale)]))
            positive = ratio > 0.0
            combined = tf.cast(tableau.combine(tf.where(positive, ratio, tf.ones_like(ratio)), low), dtype)
            ratio = tf.where(positive, combined, tf.zeros_like(ratio))
        finite = tf.logical_and(tf.math.is_finite(ratio), tf.logical_and(row_finite(f_new), row_finite(y_new)))
        finite = tf.logical_and(finite, converged)
        accept = tf.logical_and(s.active, tf.logical_and(finite, ratio <= 1.0))
        t_new = tf.where(last, target, s.t + h)
        g, found, h_event = s.g, s.found, s.h_event
        if event is not None:  # a step that crosses the row's event is not taken: kept for locating the root
            g_new = tf.stop_gradient(event_of(t_new, y_new))
            up = tf.logical_and(s.g < 0.0, g_new >= 0.0)
            down = tf.logical_and(s.g > 0.0, g_new <= 0.0)
            crossed = up if event_direction > 0 else down if event_direction < 0 else tf.logical_or(up, down)
            crossed = tf.logical_and(accept, crossed)
            accept = tf.logical_and(accept, tf.logical_not(crossed))
            g = tf.where(accept, g_new, s.g)
            found = tf.logical_or(s.found, crossed)
            h_event = tf.where(crossed, h, s.h_event)
        memory = StepMemory(h=h, h_prev=s.h_prev, err_prev=s.err_prev, streak=s.streak, err_prev2=s.err_prev2,
                            accepted=s.accepted)  # fmt: skip
        h_next, err_prev, h_prev = next_step(controller, tableau.error_exponent, ratio, finite, accept, rejected,
                                             memory, 1.0)  # fmt: skip
        if tableau.implicit:  # a row whose stage did not converge: its step is halved
            h_next = tf.where(converged, h_next, tf.stop_gradient(0.5 * h))
        # the solution times this step reaches, for every row at once: (T, batch)
        reached = tf.logical_and(column >= s.idx[:, None], tf.logical_and(valid, times <= t_new[:, None]))
        reached = tf.transpose(tf.logical_and(reached, accept[:, None]))
        t_i = tf.clip_by_value(t_grid, s.t[None, :], tf.maximum(t_new, s.t)[None, :])  # unreached ones: discarded
        t_i = tf.reshape(t_i, tf.concat([tf.shape(t_grid), tf.ones([s.y[0].shape.rank - 1], tf.int32)], 0))
        values = dense_output(tableau, _rows(s.t, s.y[0]), hb, s.y, y_new, ks, t_i, _rows(t_new, s.y[0]), f_new)
        out = []
        for o, v in zip(s.out, values):
            mask = tf.reshape(reached, tf.concat([tf.shape(reached), tf.ones([o.shape.rank - 2], tf.int32)], 0))
            out.append(tf.where(mask, tf.broadcast_to(v, tf.shape(o)), o))
        idx = s.idx + tf.reduce_sum(tf.cast(reached, tf.int32), 0)
        reason = tf.where(s.active, step_reason(finite, tf.logical_and(finite, ratio <= 1.0), h_next, s.t, t_end,
                                                tiny, converged), s.reason)  # fmt: skip
        counted = tf.cast(s.active, tf.int32)
        keep = tf.logical_not(accept)
        t = tf.where(accept, t_new, s.t)
        steps = s.steps + counted
        active = tf.logical_and(tf.logical_and(s.active, tf.equal(reason, OK)),
                                tf.logical_and(idx < lengths, steps < max_steps))  # fmt: skip
        active = tf.logical_and(active, tf.logical_not(found))
        record = s.record if checkpoint_stride is None else _record(s, accept, h, t_new, idx, checkpoint_stride)
        return _State(
            t=t, y=_where(keep, s.y, y_new), k1=_where(keep, s.k1, f_new),
            h=tf.where(s.active, h_next, s.h), h_prev=tf.where(s.active, h_prev, s.h_prev),
            err_prev=tf.where(s.active, err_prev, s.err_prev),
            err_prev2=tf.where(accept, s.err_prev, s.err_prev2),
            streak=tf.where(accept, s.streak + 1, tf.where(s.active, 0, s.streak)), idx=idx, out=out,
            steps=steps, accepted=s.accepted + tf.cast(accept, tf.int32),
            nfe=s.nfe + counted * calls, reason=reason, active=active,
            g=g, found=found, h_event=h_event, record=record,
        )  # fmt: skip

    s, iterations = tf.while_loop(
        lambda s, i: tf.reduce_any(s.active),
        lambda s, i: (body(s), i + 1),
        (start, tf.constant(0, tf.int32)),
        maximum_iterations=max_steps,
    )
    short = tf.logical_and(tf.logical_and(tf.equal(s.reason, OK), s.idx < lengths), tf.logical_not(s.found))
    reason = tf.where(short, MAX_STEPS, s.reason)
    failed = tf.not_equal(reason, OK)
    outputs = []
    for o in s.out:
        mask = tf.reshape(failed, tf.concat([[1], tf.shape(failed), tf.ones([o.shape.rank - 2], tf.int32)], 0))
        outputs.append(tf.where(mask, nan, o))
    info = dict(reason=reason, nfe=s.nfe, steps=s.steps, accepted=s.accepted, t=s.t, iterations=iterations)
    if event is not None:
        info["event"] = dict(found=s.found, t=s.t, y=list(s.y), k1=list(s.k1), h=s.h_event)
    if checkpoint_stride is not None:
        ts, hs, ends, ids, *checkpoints = s.record
        info["record"] = dict(t=ts, h=hs, t_new=ends, idx=ids, checkpoints=checkpoints)
    return outputs, info


def _record(s: _State, accept, h, t_new, idx, stride):
    """Write each accepting row's step at its slot ``accepted`` (the others at the scratch slot,
    the last) and, at its every ``stride``-th accepted step, its starting state to its checkpoint."""
    ts, hs, ends, ids, *checkpoints = s.record
    rows = tf.range(tf.shape(accept)[0])
    scratch = ts.shape[0] - 1
    at = tf.stack([tf.where(accept, s.accepted, scratch), rows], 1)
    due = tf.logical_and(accept, tf.equal(s.accepted % stride, 0))
    at_ckpt = tf.stack([tf.where(due, s.accepted // stride, checkpoints[0].shape[0] - 1), rows], 1)
    return (
        tf.tensor_scatter_nd_update(ts, at, s.t),
        tf.tensor_scatter_nd_update(hs, at, h),
        tf.tensor_scatter_nd_update(ends, at, t_new),
        tf.tensor_scatter_nd_update(ids, at, idx),
        *[tf.tensor_scatter_nd_update(c, at_ckpt, y) for c, y in zip(checkpoints, s.y)],
    )
