"""Terminal events: integrate until g(t, y) crosses zero, with the event time differentiable.

:func:`odeint_event` runs odezoo's adaptive integrator with an event (the solve stops before
the first step that would cross it, :func:`odezoo.ode.integrator.integrate`), locates the
crossing inside that step by bisection on the pair's dense output (the cubic Hermite
interpolant for a pair without one, dopri8), then solves again from t0 to that time with the
requested gradient. The event time is differentiable by the implicit function theorem
(Chen, Amos & Nickel, "Learning neural event functions", ICLR 2021): at the root,

    dt_e = −(∂g/∂y·dy(t_e) + ∂g/∂θ) / (∂g/∂t + ∂g/∂y·f(t_e, y_e)),   dy_e = dy(t_e) + f(t_e, y_e)·dt_e,

with dy(t_e) the solve's own derivative at the fixed time t_e (the adjoint, by default). Both
come from one Newton step on g taken at the located root, t_e − g(t_e, y_e)/ġ with ġ held
constant: its value is the root (corrected by the second solve's own g), its derivative the
formula above. A grazing event (ġ = 0) has no such derivative: the results are then NaN.
"""

from __future__ import annotations

import dataclasses
import weakref

import numpy as np
import tensorflow as tf

from odezoo import checks
from odezoo.ode.compilation import compiled_function
from odezoo.ode.controllers import check_controller
from odezoo.ode.dispatch import odeint, solve
from odezoo.ode.independent import integrate_independent, row_implicit_stages, row_shaped, row_stages
from odezoo.ode.integrator import attempt_implicit_step, attempt_step, dense_output, integrate
from odezoo.ode.options import GRADIENTS, check_solver, embedded_pair
from odezoo.ode.status import NO_EVENT, OK, SolverError, raise_for_status, run_hook
from odezoo.ode.tableau import tableau_of

DIRECTIONS = (-1, 0, 1)
BISECTIONS = 64  # halvings of the crossing step (float64 reaches its last bit before this)


def _crossing_step(tableau, call, t, y, k1, h, *, rtol, atol):
    """The step that crossed, taken again: ``(tableau for its dense output, y_new, ks, f_new)``."""
    mask = [True] * len(y)
    if tableau.implicit:
        y_new, ks, f_new = attempt_implicit_step(tableau, call, t, y, k1, h, rtol=rtol, atol=atol, mask=mask)[:3]
    else:
        y_new, ks, f_new = attempt_step(tableau, call, t, y, k1, h, rtol=rtol, atol=atol, mask=mask)[:3]
    if tableau.dense_kind == "step":  # no interpolant (dopri8, the ESDIRK pairs): the cubic Hermite one
        tableau = dataclasses.replace(tableau, hit_times=False, dense=None, dense_poly=None)
    return tableau, y_new, ks, f_new


def _bisect(g, like):
    """The first θ in (0, 1] past the sign change of ``g(θ)`` from θ = 0, by bisection (elementwise)."""
    g_lo = g(tf.zeros_like(like))

    def body(i, lo, hi, g_lo):
        mid = 0.5 * (lo + hi)
        g_mid = g(mid)
        same = tf.equal(tf.sign(g_mid), tf.sign(g_lo))
        return i + 1, tf.where(same, mid, lo), tf.where(same, hi, mid), tf.where(same, g_mid, g_lo)

    def running(i, lo, hi, g_lo):
        return tf.logical_and(i < BISECTIONS, tf.reduce_any(lo < hi))

    start = (0, tf.zeros_like(like), tf.ones_like(like), g_lo)
    return tf.while_loop(running, body, start, maximum_iterations=BISECTIONS)[2]


def _locate(tableau, call, event, t, y, k1, h, *, rtol, atol):
    """The root of g in the step [t, t + h] that crossed it, by bisection on the dense output."""
    tableau, y_new, ks, f_new = _crossing_step(tableau, call, t, y, k1, h, rtol=rtol, atol=atol)
    t_new = t + h

    def g(theta):
        ti = t + theta * h
        yi = dense_output(tableau, t, h, y, y_new, ks, ti, t_new, f_new)
        return tf.cast(tf.reshape(event(ti, yi), []), h.dtype)

    return t + _bisect(g, h) * h  # the first point past the crossing, to the last bit of the bisection


def _locate_rows(tableau, call, event, t, y, k1, h, found, *, rtol, atol):
    """Per row (``t``, ``h``: (batch,)): the root of the row's event in its crossing step."""
    h = tf.where(found, h, tf.ones_like(h))  # rows without a crossing: any finite step (discarded)
    if tableau.implicit:  # retaken with its Newton stages, every row its own
        y_new, ks, f_new = row_implicit_stages(tableau, call, t, y, k1, h, rtol=rtol, atol=atol)[:3]
    else:
        y_new, ks, f_new = row_stages(tableau, call, t, y, k1, h)
    if tableau.dense_kind == "step":
        tableau = dataclasses.replace(tableau, hit_times=False, dense=None, dense_poly=None)
    rows = lambda x: row_shaped(x, y[0])  # noqa: E731

    def g(theta):
        ti = t + theta * h
        return event(ti, dense_output(tableau, rows(t), rows(h), y, y_new, ks, rows(ti), rows(t + h), f_new))

    return t + _bisect(g, h) * h


def _search(call, event, y0, t0, t_end, *, tableau, rtol, atol, max_steps, controller, direction, batch_mode):
    """The located event time(s), without gradient: ``(t_event, found, info)``; ``t_event`` NaN where
    no event was found, ``info`` the search's ``reason``, ``t`` (time reached), ``steps``, ``nfe``.

    ``call(t, flat)`` and ``event(t, flat)`` take ``t`` as a scalar (shared) or (batch,) (independent).
    """
    y0, t0, t_end = tf.stop_gradient(y0), tf.stop_gradient(t0), tf.stop_gradient(t_end)
    dtype = y0.dtype
    if batch_mode == "independent":
        batch = tf.shape(y0)[0]
        times = tf.stack([tf.broadcast_to(t0, [batch]), tf.broadcast_to(t_end, [batch])], 1)
        _, info = integrate_independent(lambda t, y: call(tf.reshape(t, [-1]), y), [y0], times,
                                        tf.fill([batch], 2), rtol=rtol, atol=atol, max_steps=max_steps,
                                        controller=controller, tableau=tableau, event=event,
                                        event_direction=direction)  # fmt: skip
        ev = info["event"]
        root = _locate_rows(tableau, call, event, ev["t"], ev["y"], ev["k1"], ev["h"], ev["found"], rtol=rtol,
                            atol=atol)  # fmt: skip
        nfe = info["iterations"] * tableau.evaluations_per_step + 2 + tableau.evaluations_per_step
        steps = tf.reduce_max(info["steps"])
        found = tf.logical_and(ev["found"], tf.equal(info["reason"], OK))
        rows_reason = tf.where(tf.equal(info["reason"], OK), tf.where(found, OK, NO_EVENT), info["reason"])
        t_event = tf.where(found, root, tf.constant(np.nan, dtype))
        return t_event, found, dict(reason=tf.reduce_max(rows_reason), t=tf.reduce_min(info["t"]), steps=steps,
                                    nfe=tf.cast(nfe, tf.int32), rows_reason=rows_reason, rows_t=info["t"])  # fmt: skip
    else:
        _, info = integrate(call, t0, [y0], tf.reshape(t_end, [1]), rtol=rtol, atol=atol, max_steps=max_steps,
                            controller=controller, tableau=tableau, event=event,
                            event_direction=direction)  # fmt: skip
        ev = info["event"]
        root = _locate(tableau, call, event, ev["t"], ev["y"], ev["k1"], ev["h"], rtol=rtol, atol=atol)
        nfe, steps = info["nfe"] + tableau.evaluations_per_step, info["steps"]
    found = tf.logical_and(ev["found"], tf.equal(info["reason"], OK))
    t_event = tf.where(found, root, tf.constant(np.nan, dtype))
    reason = tf.where(tf.equal(info["reason"], OK), tf.where(found, OK, NO_EVENT), info["reason"])
    return t_event, found, dict(reason=reason, t=info["t"], steps=steps, nfe=tf.cast(nfe, tf.int32),
                                rows_reason=reason, rows_t=info["t"])  # fmt: skip


def _newton_at_root(field, event, t_event, y_at, batch_mode):
    """One Newton step on g at the located root, ġ held constant: ``(t*, y*)`` whose values are the
    root and the state there and whose derivatives are the implicit function theorem's."""
    t_event = tf.stop_gradient(t_event)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch([t_event, y_at])
        g_probe = event(t_event, y_at)
    dg_dt, dg_dy = tape.gradient(g_probe, [t_event, y_at], unconnected_gradients=tf.UnconnectedGradients.ZERO)
    f_at = tf.stop_gradient(field(t_event, y_at))
    if batch_mode == "independent":  # row b's g reads row b only: the gradient of Σ g holds every row's
        slope = tf.reduce_sum(tf.reshape(dg_dy * f_at, [tf.shape(f_at)[0], -1]), 1)
        g_dot = tf.stop_gradient(dg_dt + slope)
        t_star = t_event - g_probe / g_dot
        return t_star, y_at + f_at * row_shaped(t_star - t_event, y_at)
    g_dot = tf.stop_gradient(dg_dt + tf.reduce_sum(dg_dy * f_at))
    t_star = t_event - g_probe / g_dot  # the inner tape watches only (t, y); the caller's sees everything
    return t_star, y_at + f_at * (t_star - t_event)


def event_solve(field, event, y0, t0, t_end, *, solver, rtol, atol, max_steps, gradient, controller, direction,
                batch_mode, on_forward=None, on_backward=None):  # fmt: skip
    """``(t_event, y_event)`` of a terminal event, built as ops (call it compiled, or in a tf.function).

    ``field(t, y)`` and ``event(t, y)`` take the state ``y`` and ``t`` as a scalar (shared) or of
    shape (batch,) (independent; ``event`` then returns (batch,)). Rows (or the solve) without an
    event before ``t_end`` are NaN, with reason NO_EVENT passed to ``on_forward``.
    """
    tableau = tableau_of(embedded_pair(solver))
    dtype = y0.dtype
    flat_call = lambda t, y: [field(t, y[0])]  # noqa: E731
    flat_event = lambda t, y: event(t, y[0])  # noqa: E731
    t_event, found, found_info = _search(flat_call, flat_event, y0, tf.cast(t0, dtype), tf.cast(t_end, dtype),
                                         tableau=tableau, rtol=rtol, atol=atol, max_steps=max_steps,
                                         controller=controller, direction=direction,
                                         batch_mode=batch_mode)  # fmt: skip

    def merged(info):  # the hooks see both solves: the search's calls and steps, its reason first
        if on_forward is None:
            return None
        reason = tf.where(tf.equal(found_info["reason"], OK), tf.cast(info["reason"], tf.int32), found_info["reason"])
        steps = tf.cast(info["steps"], tf.int32) + tf.cast(found_info["steps"], tf.int32)
        nfe = tf.cast(info["nfe"], tf.int32) + found_info["nfe"]
        return on_forward(dict(info, reason=reason, nfe=nfe, steps=steps))

    if batch_mode == "independent":
        batch = tf.shape(y0)[0]
        times = tf.stack([tf.broadcast_to(tf.cast(t0, dtype), [batch]), t_event], 1)
        (out,), rows = integrate_independent(lambda t, y: [field(tf.reshape(t, [-1]), y[0])], [y0], times,
                                             tf.fill([batch], 2), rtol=rtol, atol=atol, max_steps=max_steps,
                                             controller=controller, tableau=tableau)  # fmt: skip
        zero = tf.constant(0)
        info = dict(reason=tf.reduce_max(rows["reason"]), steps=tf.reduce_max(rows["steps"]),
                    nfe=rows["iterations"] * tableau.evaluations_per_step + 2, t=tf.reduce_min(rows["t"]))  # fmt: skip
        deps = run_hook(merged, info) + run_hook(on_backward, dict(nfe=zero, reason=zero, steps=zero, t=info["t"]))
        with tf.control_dependencies(deps):
            y_at = tf.identity(out[1])
    else:
        states, _ = solve(field, y0, t0, tf.reshape(t_event, [1]), solver=solver, rtol=rtol, atol=atol,
                          max_steps=max_steps, gradient=gradient, controller=controller, on_forward=merged,
                          on_backward=on_backward)  # fmt: skip
        y_at = states[0]
    return _newton_at_root(field, event, t_event, y_at, batch_mode)


_search_cache = weakref.WeakKeyDictionary()  # f -> event_fn -> options -> the compiled search


def _compiled_search(f, event_fn, key, search):
    """The XLA-compiled event search of an eager call, cached per (f, event_fn, options) when both
    can be weakly referenced (a loop over the same functions compiles once)."""
    try:
        per_event = _search_cache.setdefault(f, weakref.WeakKeyDictionary())
        per_key = per_event.setdefault(event_fn, {})
    except TypeError:
        return compiled_function(search, "xla")
    if key not in per_key:
        per_key[key] = compiled_function(search, "xla")
    return per_key[key]


def odeint_event(
    f,
    y0,
    t0,
    event_fn,
    *,
    direction=0,
    t_max=None,
    solver="dopri5",
    rtol=1e-7,
    atol=1e-9,
    max_steps=10000,
    gradient="auto",
    controller="predictive",
    batch_mode="shared",
):
    """Integrate ``dy/dt = f(t, y)`` from ``(t0, y0)`` until ``event_fn(t, y)`` crosses zero.

    Args:
        f: ``f(t, y)`` returning dy/dt shaped like ``y``.
        y0: the initial state (a tensor); t0: the initial time (a scalar).
        event_fn: ``g(t, y)`` returning a scalar; the event is its first sign change after t0
            (a zero at t0 itself is not one). It may read ``tf.Variable``s: they receive
            gradients too.
        direction: 0 (default) any crossing, +1 only from negative to positive, -1 only from
            positive to negative.
        t_max: None (no limit but ``max_steps``) or the time by which the event must happen
            (after t0; the solve runs forward in time).
        solver: an embedded pair of odezoo's integrator ("dopri5", default, "tsit5", "bosh3",
            "heun_euler", "dopri8").
        rtol, atol, max_steps, controller: as for :func:`odezoo.odeint`.
        gradient: the gradient of the solve to the event time ("auto" = "adjoint", "backprop",
            "checkpoint").
        batch_mode: "shared" (one event for the whole state). "independent" (an event per
            row) is not available yet: a ValueError.

    Returns:
        ``(t_event, y_event)``: a scalar and a tensor shaped like ``y0``, both differentiable
        with respect to ``y0``, ``t0`` and the variables ``f`` and ``event_fn`` read, by the
        implicit function theorem (module docstring), so restarting at an event (a bouncing
        ball) keeps the chain differentiable. ``t_max`` gets no gradient.

    Raises:
        SolverError: (eager calls) no event before ``t_max`` or within ``max_steps``, or the
            solve failed. Inside a ``tf.function`` the results are NaN instead.
    """
    direction = checks.choice("direction", direction, DIRECTIONS)
    checks.choice("batch_mode", batch_mode, ("shared", "independent"))
    tableau = _event_pair("solver", solver, batch_mode)
    checks.positive_int("max_steps", max_steps)
    checks.choice("gradient", gradient, GRADIENTS)
    if batch_mode == "independent" and gradient not in ("auto", "backprop"):
        raise checks.bad_value("gradient", gradient, "'auto' or 'backprop' with batch_mode='independent'")
    check_controller("controller", controller)
    checks.real("t_max", t_max, finite=False, allow_none=True)
    y0 = tf.convert_to_tensor(y0)
    if not y0.dtype.is_floating:
        y0 = tf.cast(y0, tf.float32)
    if batch_mode == "independent" and (y0.shape.rank is None or y0.shape.rank < 1):
        raise ValueError(f"batch_mode='independent' needs y0 with a leading batch axis. Received shape {y0.shape}.")
    dtype = y0.dtype
    t0_given = t0
    t0 = tf.cast(t0, dtype)
    if batch_mode == "independent" and t0.shape.rank not in (0, 1):
        raise ValueError(f"odeint_event's t0 is a scalar or (batch,) with batch_mode='independent'. Received shape "
                         f"{t0.shape}.")  # fmt: skip
    horizon = np.inf if t_max is None else t_max
    t_end = tf.cast(horizon, dtype)
    field, event = _wrapped(f, event_fn, dtype, batch_mode)

    # ∂y(t; t0, y0)/∂t0 = −Φ(t, t0)·f(t0, y0): the start time's derivative is that of y0 along
    # −f(t0, y0), so a restart at an earlier event's (differentiable) time passes its gradient on.
    if isinstance(t0_given, (tf.Tensor, tf.Variable)):  # a Python number has no gradient to pass on
        t0_const = tf.stop_gradient(t0)
        if batch_mode == "independent":
            rows = tf.shape(y0)[:1]
            t0_rows = tf.broadcast_to(t0_const, rows)
            y0 = y0 - tf.stop_gradient(field(t0_rows, y0)) * row_shaped(tf.broadcast_to(t0, rows) - t0_rows, y0)
        else:
            y0 = y0 - tf.stop_gradient(field(t0_const, y0)) * (t0 - t0_const)
    options = dict(solver=solver, rtol=rtol, atol=atol, max_steps=max_steps, controller=controller)
    if not tf.executing_eagerly():
        return event_solve(field, event, y0, t0, t_end, gradient=gradient, direction=direction,
                           batch_mode=batch_mode, **options)  # fmt: skip
    from tensorflow.python.eager import record  # noqa: PLC0415  (as ODEBlock: no tape through the search)

    def search(y0, t0, t_end):
        flat_call = lambda t, y: [field(t, y[0])]  # noqa: E731
        flat_event = lambda t, y: event(t, y[0])  # noqa: E731
        return _search(flat_call, flat_event, y0, t0, t_end, tableau=tableau, rtol=rtol, atol=atol,
                       max_steps=max_steps, controller=controller, direction=direction,
                       batch_mode=batch_mode)  # fmt: skip

    key = (solver, float(rtol), float(atol), int(max_steps), repr(controller), direction, dtype.name, batch_mode)
    compiled = _compiled_search(f, event_fn, key, search)
    compiled.get_concrete_function(y0, t0, t_end)  # traced while tapes record: an implicit pair's Newton
    with record.stop_recording():  # Jacobian is a tape (under stop_recording it would be zero)
        t_event, found, info = compiled(y0, t0, t_end)
    what = "odeint_event"
    reasons = np.reshape(info["rows_reason"].numpy(), [-1])
    bad = np.flatnonzero(reasons != OK)
    if bad.size:
        b = int(bad[0])
        if batch_mode == "independent":
            what = f"odeint_event (batch_mode='independent', row {b} of {reasons.size})"
        if reasons[b] == NO_EVENT:
            raise SolverError(
                f"{what} with {solver!r}: event_fn did not cross zero (direction={direction}) between "
                f"t0 and t_max={horizon!r}; time reached t={float(np.reshape(info['rows_t'], [-1])[b]):.6g}."
            )
        raise_for_status(reasons[b], rtol=rtol, atol=atol, time_reached=np.reshape(info["rows_t"], [-1])[b],
                         num_steps=info["steps"], max_steps=max_steps, what=what, solver=solver)  # fmt: skip
    if batch_mode == "independent":
        start = tf.broadcast_to(t0, tf.shape(t_event))
        ys = odeint(f, y0, tf.stack([start, t_event], 1), solver=solver, rtol=rtol, atol=atol, max_steps=max_steps,
                    gradient="backprop", controller=controller, batch_mode="independent")  # fmt: skip
    else:
        ys = odeint(f, y0, tf.stack([t0, t_event]), solver=solver, rtol=rtol, atol=atol, max_steps=max_steps,
                    gradient=gradient, controller=controller)  # fmt: skip
    return _newton_at_root(field, event, t_event, ys[-1], batch_mode)


def _event_pair(name, solver, batch_mode):
    """The tableau of an event solve's ``solver`` (an embedded pair of odezoo's integrator)."""
    pair = embedded_pair(check_solver(solver))  # dopri5 too: its tableau_of is DOPRI5
    if pair is None:
        raise checks.bad_value(
            name, solver, "an embedded pair of odezoo's integrator: 'dopri5', 'tsit5', 'bosh3', 'heun_euler', "
            "'dopri8', 'kvaerno3', 'kvaerno5' or another registered one",
        )  # fmt: skip
    return tableau_of(pair)


def _wrapped(f, event_fn, dtype, batch_mode):
    """``f`` and ``event_fn`` in the event solve's convention: ``t`` a scalar (shared) or (batch,)
    (independent: the user's functions get it shaped (batch, 1, ..., 1), as the field's is)."""
    independent = batch_mode == "independent"

    def field(t, y):
        return tf.cast(tf.convert_to_tensor(f(row_shaped(t, y) if independent else t, y)), dtype)

    def event(t, y):
        g = tf.convert_to_tensor(event_fn(row_shaped(t, y) if independent else t, y))
        if independent:
            if g.shape.rank is not None and g.shape.num_elements() is not None and y.shape[0] is not None \
                    and g.shape.num_elements() != y.shape[0]:  # fmt: skip
                raise ValueError(f"event_fn must return one value per row, shape ({y.shape[0]},) with "
                                 f"batch_mode='independent'. Received shape {g.shape}.")  # fmt: skip
            return tf.cast(tf.reshape(g, tf.shape(t)), dtype)
        if g.shape.num_elements() not in (None, 1):
            raise ValueError(f"event_fn must return a scalar (one event for the solve; batch_mode='independent' "
                             f"takes one per row). Received shape {g.shape}.")  # fmt: skip
        return tf.cast(tf.reshape(g, []), dtype)

    return field, event


__all__ = ["odeint_event", "event_solve", "DIRECTIONS"]
