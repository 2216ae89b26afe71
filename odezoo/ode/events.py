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
from odezoo.ode.integrator import attempt_step, dense_output, integrate
from odezoo.ode.options import GRADIENTS, check_solver, embedded_pair
from odezoo.ode.status import OK, SolverError, raise_for_status
from odezoo.ode.tableau import tableau_of

DIRECTIONS = (-1, 0, 1)
BISECTIONS = 64  # halvings of the crossing step (float64 reaches its last bit before this)


def _locate(tableau, call, event, t, y, k1, h, *, rtol, atol):
    """The root of g in the step [t, t + h] that crossed it, by bisection on the dense output."""
    y_new, ks, f_new, _, _ = attempt_step(tableau, call, t, y, k1, h, rtol=rtol, atol=atol, mask=[True] * len(y))
    if tableau.dense_kind == "step":  # no interpolant (dopri8): the cubic Hermite one through the step
        tableau = dataclasses.replace(tableau, hit_times=False, dense=None, dense_poly=None)
    t_new = t + h

    def at(theta):
        ti = t + theta * h
        return ti, dense_output(tableau, t, h, y, y_new, ks, ti, t_new, f_new)

    def g(theta):
        ti, yi = at(theta)
        return tf.cast(tf.reshape(event(ti, yi), []), h.dtype)

    g_lo = g(tf.zeros_like(h))

    def body(i, lo, hi, g_lo):
        mid = 0.5 * (lo + hi)
        g_mid = g(mid)
        same = tf.equal(tf.sign(g_mid), tf.sign(g_lo))
        return i + 1, tf.where(same, mid, lo), tf.where(same, hi, mid), tf.where(same, g_mid, g_lo)

    def running(i, lo, hi, g_lo):
        return tf.logical_and(i < BISECTIONS, lo < hi)

    one = tf.ones_like(h)
    _, lo, hi, _ = tf.while_loop(running, body, (0, tf.zeros_like(h), one, g_lo), maximum_iterations=BISECTIONS)
    return t + hi * h  # the first point past the crossing, to the last bit of the bisection


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
    if batch_mode == "independent":
        raise ValueError(
            "odeint_event(batch_mode='independent') is not available yet: every row with its own "
            "event needs the independent-systems integrator. Use batch_mode='shared' (one event)."
        )
    pair = embedded_pair(check_solver(solver))  # dopri5 too: its tableau_of is DOPRI5
    if pair is None:
        raise checks.bad_value(
            "solver",
            solver,
            "an embedded pair of odezoo's integrator: 'dopri5', 'tsit5', 'bosh3', 'heun_euler', "
            "'dopri8' or another registered one",
        )
    tableau = tableau_of(pair)
    checks.positive_int("max_steps", max_steps)
    checks.choice("gradient", gradient, GRADIENTS)
    check_controller("controller", controller)
    checks.real("t_max", t_max, finite=False, allow_none=True)
    y0 = tf.convert_to_tensor(y0)
    if not y0.dtype.is_floating:
        y0 = tf.cast(y0, tf.float32)
    dtype = y0.dtype
    t0_given = t0
    t0 = tf.cast(t0, dtype)
    horizon = np.inf if t_max is None else t_max
    t_end = tf.cast(horizon, dtype)

    def field(t, y):
        return tf.cast(tf.convert_to_tensor(f(t, y)), dtype)

    def event(t, y):
        return tf.cast(tf.reshape(tf.convert_to_tensor(event_fn(t, y)), []), dtype)

    def search(y0, t0, t_end):
        """The located event time (no gradient): ``(t_event, found, reason, t_reached, steps)``."""
        y0, t0, t_end = tf.stop_gradient(y0), tf.stop_gradient(t0), tf.stop_gradient(t_end)
        flat_call = lambda t, y: [field(t, y[0])]  # noqa: E731
        flat_event = lambda t, y: event(t, y[0])  # noqa: E731
        _, info = integrate(flat_call, t0, [y0], tf.reshape(t_end, [1]), rtol=rtol, atol=atol, max_steps=max_steps,
                            controller=controller, tableau=tableau, event=flat_event,
                            event_direction=direction)  # fmt: skip
        ev = info["event"]
        t_root = _locate(tableau, flat_call, flat_event, ev["t"], ev["y"], ev["k1"], ev["h"], rtol=rtol, atol=atol)
        found = tf.logical_and(ev["found"], tf.equal(info["reason"], OK))
        t_event = tf.where(found, t_root, tf.constant(np.nan, dtype))
        return t_event, found, info["reason"], info["t"], info["steps"]

    # ∂y(t; t0, y0)/∂t0 = −Φ(t, t0)·f(t0, y0): the start time's derivative is that of y0 along
    # −f(t0, y0), so a restart at an earlier event's (differentiable) time passes its gradient on.
    if isinstance(t0_given, (tf.Tensor, tf.Variable)):  # a Python number has no gradient to pass on
        t0_const = tf.stop_gradient(t0)
        y0 = y0 - tf.stop_gradient(field(t0_const, y0)) * (t0 - t0_const)
    eager = tf.executing_eagerly()
    if eager:
        from tensorflow.python.eager import record  # noqa: PLC0415  (as ODEBlock: no tape through the search)

        key = (solver, float(rtol), float(atol), int(max_steps), repr(controller), direction, dtype.name)
        with record.stop_recording():
            t_event, found, reason, t_reached, steps = _compiled_search(f, event_fn, key, search)(y0, t0, t_end)
        raise_for_status(reason, rtol=rtol, atol=atol, time_reached=t_reached, num_steps=steps,
                         max_steps=max_steps, what="odeint_event", solver=solver)  # fmt: skip
        if not bool(found):
            raise SolverError(
                f"odeint_event with {solver!r}: event_fn did not cross zero (direction={direction}) "
                f"between t0={float(t0):.6g} and t_max={horizon!r}; time reached t={float(t_reached):.6g}."
            )
        ys = odeint(f, y0, tf.stack([t0, t_event]), solver=solver, rtol=rtol, atol=atol, max_steps=max_steps,
                    gradient=gradient, controller=controller)  # fmt: skip
        y_at = ys[-1]
    else:
        t_event, found, _, _, _ = search(y0, t0, t_end)
        states, _ = solve(field, y0, t0, tf.reshape(t_event, [1]), solver=solver, rtol=rtol, atol=atol,
                          max_steps=max_steps, gradient=gradient, controller=controller)  # fmt: skip
        y_at = states[0]
    t_event = tf.stop_gradient(t_event)
    # One Newton step on g at the root, ġ held constant: the implicit function theorem's derivative.
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch([t_event, y_at])
        g_probe = event(t_event, y_at)
    dg_dt, dg_dy = tape.gradient(g_probe, [t_event, y_at], unconnected_gradients=tf.UnconnectedGradients.ZERO)
    f_at = tf.stop_gradient(field(t_event, y_at))
    g_dot = tf.stop_gradient(dg_dt + tf.reduce_sum(dg_dy * f_at))
    t_star = t_event - g_probe / g_dot  # the inner tape watches only (t, y); the caller's sees everything
    y_star = y_at + f_at * (t_star - t_event)
    return t_star, y_star


__all__ = ["odeint_event", "DIRECTIONS"]
