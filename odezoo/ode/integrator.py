"""The adaptive embedded Runge-Kutta integrator, written for XLA, over a :class:`ButcherTableau`.

* Hairer's initial step selection (Hairer, Nørsett & Wanner, *Solving ODEs I*,
  II.4): two field evaluations, no fixed first step (:func:`initial_step`).
* Step-size control on the RMS error norm
  ``err = sqrt(mean((e / (atol + rtol·max(|y0|, |y1|)))²))`` of the pair's
  embedded estimate ``e`` (the norm and scale of torchdiffeq, diffrax and
  ``dopri5.f``; with ``dopri5.f``'s error weights, which torchdiffeq's and diffrax's
  Dopri5 scale by 2/3), a step accepted when ``err <= 1``; the next step comes
  from a :mod:`controller <odezoo.ode.controllers>` object.
* The end of the interval: the rest is taken in one step when it is at most
  1/safety proposed steps long (the error model then predicts ``err <= 1``), in two
  equal steps when at most twice that, so no sliver of a step is left at the end
  (:func:`end_of_interval`).
* Dense output for the solution times, by the pair's form (Shampine's continuous
  extension for dopri5, ``dopri5.f``'s ``contd5``; a pair's polynomial weights; else
  the cubic Hermite interpolant): steps are not shortened to hit them
  (:func:`dense_output`), except for a pair marked ``step_to_times`` (dopri8), whose
  steps end on each solution time as on the end of the interval.
* Guards that end the ``tf.while_loop`` inside the compiled graph: a hard budget
  of ``max_steps`` attempted steps, NaN/Inf in the state or the field, and
  step-size underflow (:func:`step_reason`). The solve then returns NaN states
  and a non-zero reason (:mod:`odezoo.ode.status`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from odezoo.ode.controllers import StepMemory, make_controller
from odezoo.ode.newton import linearise, newton_tolerance, resolve_linear_solver, solve_stage, stage_calls
from odezoo.ode.status import MAX_STEPS, NEWTON, NONFINITE, OK, UNDERFLOW, UNORDERED, times_ordered
from odezoo.ode.tableau import DOPRI5, ButcherTableau


# --------------------------------------------------------------------------- flat-list helpers
def lincomb(y, h, coeffs, ks):
    """y + h·Σ c_j k_j over a flat list of components (zero coefficients skipped)."""
    out = []
    for i, yi in enumerate(y):
        acc = None
        for c, k in zip(coeffs, ks):
            if c != 0.0:
                term = c * k[i]
                acc = term if acc is None else acc + term
        out.append(yi if acc is None else yi + h * acc)
    return out


def rms(parts, mask):
    """Root-mean-square over the masked components of a flat list."""
    total, count = None, None
    for p, m in zip(parts, mask):
        if not m:
            continue
        s = tf.reduce_sum(tf.square(p))
        n = tf.cast(tf.size(p), p.dtype)
        total = s if total is None else total + s
        count = n if count is None else count + n
    return tf.sqrt(total / tf.maximum(count, 1.0))


def all_finite(parts, mask=None):
    """A scalar bool: every (masked) component is finite."""
    ok = tf.constant(True)
    for i, p in enumerate(parts):
        if mask is None or mask[i]:
            ok = tf.logical_and(ok, tf.reduce_all(tf.math.is_finite(p)))
    return ok


def where(pred, a, b):
    return [tf.where(pred, x, y) for x, y in zip(a, b)]


def check_dtypes(flat):
    """The one floating dtype of a flat state (a ValueError otherwise)."""
    dtypes = {p.dtype for p in flat}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating:
        raise ValueError(
            "dopri5 needs every state component to share one floating dtype. "
            f"Received: dtypes={sorted(d.name for d in dtypes)}."
        )
    return next(iter(dtypes))


# --------------------------------------------------------------------------- the named steps
def initial_step(call, t0, y0, f0, *, rtol, atol, mask, span, direction, tiny, order):
    """Hairer's initial step (Hairer, Nørsett & Wanner I, II.4, p. 169): ``(|h|, f(t0 + h0) finite, calls)``."""
    dtype = f0[0].dtype
    scale0 = [atol + rtol * tf.abs(y) for y in y0]
    d0 = tf.stop_gradient(rms([y / s for y, s in zip(y0, scale0)], mask))
    d1 = tf.stop_gradient(rms([f / s for f, s in zip(f0, scale0)], mask))
    small = tf.logical_or(d0 < 1e-5, d1 < 1e-5)
    h0 = tf.where(small, tf.constant(1e-6, dtype), 0.01 * d0 / tf.where(small, tf.ones_like(d1), d1))
    h0 = tf.minimum(h0, tf.maximum(span, tiny))
    y1 = [y + direction * h0 * f for y, f in zip(y0, f0)]
    f1 = call(t0 + direction * h0, y1)
    d2 = tf.stop_gradient(rms([(b - a) / s for a, b, s in zip(f0, f1, scale0)], mask)) / h0
    dmax = tf.maximum(d1, d2)
    h1 = tf.where(
        dmax <= 1e-15,
        tf.maximum(tf.constant(1e-6, dtype), h0 * 1e-3),
        tf.pow(0.01 / tf.where(dmax <= 1e-15, tf.ones_like(dmax), dmax), 1.0 / order),
    )
    return tf.minimum(100.0 * h0, h1), all_finite(f1), 1


def fill_until(times, t_stop, direction, idx, tas, values, *, enabled=True):
    """Write ``values(i)`` at every solution time index from ``idx`` up to ``t_stop``; ``(idx, tas)``."""
    n = times.shape[0]

    def cond(i, tas):
        due = tf.logical_and(i < n, direction * (times[tf.minimum(i, n - 1)] - t_stop) <= 0.0)
        return due if enabled is True else tf.logical_and(enabled, due)

    def body(i, tas):
        return i + 1, [ta.write(i, v) for ta, v in zip(tas, values(i))]

    return tf.while_loop(cond, body, (idx, tas), maximum_iterations=n)


def dense_output(tableau, t, h, y, y_new, ks, t_i, t_new, f_new=None):
    """The state at ``t_i`` in the step [t, t + h], by the pair's :attr:`~ButcherTableau.dense_kind`.

    "shampine": Shampine's continuous extension (``dopri5.f``'s ``contd5``);
    "polynomial": y + h·Σ b_i(θ) k_i; "hermite": the cubic through y, f(t, y) = k_1,
    y_new and ``f_new`` = f(t + h, y_new).
    """
    kind = tableau.dense_kind
    if kind == "step":  # the step was shortened to end on every solution time it reaches
        return list(y_new)
    if kind == "polynomial":
        th = (t_i - t) / h
        weights = [sum(c * th ** (k + 1) for k, c in enumerate(row)) for row in tableau.dense_poly]
        vals = []
        for i, yi in enumerate(y):
            acc = None
            for w, k in zip(weights, ks):
                term = w * k[i]
                acc = term if acc is None else acc + term
            vals.append(yi + h * acc)
        return where(tf.equal(t_i, t_new), y_new, vals)
    if kind == "hermite":
        th = (t_i - t) / h
        h00 = (1.0 + 2.0 * th) * (1.0 - th) ** 2
        h10 = th * (1.0 - th) ** 2
        h01 = th**2 * (3.0 - 2.0 * th)
        h11 = th**2 * (th - 1.0)
        vals = [h00 * a + h01 * b + h * (h10 * fa + h11 * fb) for a, b, fa, fb in zip(y, y_new, ks[0], f_new)]
        return where(tf.equal(t_i, t_new), y_new, vals)
    ydiff = [b - a for a, b in zip(y, y_new)]
    bspl = [h * k - d for k, d in zip(ks[0], ydiff)]
    rc4 = [d - h * k - b for d, k, b in zip(ydiff, ks[-1], bspl)]
    rc5 = lincomb([tf.zeros_like(v) for v in y], h, tableau.dense, ks)
    th = (t_i - t) / h
    th1 = 1.0 - th
    vals = [a + th * (d + th1 * (b + th * (c + th1 * e))) for a, d, b, c, e in zip(y, ydiff, bspl, rc4, rc5)]
    return where(tf.equal(t_i, t_new), y_new, vals)


def end_of_interval(t, h, t_end, direction, stretch):
    """The step to attempt: the rest if at most ``stretch`` proposed steps remain, half of it if at most two."""
    rest = t_end - t
    last = direction * (t + stretch * h - t_end) >= 0.0
    split = tf.logical_and(tf.logical_not(last), direction * (t + 2.0 * stretch * h - t_end) >= 0.0)
    return tf.where(last, rest, tf.where(split, 0.5 * rest, h)), last


def attempt_step(tableau, call, t, y, k1, h, *, rtol, atol, mask):
    """One step of the pair: ``(y_new, ks, f_new, error ratio, finite)``; ``f_new`` = f(t + h, y_new)."""
    ks = [k1]
    for i in range(1, tableau.stages):
        yi = lincomb(y, h, tableau.a[i], ks)
        ks.append(call(t + tableau.c[i] * h, yi))
    if tableau.fsal:
        y_new, f_new = yi, ks[-1]  # the last stage is evaluated at the propagated solution
    else:
        y_new = lincomb(y, h, tableau.b, ks)
        f_new = call(t + h, y_new)  # the next step's first stage (and the Hermite end slope)
    zeros = [tf.zeros_like(v) for v in y]
    scale = [atol + rtol * tf.maximum(tf.abs(a), tf.abs(b)) for a, b in zip(y, y_new)]
    err = lincomb(zeros, h, tableau.error, ks)
    ratio = tf.stop_gradient(rms([e / s for e, s in zip(err, scale)], mask))
    if tableau.error_low is not None:  # a second estimate, combined by the pair's own rule (dop853's)
        err_low = lincomb(zeros, h, tableau.error_low, ks)
        ratio_low = tf.stop_gradient(rms([e / s for e, s in zip(err_low, scale)], mask))
        positive = ratio > 0.0  # a zero main estimate is a zero ratio (dop853 guards its 0/0 so)
        combined = tableau.combine(tf.where(positive, ratio, tf.ones_like(ratio)), ratio_low)
        ratio = tf.where(positive, tf.cast(combined, ratio.dtype), tf.zeros_like(ratio))
    finite = tf.logical_and(tf.math.is_finite(ratio), all_finite(f_new))
    finite = tf.logical_and(finite, all_finite(y_new))
    return y_new, ks, f_new, ratio, finite


def attempt_implicit_step(tableau, call, t, y, k1, h, *, rtol, atol, mask):
    """One step of an ESDIRK pair (``tableau.implicit``), its stages solved by Newton.

    Returns ``(y_new, ks, f_new, error ratio, finite, converged, calls)``: ``converged``
    False when a stage's Newton iteration diverged or ran out of iterations (the step is
    then rejected and halved), ``calls`` the field evaluations it made (the Jacobian, one
    per attempt, not counted).
    """
    settings = dict(tableau.newton)
    hg = h * tableau.gamma
    kind = resolve_linear_solver(settings["linear_solver"], y, mask)
    lin = linearise(call, t, y, hg, mask, kind, krylov=settings["krylov"])
    scale = [tf.stop_gradient(atol + rtol * tf.abs(v)) for v in y]
    ks, converged, calls = [k1], tf.constant(True), tf.constant(0, tf.int32)
    stage = y
    for i in range(1, tableau.stages):
        known = lincomb(y, h, tableau.a[i][:i], ks)
        # Newton starts from a guess of the stage's k: the pair's predictor, or the previous stage's k
        weights = tableau.predictor[i - 1] if tableau.predictor is not None else (0.0,) * (i - 1) + (1.0,)
        guess = lincomb(known, hg, weights, ks)
        stage, k, ok, iterations = solve_stage(
            call, t + tableau.c[i] * h, known, hg, guess, lin, scale,
            kappa=newton_tolerance(settings["kappa"], rtol, y[0].dtype), max_iterations=settings["max_iterations"],
        )  # fmt: skip
        ks.append(k)
        converged = tf.logical_and(converged, ok)
        calls += iterations * stage_calls(lin)
    if tableau.fsal:  # stiffly accurate: the last stage is the new point, its k the next first stage
        y_new, f_new = stage, ks[-1]
    else:
        y_new = lincomb(y, h, tableau.b, ks)
        f_new = call(t + h, y_new)
        calls += 1
    zeros = [tf.zeros_like(v) for v in y]
    scale_new = [atol + rtol * tf.maximum(tf.abs(a), tf.abs(b)) for a, b in zip(y, y_new)]
    err = lincomb(zeros, h, tableau.error, ks)
    ratio = tf.stop_gradient(rms([e / s for e, s in zip(err, scale_new)], mask))
    finite = tf.logical_and(tf.math.is_finite(ratio), tf.logical_and(all_finite(f_new), all_finite(y_new)))
    return y_new, ks, f_new, ratio, finite, converged, calls


def next_step(controller, exponent, ratio, finite, accept, rejected, memory, direction):
    """The controller's proposal, clipped: ``(h_next, err_prev, h_prev)`` for the next attempt."""
    h = memory.h
    safe_ratio = tf.where(finite, tf.maximum(ratio, 1e-10), tf.ones_like(ratio))
    fac, fac_rej = controller.factors(safe_ratio, memory, exponent)
    fac = tf.clip_by_value(fac, 1.0 / controller.ifactor, 1.0 / controller.dfactor)
    h_acc = h / fac
    h_acc = tf.where(rejected, direction * tf.minimum(tf.abs(h_acc), tf.abs(h)), h_acc)
    h_rej = h / tf.minimum(fac_rej, 1.0 / controller.dfactor)
    h_next = tf.stop_gradient(tf.where(accept, h_acc, h_rej))
    err_prev = tf.where(accept, tf.maximum(ratio, 1e-4), memory.err_prev)
    h_prev = tf.stop_gradient(tf.where(accept, h, memory.h_prev))
    return h_next, err_prev, h_prev


def step_reason(finite, accept, h_next, t, t_end, tiny, converged=True):
    """The guards after a step: OK, NONFINITE, UNDERFLOW (a rejected step whose successor is
    negligible), or NEWTON (the same, when an implicit stage's iteration failed: ``converged``
    False; its values are not judged for finiteness)."""
    finite = tf.logical_or(finite, tf.logical_not(converged))
    reason = tf.where(finite, OK, NONFINITE)
    scale = tf.where(tf.math.is_finite(t_end), tf.maximum(tf.abs(t), tf.abs(t_end)), tf.abs(t))  # t_end may be inf
    underflow = tf.logical_and(tf.logical_not(accept), tf.abs(h_next) <= 4.0 * tiny * scale)
    underflow_reason = tf.where(converged, UNDERFLOW, NEWTON)
    return tf.where(tf.logical_and(finite, underflow), underflow_reason, reason)


def _start(p, t0, y0, first_step):
    """The loop's first state: f(t0), the first step (signed), the outputs at t0 and the starting reason."""
    f0 = p.call(t0, y0)
    nfe = tf.constant(1, tf.int32)
    finite0 = tf.logical_and(all_finite(y0), all_finite(f0))
    span = tf.abs(p.t_end - t0)
    if first_step is None:
        options = dict(rtol=p.rtol, atol=p.atol, mask=p.mask, direction=p.direction, tiny=p.tiny)
        h_abs, finite1, calls = initial_step(p.call, t0, y0, f0, span=span, order=p.tableau.order, **options)
        nfe += calls
        finite0 = tf.logical_and(finite0, finite1)
    else:
        h_abs = tf.cast(first_step, f0[0].dtype)
    usable = tf.logical_and(tf.math.is_finite(h_abs), h_abs > 0.0)
    h_abs = tf.minimum(tf.where(usable, h_abs, span), tf.maximum(span, p.tiny))
    h = tf.stop_gradient(p.direction * h_abs)
    reason = tf.where(finite0, OK, NONFINITE)
    reason = tf.where(times_ordered(t0, p.times), reason, UNORDERED)
    tas = [tf.TensorArray(y.dtype, size=p.n, element_shape=y.shape) for y in y0]
    tas.append(tf.TensorArray(h.dtype, size=p.n, element_shape=()))  # the step size in use at each time
    idx, tas = fill_until(p.times, t0, p.direction, tf.constant(0, tf.int32), tas, lambda i: y0 + [h_abs])  # at t0
    zero = tf.constant(0, tf.int32)
    state = dict(t=t0, y=list(y0), k1=f0, h=h, h_prev=h, err_prev=tf.constant(1e-4, h.dtype), streak=zero,
                 err_prev2=tf.constant(1e-4, h.dtype))  # fmt: skip
    record = ()
    if p.stride is not None:  # gradient="checkpoint": the accepted steps and every stride-th state
        slots = p.max_steps + 1  # a last scratch slot for attempts that are not recorded
        record = [tf.TensorArray(h.dtype, size=slots, element_shape=()) for _ in range(3)]
        record.append(tf.TensorArray(tf.int32, size=slots, element_shape=()))
        checkpoints = -(-p.max_steps // p.stride) + 1
        kept = _kept(p, y0, f0)
        record.append([tf.TensorArray(y.dtype, size=checkpoints, element_shape=y.shape) for y in kept])
        # the states of the last `stride` accepted steps, slot k % stride: the last segment's, which the
        # backward pass then need not rebuild (all of them when the solve takes at most `stride` steps)
        record.append([tf.TensorArray(y.dtype, size=p.stride, element_shape=y.shape) for y in kept])
    event = ()
    if p.event is not None:
        g0 = tf.cast(tf.reshape(p.event(t0, list(y0)), []), h.dtype)
        event = (g0, tf.constant(False), tf.zeros_like(h))
    return _Loop(**state, idx=idx, tas=tas, steps=zero, accepted=zero, nfe=nfe, reason=reason, record=record,
                 event=event)  # fmt: skip


def _finish(tas, idx, reason, y0, dtype, n):
    """Fill what was not reached with NaN, then blank everything on failure."""

    def body(i, tas):
        return i + 1, [ta.write(i, tf.fill(tf.shape(v), tf.constant(np.nan, dtype))) for ta, v in zip(tas, y0)]

    _, tas = tf.while_loop(lambda i, tas: i < n, body, (idx, tas), maximum_iterations=n)
    failed = tf.not_equal(reason, OK)
    return [tf.where(failed, tf.constant(np.nan, dtype), ta.stack()) for ta in tas]


# --------------------------------------------------------------------------- the integrator
FIELD_TRACED_ONCE = True  # a measurement switch (benchmarks/ode/odenet_first_step.py): False traces per call site


@tf.autograph.experimental.do_not_convert
class _Problem(NamedTuple):
    """What stays fixed during one :func:`integrate` solve."""

    call: object
    tableau: ButcherTableau
    controller: object
    times: tf.Tensor
    n: int
    t_end: tf.Tensor
    direction: tf.Tensor
    rtol: tf.Tensor
    atol: tf.Tensor
    mask: list
    tiny: tf.Tensor
    stretch: float
    max_steps: int = 10000
    stride: int | None = None  # checkpoint every `stride` accepted steps (gradient="checkpoint"), or None
    event: object = None  # event(t, flat) -> scalar: stop before the first accepted step it crosses zero in
    event_direction: float = 0.0  # +1 upward crossings only, -1 downward only, 0 either


class _Loop(NamedTuple):
    """The ``tf.while_loop`` state of :func:`integrate`."""

    t: tf.Tensor
    y: list
    k1: list
    h: tf.Tensor
    h_prev: tf.Tensor
    err_prev: tf.Tensor
    err_prev2: tf.Tensor
    streak: tf.Tensor
    idx: tf.Tensor
    tas: list
    steps: tf.Tensor
    accepted: tf.Tensor
    nfe: tf.Tensor
    reason: tf.Tensor
    record: list = ()  # with a stride: TensorArrays of the accepted steps' (t, h, t_new, idx) and the checkpoints
    event: tuple = ()  # with an event: (g at t, crossed, the step h that crossed)


def _record(p: _Problem, s: _Loop, h, t_new, idx):
    """Write this attempt's step at slot ``accepted`` (a rejected one is overwritten by the next
    attempt), its starting state to the ring of recent states at ``accepted % stride`` and, at
    every ``stride``-th accepted step, to the checkpoints (other attempts write a scratch slot past
    the end)."""
    if p.stride is None:
        return ()
    ts, hs, ends, ids, ckpts, recent = s.record
    k = s.accepted
    slot = tf.where(tf.equal(k % p.stride, 0), k // p.stride, ckpts[0].size() - 1)
    kept = _kept(p, s.y, s.k1)
    return [ts.write(k, s.t), hs.write(k, h), ends.write(k, t_new), ids.write(k, idx),
            [ta.write(slot, y) for ta, y in zip(ckpts, kept)],
            [ta.write(k % p.stride, y) for ta, y in zip(recent, kept)]]  # fmt: skip


def _kept(p: _Problem, y, k1):
    """What a checkpoint keeps of a step's start: the state, and for an implicit pair also the first
    stage it carries over from the step before (its last stage's (Y - known)/(hγ), not f(t, y)), so
    that a replay takes the step exactly as the forward solve did."""
    return list(y) + (list(k1) if p.tableau.implicit else [])


def _advance(p: _Problem, s: _Loop) -> _Loop:
    """One attempted step: the loop's body (accepted or not; outputs filled by dense output)."""
    rejected = tf.logical_and(tf.equal(s.streak, 0), s.steps > 0)
    # a pair without dense output ("step") ends its steps on the next solution time instead
    target = p.times[tf.minimum(s.idx, p.n - 1)] if p.tableau.hit_times else p.t_end
    h, last = end_of_interval(s.t, s.h, target, p.direction, p.stretch)
    options = dict(rtol=p.rtol, atol=p.atol, mask=p.mask)
    converged, calls = True, p.tableau.evaluations_per_step
    if p.tableau.implicit:
        y_new, ks, f_new, ratio, finite, converged, calls = attempt_implicit_step(
            p.tableau, p.call, s.t, s.y, s.k1, h, **options
        )
        finite = tf.logical_and(finite, converged)
    else:
        y_new, ks, f_new, ratio, finite = attempt_step(p.tableau, p.call, s.t, s.y, s.k1, h, **options)
    accept = tf.logical_and(finite, ratio <= 1.0)
    t_new = tf.where(last, target, s.t + h)
    within_tolerance = accept  # before an event turns the step down (not a rejection for the guards)
    event = ()
    if p.event is not None:  # a step that crosses the event is not taken: it is kept for locating the root
        g_prev, _, h_event = s.event
        g_new = tf.cast(tf.reshape(p.event(t_new, y_new), []), h.dtype)
        up = tf.logical_and(g_prev < 0.0, g_new >= 0.0)
        down = tf.logical_and(g_prev > 0.0, g_new <= 0.0)
        crossed = up if p.event_direction > 0 else down if p.event_direction < 0 else tf.logical_or(up, down)
        crossed = tf.logical_and(accept, crossed)
        accept = tf.logical_and(accept, tf.logical_not(crossed))
        event = (tf.where(accept, g_new, g_prev), crossed, tf.where(crossed, h, h_event))
    memory = StepMemory(h=h, h_prev=s.h_prev, err_prev=s.err_prev, streak=s.streak, err_prev2=s.err_prev2,
                        accepted=s.accepted)  # fmt: skip
    exponent = p.tableau.error_exponent
    h_next, err_prev, h_prev = next_step(p.controller, exponent, ratio, finite, accept, rejected, memory, p.direction)
    if p.tableau.implicit:  # a stage that did not converge: the step is halved (Hairer & Wanner's SDIRK codes)
        h_next = tf.where(converged, h_next, tf.stop_gradient(0.5 * h))

    def at(i):  # the state there, and the step in use there (before it was shortened to end the interval)
        return dense_output(p.tableau, s.t, h, s.y, y_new, ks, p.times[i], t_new, f_new) + [tf.abs(s.h)]

    idx, tas = fill_until(p.times, t_new, p.direction, s.idx, s.tas, enabled=accept, values=at)
    reason = step_reason(finite, within_tolerance, h_next, s.t, p.t_end, p.tiny, converged)
    record = _record(p, s, h, t_new, idx)
    return _Loop(
        t=tf.where(accept, t_new, s.t), y=where(accept, y_new, s.y), k1=where(accept, f_new, s.k1), h=h_next,
        h_prev=h_prev, err_prev=err_prev, err_prev2=tf.where(accept, s.err_prev, s.err_prev2),
        streak=tf.where(accept, s.streak + 1, 0), idx=idx, tas=tas,
        steps=s.steps + 1, accepted=s.accepted + tf.cast(accept, tf.int32),
        nfe=s.nfe + calls, reason=reason, record=record, event=event,
    )  # fmt: skip


def integrate(
    fn,
    t0,
    y0,
    times,
    *,
    rtol,
    atol,
    first_step=None,
    max_steps=10000,
    controller="predictive",
    safety=0.9,
    ifactor=10.0,
    dfactor=0.2,
    beta=0.04,
    norm_mask=None,
    tableau: ButcherTableau = DOPRI5,
    checkpoint_stride: int | None = None,
    event=None,
    event_direction: float = 0.0,
):
    """Integrate ``dy/dt = fn(t, y)`` from ``t0`` and return the states at ``times``.

    Builds ops only (run it inside ``tf.function(jit_compile=True)``); the
    time direction follows ``times[-1] - t0`` (backward when negative).

    Args:
        fn: ``fn(t, flat) -> flat``, ``flat`` a list of tensors of one float dtype.
        t0: scalar; y0: list of tensors.
        times: 1-D tensor of output times, monotone in the direction of integration,
            none before ``t0``. Its length must be static.
        rtol, atol: floats (atol may be a tensor broadcastable to each component).
        first_step: None for Hairer's selection, else the magnitude of the first step (a
            float or a scalar tensor; a non-finite or non-positive one: the whole span).
        max_steps: attempted-step budget; the loop never runs more iterations.
        controller: a name in :data:`odezoo.ode.controllers.CONTROLLERS` ("predictive",
            the default, or "pi") or a :class:`~odezoo.ode.controllers.Controller` object.
        safety, ifactor, dfactor, beta: a named controller's constants (Hairer's 0.9, 10,
            0.2; ``beta`` 0.04, "pi" only); ignored for a controller object.
        norm_mask: per-component booleans; False components are integrated but
            left out of the error norm (the adjoint's seminorm).
        tableau: the embedded pair, :data:`odezoo.ode.tableau.DOPRI5` by default (a registered
            pair's :func:`odezoo.ode.tableau.tableau_of`; FSAL or not).
        checkpoint_stride: None, or record what :mod:`odezoo.ode.checkpoint` replays: every
            accepted step's start, size, end and solution-time index, the state at the start
            of every ``checkpoint_stride``-th accepted step, and those of the last
            ``checkpoint_stride`` accepted steps, at slot k % stride (``info["record"]``, a dict;
            an implicit pair's "state" is the state's components followed by its carried first
            stage's).
        event, event_direction: None, or ``event(t, flat) -> scalar``: the solve stops before
            the first step whose end would have the event's sign change (from < 0 to >= 0,
            or > 0 to <= 0; ``event_direction`` +1 / -1 keeps one of the two); that step is
            not taken. ``info["event"]`` is then a dict: ``found`` (bool), and the step
            that crossed, ``t``, ``y``, ``k1`` (f at t, y) and ``h`` (:mod:`odezoo.ode.events`
            locates the root in it). Not with ``checkpoint_stride``.

    Returns:
        ``(outputs, info)``: ``outputs`` a list of (len(times), *shape) tensors
        (NaN where the solve failed), ``info`` a dict of scalar tensors:
        ``reason``, ``nfe``, ``steps``, ``accepted``, ``t``, and ``step_sizes``, of shape
        (len(times),): at each solution time, the magnitude of the step in use when the
        solve passed it (the controller's proposal for the accepted step that reached it,
        before :func:`end_of_interval` shortened it; the first step at ``t0``). The
        adjoint starts its backward solves from these.
    """
    dtype = check_dtypes(y0)
    controller = make_controller(controller, safety=safety, ifactor=ifactor, dfactor=dfactor, beta=beta)
    t0 = tf.cast(t0, dtype)
    times = tf.cast(tf.reshape(times, [-1]), dtype)
    if times.shape[0] is None:
        raise ValueError("dopri5 needs a static number of solution times.")
    t_end = times[-1]

    def evaluate(t, y):
        return [tf.cast(tf.convert_to_tensor(o), dtype) for o in fn(t, y)]

    # The field is traced once as a function of its own and called at every stage, instead of
    # being traced again at each of the 7-8 call sites (the start, the initial-step probe, six
    # stages): that re-tracing was over a third of ODE-Net's first training step
    # (benchmarks/ode/README.md, "first step"). TensorFlow inlines the calls before running or
    # compiling: the same computation (float64 results identical; float32 to rounding, as the
    # graph optimiser may order ops differently) at the same step time.
    call = tf.function(evaluate, autograph=False) if FIELD_TRACED_ONCE else evaluate
    if getattr(fn, "jacobian", None) is not None:  # a field that gives its own Jacobian (newton.jacobian)
        call.jacobian = fn.jacobian

    direction = tf.where(t_end >= t0, tf.constant(1.0, dtype), tf.constant(-1.0, dtype))
    mask = [True] * len(y0) if norm_mask is None else list(norm_mask)
    tiny = tf.constant(np.finfo(dtype.as_numpy_dtype).eps, dtype)
    stretch = 1.0 / controller.safety  # the last step may be this much longer than proposed
    max_steps = int(max_steps)
    stride = None if checkpoint_stride is None else int(checkpoint_stride)
    if event is not None and stride is not None:
        raise ValueError("An event cannot be combined with checkpoint_stride.")
    p = _Problem(call, tableau, controller, times, times.shape[0], t_end, direction, tf.cast(rtol, dtype),
                 tf.cast(atol, dtype), mask, tiny, stretch, max_steps, stride, event,
                 float(event_direction))  # fmt: skip
    start = _start(p, t0, y0, first_step)

    def running(s):
        go = tf.logical_and(tf.equal(s.reason, OK), tf.logical_and(s.idx < p.n, s.steps < max_steps))
        return go if event is None else tf.logical_and(go, tf.logical_not(s.event[1]))

    (s,) = tf.while_loop(running, lambda s: (_advance(p, s),), (start,), maximum_iterations=max_steps)
    short = tf.logical_and(tf.equal(s.reason, OK), s.idx < p.n)  # stopped before the last solution time
    if event is not None:
        short = tf.logical_and(short, tf.logical_not(s.event[1]))
    reason = tf.where(short, MAX_STEPS, s.reason)
    *outputs, step_sizes = _finish(s.tas, s.idx, reason, list(y0) + [start.h], dtype, p.n)
    info = dict(reason=reason, nfe=s.nfe, steps=s.steps, accepted=s.accepted, t=s.t, step_sizes=step_sizes)
    if event is not None:
        info["event"] = dict(found=s.event[1], t=s.t, y=list(s.y), k1=list(s.k1), h=s.event[2])
    if stride is not None:
        ts, hs, ends, ids, ckpts, recent = s.record
        info["record"] = dict(t=ts.stack(), h=hs.stack(), t_new=ends.stack(), idx=ids.stack(),
                              checkpoints=[ta.stack() for ta in ckpts], recent=[ta.stack() for ta in recent],
                              idx0=start.idx)  # fmt: skip
    return outputs, info
