"""One dispatcher, :func:`solve`, for every solver, and the functional :func:`odeint`.

``solve`` serves :class:`odezoo.ODEBlock` and :func:`odeint`: odezoo's own
``"dopri5"`` (:mod:`odezoo.ode.integrator`, :mod:`odezoo.ode.adjoint`), tfp's
``DormandPrince`` behind guards (``"tfp_dopri5"``), tfp's ``BDF`` per sample
(``"bdf"``) (:mod:`odezoo.ode.tfp`) and every registered fixed-grid scheme
(``"euler"``, ``"rk4"``, a third party's; :mod:`odezoo.ode.fixed_grid`), run with
the same field for all of its ``num_fields``. Every solve runs compiled (eager adaptive
solving is ~16x slower), by XLA or by TensorFlow's graph executor
(:mod:`odezoo.ode.compilation`).

Failures never hang and never return silent numbers: every solver (the fixed
grids too) returns NaN states and a status (:data:`odezoo.ode.REASONS`);
:class:`odezoo.SolverError` is raised in Python where the status is concrete.
"""

from __future__ import annotations

import weakref

import keras
import numpy as np
import tensorflow as tf

from odezoo import checks
from odezoo.ode.adjoint import adjoint_solve
from odezoo.ode.checkpoint import checkpoint_solve
from odezoo.ode.controllers import check_controller
from odezoo.ode.compilation import check_compile, compiled_function, resolve_compile, uses_convolution
from odezoo.ode.fixed_grid import fixed_grid_solve, static_times
from odezoo.ode.integrator import integrate
from odezoo.ode.options import (
    INDEPENDENT_GRADIENTS,
    TFP_SOLVERS,
    check_options,
    check_solver,
    embedded_pair,
    is_adaptive,
    resolve_gradient,
)
from odezoo.ode.tableau import DOPRI5, tableau_of
from odezoo.ode.status import NONFINITE, OK, raise_for_status, run_hook
from odezoo.ode.tfp import TFPGuard, tfp_solve


def solve(
    f,
    y0,
    t0,
    times,
    *,
    solver="dopri5",
    rtol=1e-3,
    atol=1e-6,
    first_step=None,
    max_steps=10000,
    num_steps=None,
    step_size=None,
    gradient="auto",
    guard=None,
    batch_axis=None,
    on_forward=None,
    on_backward=None,
    controller="predictive",
    batch_mode="shared",
):
    """Solve ``dy/dt = f(t, y)`` for a single tensor ``y0``; build ops only (call it compiled).

    Returns ``(states, info)``: ``states`` of shape (len(times), *y0.shape),
    ``info`` a dict of scalar tensors (``reason``, ``nfe``, ``steps``, ``t``).
    """
    if batch_mode == "independent":
        return _solve_independent(f, y0, t0, times, solver=solver, rtol=rtol, atol=atol, first_step=first_step,
                                  max_steps=max_steps, controller=controller, gradient=gradient,
                                  on_forward=on_forward, on_backward=on_backward)  # fmt: skip
    gradient = resolve_gradient(solver, gradient, num_steps=num_steps, step_size=step_size)
    dtype = y0.dtype
    if solver not in TFP_SOLVERS and is_adaptive(solver, num_steps, step_size):
        outs, info = solve_list(lambda t, y: [f(t, y[0])], [y0], t0, times, solver=solver, rtol=rtol, atol=atol,
                                first_step=first_step, max_steps=max_steps, controller=controller, gradient=gradient,
                                on_forward=on_forward, on_backward=on_backward)  # fmt: skip
        return outs[0], info
    if controller != "predictive":
        raise ValueError(
            f"controller={controller!r} steers odezoo's adaptive integrator; solver={solver!r} "
            f"({'tfp' if solver in TFP_SOLVERS else 'a fixed grid'}) has no use for it: leave it 'predictive'."
        )
    if solver in TFP_SOLVERS:
        if guard is None:
            raise ValueError(f"solver={solver!r} needs a TFPGuard (internal).")
        return tfp_solve(
            solver,
            f,
            y0,
            t0,
            times,
            rtol=rtol,
            atol=atol,
            first_step=first_step,
            max_steps=max_steps,
            guard=guard,
            batch_axis=batch_axis,
            on_forward=on_forward,
            on_backward=on_backward,
        )
    states, nfe, steps = fixed_grid_solve(solver, f, y0, t0, times, num_steps=num_steps, step_size=step_size)
    # the same status as dopri5's: a non-finite state anywhere on the grid fails the solve
    finite = tf.reduce_all(tf.math.is_finite(states))
    reason = tf.where(finite, OK, NONFINITE)
    states = tf.where(finite, states, tf.constant(np.nan, dtype))
    t_end = tf.cast(tf.reshape(times, [-1])[-1], dtype)
    info = dict(
        reason=reason,
        nfe=tf.constant(nfe),
        steps=tf.constant(steps),
        t=tf.where(finite, t_end, tf.constant(np.nan, dtype)),
    )
    deps = run_hook(on_forward, info)
    deps += run_hook(
        on_backward, dict(nfe=tf.constant(0), reason=tf.constant(0), steps=tf.constant(0), t=tf.cast(t0, dtype))
    )
    with tf.control_dependencies(deps):
        states = tf.identity(states)
    return states, info


def solve_list(fn, ys, t0, times, *, solver, gradient, rtol=1e-3, atol=1e-6, first_step=None, max_steps=10000,
               controller="predictive", norm_mask=None, on_forward=None, on_backward=None):  # fmt: skip
    """An embedded pair on odezoo's integrator (shared batch mode) for a flat list of states.

    ``fn(t, ys) -> list`` of derivatives; ``gradient`` resolved ("adjoint", "checkpoint" or
    "backprop"); ``norm_mask``: per-component booleans, False ones integrated but left out of
    the forward solve's error norm. Returns ``(outputs, info)``, every output (len(times), ...).
    """
    dtype = ys[0].dtype
    options = dict(rtol=rtol, atol=atol, first_step=first_step, max_steps=max_steps, controller=controller)
    if solver != "dopri5":  # a registered embedded pair, on odezoo's integrator
        options["tableau"] = tableau_of(embedded_pair(solver))
    if norm_mask is not None:
        options["norm_mask"] = list(norm_mask)
    if gradient in ("adjoint", "checkpoint"):
        custom = adjoint_solve if gradient == "adjoint" else checkpoint_solve
        return custom(lambda t, y, cs: fn(t, y), t0, list(ys), times, [], options=options, on_forward=on_forward,
                      on_backward=on_backward)  # fmt: skip
    outs, info = integrate(fn, t0, list(ys), times, **options)
    info = dict(info)
    deps = run_hook(on_forward, info)
    deps += run_hook(
        on_backward, dict(nfe=tf.constant(0), reason=tf.constant(0), steps=tf.constant(0), t=tf.cast(t0, dtype))
    )
    with tf.control_dependencies(deps):
        outs = [tf.identity(o) for o in outs]
    return outs, info


def _solve_independent(f, y0, t0, times, *, solver, gradient, on_forward, on_backward, **options):
    """:func:`solve` with every row of ``y0`` solved on its own over the shared ``times``; the
    info summarises the rows (the worst reason, the batch's field calls, the most steps)."""
    dtype = y0.dtype
    if solver != "dopri5":
        options["tableau"] = tableau_of(embedded_pair(solver))
    grid = tf.concat([tf.reshape(tf.cast(t0, dtype), [1]), tf.cast(tf.reshape(times, [-1]), dtype)], 0)
    batch = tf.shape(y0)[0]
    out, rows = _independent(f, y0, tf.tile(grid[None], [batch, 1]), tf.fill([batch], grid.shape[0]),
                             gradient=gradient, options=options, on_backward=on_backward)  # fmt: skip
    per_step = options.get("tableau", DOPRI5).evaluations_per_step
    start = 2 if options.get("first_step") is None else 1  # f(t0), and Hairer's probe
    info = dict(reason=tf.reduce_max(rows["reason"]), nfe=rows["iterations"] * per_step + start,
                steps=tf.reduce_max(rows["steps"]), accepted=tf.reduce_max(rows["accepted"]),
                t=tf.reduce_min(rows["t"]))  # fmt: skip
    deps = run_hook(on_forward, info)
    if gradient == "backprop":
        zero = tf.constant(0)
        deps += run_hook(on_backward, dict(nfe=zero, reason=zero, steps=zero, t=grid[0]))
    with tf.control_dependencies(deps):
        out = tf.identity(out[1:])
    return out, info


def _independent(f, y0, times, lengths, *, gradient, options, on_backward=None):
    """Every row solved on its own: ``(states (T, batch, ...), per-row info)``; ``gradient`` "auto"
    or "adjoint" (:mod:`odezoo.ode.independent_adjoint`), or "backprop" (through the loop)."""
    from odezoo.ode.independent import integrate_independent
    from odezoo.ode.independent_adjoint import independent_adjoint_solve

    if gradient == "backprop":
        (out,), rows = integrate_independent(lambda t, y: [f(t, y[0])], [y0], times, lengths, **options)
    else:
        (out,), rows = independent_adjoint_solve(lambda t, y, cs: [f(t, y[0])], [y0], times, lengths, [],
                                                 options=options, on_backward=on_backward)  # fmt: skip
    return out, rows


# --------------------------------------------------------------------------- odeint
def _check_static_grid(t):
    """A ValueError for known times that are not finite and strictly monotone (run-time ones get a status)."""
    tv = tf.get_static_value(t)
    if tv is None or tv.size < 2:
        return
    d = np.diff(tv)
    if not np.all(np.isfinite(tv)) or not (np.all(d > 0) or np.all(d < 0)):
        raise checks.bad_value(
            "t",
            tv.tolist(),
            "finite times strictly increasing or strictly decreasing from t[0] (no repeated or out-of-order times)",
        )


_ODEINT_KEYS = ("first_step", "max_steps", "num_steps", "step_size", "gradient", "compile", "controller", "batch_mode",
                "t_mask")  # fmt: skip
BATCH_MODES = ("shared", "independent")
_odeint_cache = weakref.WeakKeyDictionary()


def _odeint_compiled(f, key, run, *, cacheable, mode):
    """The compiled ``run`` of an eager :func:`odeint` call, cached per field and options when ``cacheable``."""
    try:
        per_f = _odeint_cache.setdefault(f, {})
    except TypeError:  # a field that cannot be weakly referenced: compiled per call
        per_f = {}
    compiled = per_f.get(key) if cacheable else None
    if compiled is None:
        compiled = compiled_function(run, mode)
        if cacheable:
            per_f[key] = compiled
    return compiled


def odeint(f, y0, t, *, solver="dopri5", rtol=1e-7, atol=1e-9, **options):
    """Solve ``dy/dt = f(t, y)`` at the times ``t`` (torchdiffeq's form).

    Args:
        f: any callable ``f(t, y)`` returning dy/dt shaped like ``y``.
        y0: initial state (a tensor), at time ``t[0]``.
        t: 1-D tensor of times, starting at t0 and strictly monotone (increasing or decreasing);
            known times out of order are a ValueError, run-time ones fail with status 4.
        solver: "dopri5" (default; odezoo's own), another registered embedded pair
            ("tsit5", "bosh3", "heun_euler", "dopri8"; adaptive unless given a grid),
            "tfp_dopri5", "bdf", or a registered fixed-grid scheme ("euler", "rk4", ...).
        rtol, atol: tolerances of the adaptive solvers.
        **options: ``first_step``, ``max_steps`` (default 10000), ``num_steps``
            or ``step_size`` (fixed grids), ``gradient`` ("auto", "adjoint", "backprop",
            "checkpoint": :mod:`odezoo.ode.checkpoint`),
            ``compile`` ("auto", "xla", "graph": how an eager call compiles the solve,
            :mod:`odezoo.ode.compilation`; inside your own ``tf.function`` yours decides;
            "auto" with ``gradient="backprop"`` on an adaptive solver is "graph", as a
            gradient through an XLA-compiled loop cannot be taken outside it),
            ``batch_mode`` ("shared", default: one step for the batch; "independent": every
            row of ``y0`` its own steps, times and status, :mod:`odezoo.ode.independent`; ``t``
            may then be (batch, T), each row starting at its own ``t[b, 0]``, with ``t_mask``,
            a (batch, T) boolean prefix mask, for ragged lengths; the field then receives t of
            shape (batch, 1, ..., 1); embedded pairs (the ESDIRK ones per row); gradient "auto" =
            "adjoint", every row's adjoint on its own steps (:mod:`odezoo.ode.independent_adjoint`), or
            "backprop"; NaN past a row's length).

    Returns:
        The states at ``t``, shape (len(t), *y0.shape); ``[0]`` is ``y0``.

    Raises:
        SolverError: (eager calls) the solve failed: budget, NaN/Inf, step underflow.
            Inside a ``tf.function`` the failed states are NaN instead.
    """
    checks.check_keys("odeint()", options, _ODEINT_KEYS)
    solver = check_solver(solver)
    batch_mode = options.pop("batch_mode", "shared")
    if batch_mode not in BATCH_MODES:
        raise checks.bad_value("batch_mode", batch_mode, f"one of {BATCH_MODES}")
    if batch_mode == "independent":
        return _odeint_independent(f, y0, t, solver=solver, rtol=rtol, atol=atol, **options)
    if "t_mask" in options:
        raise ValueError("t_mask (ragged solution times per row) needs batch_mode='independent'.")
    max_steps = options.get("max_steps", 10000)
    opts = dict(
        rtol=rtol,
        atol=atol,
        first_step=options.get("first_step"),
        max_steps=max_steps,
        num_steps=options.get("num_steps"),
        step_size=options.get("step_size"),
    )
    check_options(solver, **opts)
    opts["controller"] = check_controller("controller", options.get("controller", "predictive"))
    gradient = options.get("gradient", "auto")
    resolved = resolve_gradient(solver, gradient, num_steps=opts["num_steps"], step_size=opts["step_size"])
    compile_mode = check_compile("compile", options.get("compile", "auto"))
    y0 = tf.convert_to_tensor(y0)
    if not y0.dtype.is_floating:
        y0 = tf.cast(y0, keras.config.floatx())
    t = tf.cast(tf.reshape(tf.convert_to_tensor(t), [-1]), y0.dtype)
    _check_static_grid(t)

    fixed = not is_adaptive(solver, opts["num_steps"], opts["step_size"])
    static_t = None
    if fixed:  # a fixed grid is planned in Python: the times must be known while tracing
        _, static_t = static_times(0.0, t)
        static_t = tuple(static_t)

    def run(y0, t, guard_state):
        guard = TFPGuard(guard_state, 0) if guard_state is not None else None
        t0, ts = t[0], t[1:]
        if static_t is not None:
            t0, ts = tf.constant(static_t[0], y0.dtype), tf.constant(static_t[1:], y0.dtype)
        return solve(
            lambda tt, yy: tf.convert_to_tensor(f(tt, yy)),
            y0,
            t0,
            ts,
            solver=solver,
            gradient=gradient,
            guard=guard,
            **opts,
        )

    if t.shape[0] is None or t.shape[0] < 1:
        raise ValueError(f"odeint needs a 1-D `t` with a static length >= 1. Received shape {t.shape}.")
    eager = tf.executing_eagerly()
    guard_state = None
    if solver in TFP_SOLVERS:
        with tf.init_scope():
            guard_state = tf.Variable([0, 0, 0], dtype=tf.int32, trainable=False)
    if t.shape[0] == 1:
        return tf.expand_dims(y0, 0)
    if eager:

        def convolution():
            spec = tf.TensorSpec(y0.shape, y0.dtype)
            return uses_convolution(lambda tt, yy: f(tt, yy), tf.TensorSpec((), y0.dtype), spec)

        # backprop through an adaptive solve keeps the loop's stacks (TensorLists) for the gradient,
        # and those cannot leave an XLA cluster: "auto" then runs TensorFlow's graph executor
        # (eagerly, "xla" failed with TensorFlow's "TensorList crossing the XLA/TF boundary")
        taped = resolved == "backprop" and not fixed and solver not in TFP_SOLVERS
        mode = "graph" if taped and compile_mode == "auto" else resolve_compile(compile_mode, convolution)
        key = (solver, gradient, tuple(sorted(opts.items())), static_t, mode)
        compiled = _odeint_compiled(f, key, run, cacheable=guard_state is None, mode=mode)
        states, info = compiled(y0, t, guard_state)
        status = dict(rtol=rtol, atol=atol, time_reached=info["t"], num_steps=info["steps"], max_steps=max_steps)
        raise_for_status(info["reason"], what="odeint", solver=solver, **status)
    else:
        states, info = run(y0, t, guard_state)
    return tf.concat([tf.expand_dims(y0, 0), states], 0)


def _static_rows_check(tv, mv):
    """A ValueError naming the first row whose known times or mask are malformed."""
    for b, (row, m) in enumerate(zip(tv, mv)):
        n = int(m.sum())
        if not m[0] or not np.all(m[:n]) or np.any(m[n:]):
            raise checks.bad_value(f"t_mask[{b}]", m.tolist(), "True for a prefix of the row, starting with t[b, 0]")
        d = np.diff(row[:n])
        if not np.all(np.isfinite(row[:n])) or not np.all(d > 0):
            raise checks.bad_value(
                f"t[{b}]", row[:n].tolist(), "finite times strictly increasing along the row (from that row's t0)"
            )


def _odeint_independent(f, y0, t, *, solver, rtol, atol, **options):
    """:func:`odeint` with ``batch_mode="independent"`` (:mod:`odezoo.ode.independent`)."""
    pair = embedded_pair(solver)
    if pair is None:
        raise checks.bad_value(
            "solver", solver, "an embedded pair for batch_mode='independent' ('dopri5', 'tsit5', 'bosh3', "
            "'heun_euler', 'dopri8', 'kvaerno3', 'kvaerno5' or a registered one)"
        )  # fmt: skip
    if options.get("num_steps") is not None or options.get("step_size") is not None:
        raise ValueError("batch_mode='independent' solves adaptively: give rtol and atol, not num_steps/step_size.")
    gradient = options.get("gradient", "auto")
    if gradient not in INDEPENDENT_GRADIENTS:
        raise checks.bad_value(
            "gradient", gradient, "'auto' (the adjoint), 'adjoint' or 'backprop' with batch_mode='independent' "
            "(the checkpoint gradient does not run per row)"
        )  # fmt: skip
    max_steps = options.get("max_steps", 10000)
    checks.positive("rtol", rtol)
    checks.positive("atol", atol)
    checks.positive_int("max_steps", max_steps)
    controller = check_controller("controller", options.get("controller", "predictive"))
    y0 = tf.convert_to_tensor(y0)
    if not y0.dtype.is_floating:
        y0 = tf.cast(y0, keras.config.floatx())
    if y0.shape.rank is None or y0.shape.rank < 1:
        raise ValueError(f"batch_mode='independent' needs y0 with a leading batch axis. Received shape {y0.shape}.")
    t = tf.cast(tf.convert_to_tensor(t), y0.dtype)
    batch = y0.shape[0]
    if t.shape.rank == 1:
        t = tf.tile(t[None], [tf.shape(y0)[0], 1])
    if t.shape.rank != 2 or t.shape[1] is None or (batch is not None and t.shape[0] not in (None, batch)):
        raise ValueError(
            f"batch_mode='independent' needs t of shape (batch, T) (or (T,), shared) with a static T and "
            f"batch = y0.shape[0] = {batch}. Received shape {t.shape}."
        )
    mask = options.get("t_mask")
    mask = tf.ones(tf.shape(t), tf.bool) if mask is None else tf.cast(tf.convert_to_tensor(mask), tf.bool)
    if mask.shape != t.shape and mask.shape.is_fully_defined() and t.shape.is_fully_defined():
        raise ValueError(f"t_mask must have t's shape {t.shape}. Received shape {mask.shape}.")
    tv, mv = tf.get_static_value(t), tf.get_static_value(mask)
    if tv is not None and mv is not None:
        _static_rows_check(tv, mv)
    lengths = tf.reduce_sum(tf.cast(mask, tf.int32), 1)
    tableau = tableau_of(pair) if solver != "dopri5" else None
    opts = dict(rtol=rtol, atol=atol, max_steps=max_steps, controller=controller, first_step=options.get("first_step"))
    if tableau is not None:
        opts["tableau"] = tableau

    def run(y0, t, lengths):
        return _independent(f, y0, t, lengths, gradient=gradient, options=opts)

    if not tf.executing_eagerly():
        return run(y0, t, lengths)[0]
    compile_mode = check_compile("compile", options.get("compile", "auto"))
    if gradient == "backprop":  # backprop's stacks cannot leave an XLA cluster
        mode = "graph" if compile_mode == "auto" else compile_mode
    else:
        specs = tf.TensorSpec((None,) + (1,) * (y0.shape.rank - 1), y0.dtype), tf.TensorSpec(y0.shape, y0.dtype)
        mode = resolve_compile(compile_mode, lambda: uses_convolution(f, *specs))
    key = ("independent", solver, gradient, tuple(sorted((k, repr(v)) for k, v in opts.items())), mode)
    compiled = _odeint_compiled(f, key, run, cacheable=True, mode=mode)
    out, info = compiled(y0, t, lengths)
    reasons = info["reason"].numpy()
    bad = np.flatnonzero(reasons != OK)
    if bad.size:
        b = int(bad[0])
        raise_for_status(info["reason"][b], what=f"odeint (batch_mode='independent', row {b} of {reasons.size})",
                         solver=solver, rtol=rtol, atol=atol, time_reached=info["t"][b], num_steps=info["steps"][b],
                         max_steps=max_steps)  # fmt: skip
    return out


__all__ = ["solve", "odeint", "BATCH_MODES"]
