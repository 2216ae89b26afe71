"""The Neural-ODE layer (:class:`ODEBlock`), the functional :func:`odeint`, and ODE-Net's parts.

One dispatcher, :func:`solve`, serves both: odezoo's own ``"dopri5"``
(:mod:`odezoo._dopri5`), tfp's ``DormandPrince`` behind guards
(``"tfp_dopri5"``), tfp's ``BDF`` per sample (``"bdf"``) and every registered
fixed-grid scheme (``"euler"``, ``"rk4"``, a third party's), run with the same
field for all of its ``num_fields``. Every solve runs under
``tf.function(jit_compile=True)`` (eager adaptive solving is ~16x slower).

Failures never hang and never return silent numbers: every solver (the fixed
grids too) returns NaN states and a status (``_dopri5.REASONS``);
:class:`odezoo.SolverError` is raised in Python where the status is concrete
(eager calls of ``odeint`` and of the layer; :class:`ODEClassifier` applies no
update for a failed batch and raises from ``fit``/``evaluate``/``predict`` and the
``*_on_batch`` methods after it).
"""

from __future__ import annotations

import inspect
import math
import weakref

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from odezoo import _dopri5, _gate, _registry
from odezoo._errors import SolverError, bad_value, check_keys

_serializable = keras.saving.register_keras_serializable(package="odezoo")

ADAPTIVE = ("dopri5", "tfp_dopri5", "bdf")
GRADIENTS = ("auto", "adjoint", "backprop")


# --------------------------------------------------------------------------- option checks
def check_solver(solver):
    """Validate a solver name: an adaptive solver or a registered scheme (UnknownNameError otherwise)."""
    if solver in ADAPTIVE:
        return solver
    if not isinstance(solver, str):
        raise bad_value("solver", solver, "'dopri5', 'tfp_dopri5', 'bdf' or a registered scheme name")
    try:
        _registry.get_scheme(solver)
    except LookupError:
        from odezoo._errors import UnknownNameError

        raise UnknownNameError("solver", solver, list(ADAPTIVE) + _registry.list_schemes()) from None
    from odezoo._layers import make_scheme

    if any(width != 4 for width in make_scheme(solver, {}).block_fields(4)):
        # e.g. "reversible": its fields act on halves of the state, a partitioned system
        raise bad_value("solver", solver, "an adaptive solver or a scheme whose fields take the whole state "
                        f"(solver={solver!r} splits the state, so it cannot solve dy/dt = f(t, y))")
    return solver


def resolve_gradient(solver, gradient):
    """The gradient method actually used; a clear ValueError for unsupported combinations."""
    if gradient not in GRADIENTS:
        raise bad_value("gradient", gradient, ", ".join(map(repr, GRADIENTS)))
    adaptive = solver in ADAPTIVE
    if gradient == "auto":
        return "adjoint" if adaptive else "backprop"
    if gradient == "adjoint" and not adaptive:
        raise ValueError(
            f"gradient='adjoint' is not offered for the fixed-grid solver {solver!r}: differentiate "
            "through its steps with gradient='backprop' (or 'auto'), or use solver='dopri5'.")
    if gradient == "backprop" and solver in ("tfp_dopri5", "bdf"):
        raise ValueError(
            f"gradient='backprop' is not offered for {solver!r} (tfp's solvers only have the adjoint); "
            "use solver='dopri5' for backprop through an adaptive solve.")
    return gradient


def _check_positive(arg, value, *, allow_none=False, integer=False):
    if value is None and allow_none:
        return None
    kind = int if integer else (int, float)
    if not isinstance(value, kind) or isinstance(value, bool) or not math.isfinite(value) or not value > 0:
        allowed = "a positive int" if integer else "a finite positive float"
        raise bad_value(arg, value, ("None or " if allow_none else "") + allowed)
    return int(value) if integer else float(value)


def check_options(solver, *, rtol, atol, num_steps, step_size, first_step, max_steps):
    _check_positive("rtol", rtol)
    _check_positive("atol", atol)
    _check_positive("num_steps", num_steps, allow_none=True, integer=True)
    _check_positive("step_size", step_size, allow_none=True)
    _check_positive("first_step", first_step, allow_none=True)
    _check_positive("max_steps", max_steps, integer=True)
    if solver not in ADAPTIVE:
        if (num_steps is None) == (step_size is None):
            raise ValueError(
                f"The fixed-grid solver {solver!r} needs exactly one of `num_steps` or `step_size`. "
                f"Received: num_steps={num_steps!r}, step_size={step_size!r}.")


# --------------------------------------------------------------------------- fixed grids
def _static_times(t0, times):
    t0v = tf.get_static_value(tf.convert_to_tensor(t0))
    tv = tf.get_static_value(tf.convert_to_tensor(times))
    if t0v is None or tv is None:
        raise ValueError("Fixed-grid solvers need static (Python or constant) times t0 and solution times.")
    return float(t0v), [float(x) for x in np.reshape(tv, [-1])]


def plan_fixed_grid(t0, times, num_steps=None, step_size=None):
    """Steps per interval [t0, times[0]], [times[0], times[1]], ...: a list of (n, h)."""
    edges = [t0] + list(times)
    total = abs(edges[-1] - edges[0])
    plan = []
    for a, b in zip(edges[:-1], edges[1:]):
        span = abs(b - a)
        if span == 0.0:
            plan.append((0, 0.0))
            continue
        if num_steps is not None:
            n = max(1, int(round(num_steps * span / total))) if total > 0 else 0
        else:
            n = max(1, int(math.ceil(span / step_size - 1e-9)))
        plan.append((n, (b - a) / n))
    return plan


def fixed_grid_solve(scheme_name, f, y0, t0, times, *, num_steps=None, step_size=None):
    """Solve with a registered scheme's ``step``; returns ``(outputs (n, *y0.shape), nfe, steps)``."""
    from odezoo._layers import make_scheme

    scheme = make_scheme(scheme_name, {})
    t0f, tlist = _static_times(t0, times)
    plan = plan_fixed_grid(t0f, tlist, num_steps, step_size)
    dtype = y0.dtype
    calls = [0]

    def field(t, y):
        calls[0] += 1
        return tf.cast(f(tf.cast(t, dtype), y), dtype)

    fields = [field] * scheme.num_fields
    state = scheme.init(y0)
    outs = []
    t = t0f
    per_step = None
    total_steps = 0
    for n, h in plan:
        if n:
            t_start = tf.constant(t, dtype)
            hh = tf.constant(h, dtype)

            def body(i, state, t_start=t_start, hh=hh):
                ti = t_start + tf.cast(i, dtype) * hh
                return i + 1, scheme.step(fields, ti, state, hh)

            before = calls[0]
            _, state = tf.while_loop(lambda i, s, n=n: i < n, body, (tf.constant(0), state),
                                     maximum_iterations=n)
            per_step = calls[0] - before if per_step is None else per_step
            total_steps += n
            t = t + n * h
        outs.append(scheme.output(state))
    return tf.stack(outs, 0), (per_step or 0) * total_steps, total_steps


# --------------------------------------------------------------------------- tfp behind guards
class TFPGuard:
    """Guards for tfp's solvers: a budget of field calls and NaN/Inf detection.

    tfp 0.25 under XLA drops ``max_num_steps`` and hangs on NaN. The guarded
    field counts its calls in a variable; past the budget, or on a non-finite
    value, it returns zeros (so tfp's steps are accepted and grow until the end
    is reached) and records why; the caller then reports the failure. A
    non-finite cotangent is replaced by zeros before tfp's adjoint sees it.

    ``state`` is an int32 variable ``[calls, calls past the budget, non-finite
    values]`` updated only by atomic adds (tfp's backward runs in a gradient
    graph without automatic control dependencies, so read-modify-write updates
    would race); it must be created outside the compiled function (the layer
    makes it in ``build``).
    """

    def __init__(self, state_variable, budget):
        if isinstance(state_variable, keras.Variable):  # the layer's weight: use its tf.Variable
            state_variable = state_variable.value
        self.v = state_variable
        self.budget = int(budget)

    def reset(self):
        return self.v.assign(tf.zeros([3], tf.int32))

    @staticmethod
    def status(state):
        """(calls, reason) from a read of the state."""
        reason = tf.where(state[2] > 0, _dopri5.NONFINITE, tf.where(state[1] > 0, _dopri5.MAX_STEPS, _dopri5.OK))
        return state[0], reason

    def field(self, f):
        def guarded(t, y, **kw):
            dy = f(t, y, **kw)
            flat = tf.nest.flatten(dy)
            finite = _dopri5._all_finite([tf.convert_to_tensor(x) for x in flat])
            over = self.v[0] >= self.budget
            upd = self.v.scatter_nd_add([[0], [1], [2]], tf.stack([
                1, tf.cast(over, tf.int32), tf.cast(tf.logical_not(finite), tf.int32)]))
            bad = tf.logical_or(over, tf.logical_not(finite))
            with tf.control_dependencies([upd]):  # keeps the count in graphs that prune unused ops
                out = [tf.where(bad, tf.zeros_like(x), x) for x in flat]
            return tf.nest.pack_sequence_as(dy, out)

        return guarded

    def guard_cotangents(self, states):
        """Identity on ``states`` whose gradient zeroes (and records) non-finite cotangents."""
        v = self.v

        @tf.custom_gradient
        def ident(*xs):
            def grad(*dys):
                dys = [tf.zeros_like(x) if d is None else d for d, x in zip(dys, xs)]
                finite = _dopri5._all_finite(dys)
                reset = v.assign(tf.stack([0, 0, tf.where(finite, 0, 1)]))
                with tf.control_dependencies([reset]):
                    return [tf.where(finite, d, tf.zeros_like(d)) for d in dys]

            return [tf.identity(x) for x in xs], grad

        return ident(*states)

    def report_inputs(self, ys, on_backward):
        """Identity on ``ys`` whose gradient reads the backward status (NaN gradients on failure)."""
        v = self.v

        @tf.custom_gradient
        def ident(*xs):
            def grad(*dys):
                dys = [tf.zeros_like(x) if d is None else d for d, x in zip(dys, xs)]
                with tf.control_dependencies(dys):  # read after tfp's backward solve has run
                    calls, reason = TFPGuard.status(v.read_value())
                info = dict(reason=reason, nfe=calls, steps=tf.constant(-1), t=tf.constant(np.nan))
                deps = _dopri5._run_hook(on_backward, info)
                failed = tf.not_equal(reason, 0)
                with tf.control_dependencies(deps):
                    return [tf.where(failed, tf.fill(tf.shape(d), tf.constant(np.nan, d.dtype)), d) for d in dys]

            return [tf.identity(x) for x in xs], grad

        return ident(*ys)


def _no_gradient_through_map(x, fn):
    """``fn(x)`` with a clear error, instead of TensorFlow's, when a gradient is asked for.

    tfp's adjoint inside ``tf.map_fn`` fails to differentiate when the field reads
    variables ("... is in list of internal_captures but not in
    internal_capture_to_output"), so the per-sample BDF is inference-only. The
    solve must run with the tapes recording: BDF's Newton iteration takes its
    Jacobian from a GradientTape, and under ``stop_recording`` that Jacobian is
    zero (the solve then crawls and returns wrong numbers: issue 12).
    """

    @tf.custom_gradient
    def run(x):
        y = fn(x)

        def grad(*dys, variables=None):
            raise ValueError(
                "ODEBlock(solver='bdf') solves each sample as its own system (tf.map_fn) and has no "
                "gradient: tfp's adjoint cannot be differentiated through tf.map_fn. Train with "
                "solver='dopri5' (or 'tfp_dopri5') and switch to 'bdf' for inference, or use "
                "odezoo.odeint(..., solver='bdf') on a single system.")

        return y, grad

    return run(x)


def tfp_solve(kind, f, y0, t0, times, *, rtol, atol, first_step, max_steps, guard, batch_axis=None,
              on_forward=None, on_backward=None):
    """tfp's DormandPrince (``kind="tfp_dopri5"``) or BDF (``"bdf"``) behind :class:`TFPGuard`.

    For BDF with ``batch_axis=0`` every sample is solved as its own system
    (``tf.map_fn``): tfp's BDF has no ``batch_ndims`` and builds one dense
    Jacobian over the whole flattened state otherwise.
    """
    import tensorflow_probability as tfp

    dtype = y0.dtype
    times = tf.cast(tf.reshape(times, [-1]), dtype)
    t0 = tf.cast(t0, dtype)
    if kind == "tfp_dopri5":
        solver = tfp.math.ode.DormandPrince(rtol=rtol, atol=atol, max_num_steps=max_steps,
                                            **({"first_step_size": first_step} if first_step else {}))
        budget = 6 * max_steps + 1
    else:
        solver = tfp.math.ode.BDF(rtol=rtol, atol=atol, max_num_steps=max_steps,
                                  **({"first_step_size": first_step} if first_step else {}))
        budget = 8 * max_steps + 1
    guard.budget = budget
    ordered = _dopri5.times_ordered(t0, times)
    times_in = tf.where(ordered, times, tf.fill(tf.shape(times), t0))  # out of order: a no-op solve
    with tf.control_dependencies([guard.reset()]):
        y_in = tf.identity(y0)
    (y_in,) = guard.report_inputs([y_in], on_backward)
    gfield = guard.field(lambda t, y: tf.cast(f(t, y), dtype))

    def one(y):
        res = solver.solve(gfield, t0, y, solution_times=times_in)
        return res.states, tf.cast(tf.not_equal(res.diagnostics.status, 0), tf.int32)

    if kind == "bdf" and batch_axis == 0:
        def per_sample(y):
            states, failed = one(y[None])
            return states[:, 0], failed

        states, failed = _no_gradient_through_map(
            y_in, lambda y_in: tf.map_fn(per_sample, y_in, fn_output_signature=(dtype, tf.int32)))
        failed = tf.reduce_max(failed)
        states = tf.transpose(states, [1, 0] + list(range(2, states.shape.rank)))
    else:
        states, failed = one(y_in)
    with tf.control_dependencies([states]):
        calls, reason = TFPGuard.status(guard.v.read_value())
    # tfp's own failure (its status) or a non-finite state the guard did not see: never silent numbers
    reason = tf.where(tf.logical_and(tf.equal(reason, 0), failed > 0), _dopri5.MAX_STEPS, reason)
    finite = tf.reduce_all(tf.math.is_finite(states))
    reason = tf.where(tf.logical_and(tf.equal(reason, 0), tf.logical_not(finite)), _dopri5.NONFINITE, reason)
    reason = tf.where(ordered, reason, _dopri5.UNORDERED)
    info = dict(reason=reason, nfe=calls, steps=tf.constant(-1), accepted=tf.constant(-1),
                t=tf.where(tf.equal(reason, 0), times[-1], tf.constant(np.nan, dtype)))
    deps = _dopri5._run_hook(on_forward, info)
    with tf.control_dependencies(deps):
        states = tf.where(tf.equal(reason, 0), states, tf.constant(np.nan, dtype))
    (states,) = guard.guard_cotangents([states])
    return states, info


# --------------------------------------------------------------------------- dispatcher
def solve(f, y0, t0, times, *, solver="dopri5", rtol=1e-3, atol=1e-6, first_step=None, max_steps=10000,
          num_steps=None, step_size=None, gradient="auto", guard=None, batch_axis=None,
          on_forward=None, on_backward=None):
    """Solve ``dy/dt = f(t, y)`` for a single tensor ``y0``; build ops only (call it compiled).

    Returns ``(states, info)``: ``states`` of shape (len(times), *y0.shape),
    ``info`` a dict of scalar tensors (``reason``, ``nfe``, ``steps``, ``t``).
    """
    gradient = resolve_gradient(solver, gradient)
    dtype = y0.dtype
    if solver == "dopri5":
        options = dict(rtol=rtol, atol=atol, first_step=first_step, max_steps=max_steps)

        def flat_fn(t, y, cs):
            return [f(t, y[0])]

        if gradient == "adjoint":
            outs, info = _dopri5.adjoint_solve(flat_fn, t0, [y0], times, [], options=options,
                                               on_forward=on_forward, on_backward=on_backward)
        else:
            outs, info = _dopri5.integrate(lambda t, y: flat_fn(t, y, []), t0, [y0], times, **options)
            info = dict(info)
            deps = _dopri5._run_hook(on_forward, info)
            deps += _dopri5._run_hook(on_backward, dict(nfe=tf.constant(0), reason=tf.constant(0),
                                                        steps=tf.constant(0), t=tf.cast(t0, dtype)))
            with tf.control_dependencies(deps):
                outs = [tf.identity(o) for o in outs]
        return outs[0], info
    if solver in ("tfp_dopri5", "bdf"):
        if guard is None:
            raise ValueError(f"solver={solver!r} needs a TFPGuard (internal).")
        return tfp_solve(solver, f, y0, t0, times, rtol=rtol, atol=atol, first_step=first_step,
                         max_steps=max_steps, guard=guard, batch_axis=batch_axis,
                         on_forward=on_forward, on_backward=on_backward)
    states, nfe, steps = fixed_grid_solve(solver, f, y0, t0, times, num_steps=num_steps, step_size=step_size)
    # the same status as dopri5's: a non-finite state anywhere on the grid fails the solve
    finite = tf.reduce_all(tf.math.is_finite(states))
    reason = tf.where(finite, _dopri5.OK, _dopri5.NONFINITE)
    states = tf.where(finite, states, tf.constant(np.nan, dtype))
    t_end = tf.cast(tf.reshape(times, [-1])[-1], dtype)
    info = dict(reason=reason, nfe=tf.constant(nfe), steps=tf.constant(steps),
                t=tf.where(finite, t_end, tf.constant(np.nan, dtype)))
    deps = _dopri5._run_hook(on_forward, info)
    deps += _dopri5._run_hook(on_backward, dict(nfe=tf.constant(0), reason=tf.constant(0),
                                                steps=tf.constant(0), t=tf.cast(t0, dtype)))
    with tf.control_dependencies(deps):
        states = tf.identity(states)
    return states, info


# --------------------------------------------------------------------------- odeint
def _check_static_grid(t):
    """A ValueError for known times that are not finite and strictly monotone (run-time ones get a status)."""
    tv = tf.get_static_value(t)
    if tv is None or tv.size < 2:
        return
    d = np.diff(tv)
    if not np.all(np.isfinite(tv)) or not (np.all(d > 0) or np.all(d < 0)):
        raise bad_value("t", tv.tolist(), "finite times strictly increasing or strictly decreasing from t[0] "
                        "(no repeated or out-of-order times)")


_ODEINT_KEYS = ("first_step", "max_steps", "num_steps", "step_size", "gradient")
_odeint_cache = weakref.WeakKeyDictionary()


def odeint(f, y0, t, *, solver="dopri5", rtol=1e-7, atol=1e-9, **options):
    """Solve ``dy/dt = f(t, y)`` at the times ``t`` (torchdiffeq's form).

    Args:
        f: any callable ``f(t, y)`` returning dy/dt shaped like ``y``.
        y0: initial state (a tensor), at time ``t[0]``.
        t: 1-D tensor of times, starting at t0 and strictly monotone (increasing or decreasing);
            known times out of order are a ValueError, run-time ones fail with status 4.
        solver: "dopri5" (default; odezoo's own), "tfp_dopri5", "bdf", or a
            registered fixed-grid scheme ("euler", "rk4", ...).
        rtol, atol: tolerances of the adaptive solvers.
        **options: ``first_step``, ``max_steps`` (default 10000), ``num_steps``
            or ``step_size`` (fixed grids), ``gradient`` ("auto", "adjoint", "backprop").

    Returns:
        The states at ``t``, shape (len(t), *y0.shape); ``[0]`` is ``y0``.

    Raises:
        SolverError: (eager calls) the solve failed: budget, NaN/Inf, step underflow.
            Inside a ``tf.function`` the failed states are NaN instead.
    """
    check_keys("odeint()", options, _ODEINT_KEYS)
    solver = check_solver(solver)
    max_steps = options.get("max_steps", 10000)
    opts = dict(rtol=rtol, atol=atol, first_step=options.get("first_step"), max_steps=max_steps,
                num_steps=options.get("num_steps"), step_size=options.get("step_size"))
    check_options(solver, **opts)
    gradient = options.get("gradient", "auto")
    resolve_gradient(solver, gradient)
    y0 = tf.convert_to_tensor(y0)
    if not y0.dtype.is_floating:
        y0 = tf.cast(y0, keras.config.floatx())
    t = tf.cast(tf.reshape(tf.convert_to_tensor(t), [-1]), y0.dtype)
    _check_static_grid(t)

    fixed = solver not in ADAPTIVE
    static_t = None
    if fixed:  # a fixed grid is planned in Python: the times must be known while tracing
        _, static_t = _static_times(0.0, t)
        static_t = tuple(static_t)

    def run(y0, t, guard_state):
        guard = TFPGuard(guard_state, 0) if guard_state is not None else None
        t0, ts = t[0], t[1:]
        if static_t is not None:
            t0, ts = tf.constant(static_t[0], y0.dtype), tf.constant(static_t[1:], y0.dtype)
        return solve(lambda tt, yy: tf.convert_to_tensor(f(tt, yy)), y0, t0, ts, solver=solver,
                     gradient=gradient, guard=guard, **opts)

    if t.shape[0] is None or t.shape[0] < 1:
        raise ValueError(f"odeint needs a 1-D `t` with a static length >= 1. Received shape {t.shape}.")
    eager = tf.executing_eagerly()
    guard_state = None
    if solver in ("tfp_dopri5", "bdf"):
        with tf.init_scope():
            guard_state = tf.Variable([0, 0, 0], dtype=tf.int32, trainable=False)
    if t.shape[0] == 1:
        states, info = tf.expand_dims(y0, 0), dict(reason=tf.constant(0), t=t[0], steps=tf.constant(0))
        return states
    if eager:
        key = (solver, gradient, tuple(sorted(opts.items())), static_t)
        try:
            per_f = _odeint_cache.setdefault(f, {})
        except TypeError:
            per_f = {}
        compiled = per_f.get(key) if guard_state is None else None
        if compiled is None:
            compiled = tf.function(run, jit_compile=True, autograph=False)
            if guard_state is None:
                per_f[key] = compiled
        states, info = compiled(y0, t, guard_state)
        _dopri5.raise_for_status(info["reason"], rtol=rtol, atol=atol, time_reached=info["t"],
                                 num_steps=info["steps"], max_steps=max_steps, what="odeint", solver=solver)
    else:
        states, info = run(y0, t, guard_state)
    return tf.concat([tf.expand_dims(y0, 0), states], 0)


# --------------------------------------------------------------------------- the layer
class _Field:
    """``field(t, y)`` with ``training`` passed explicitly (the adjoint runs outside the layer's call)."""

    def __init__(self, layer, training, dtype, y_shape, augment):
        self.layer, self.training, self.dtype = layer, training, dtype
        self.takes_training = "training" in inspect.signature(layer.call).parameters

    def __call__(self, t, y):
        t = tf.cast(t, self.dtype)
        if self.takes_training and self.training is not None:
            return self.layer(t, y, training=self.training)
        return self.layer(t, y)


@_serializable
class ODEBlock(keras.layers.Layer):
    """A Neural-ODE block: y(t1) from y(t0) = input, solving dy/dt = field(t, y).

    Chen, Rubanova, Bettencourt & Duvenaud, "Neural Ordinary Differential
    Equations", NeurIPS 2018.

    Args:
        field: a Keras layer called as ``field(t, y)`` (t a scalar tensor, y the
            state) returning dy/dt of y's shape. Weights sized from the state
            are made in ``build(self, t_shape, y_shape)``.
        solver: "dopri5" (odezoo's own adaptive Dormand-Prince 5(4), default),
            "tfp_dopri5", "bdf" (tfp's, per sample), or a registered fixed-grid
            scheme ("euler", "rk4", ...) with ``num_steps`` or ``step_size``.
        rtol, atol: tolerances of the adaptive solvers (1e-3, 1e-6).
        t0, t1: integration interval (0, 1).
        solution_times: None, or a list of times in (t0, t1]-order: the block
            then returns the states there, shape (batch, len(times), ...).
        num_steps, step_size: grid of a fixed-grid solver (exactly one).
        first_step: None (Hairer's selection for dopri5) or a first step size.
        max_steps: hard budget of attempted steps (10000).
        gradient: "auto" (adjoint for adaptive solvers, backprop for fixed
            grids), "adjoint" or "backprop" (dopri5 and fixed grids).
        augment_dims: ANODE (Dupont, Doucet & Teh 2019): zeros appended to the
            last axis of the state, dropped from the output.

    Attributes:
        nfe_forward, nfe_backward: non-trainable int32 variables: field
            evaluations of the last forward and backward solve (aggregation
            ONLY_FIRST_REPLICA, so they survive tf.distribute).
        solver_status: int32 variable ``[forward reason, backward reason,
            forward steps, backward steps]`` (0 = success; see ``odezoo._dopri5.REASONS``).
        time_reached: float32 variable ``[forward, backward]``.

    ``solver``, ``rtol``, ``atol``, ``num_steps`` (and ``step_size``,
    ``first_step``, ``max_steps``, ``gradient``) can be set on a built or
    loaded block; the next call retraces (re-``compile()`` a Keras model so that
    its cached train/predict functions pick the change up).

    Raises :class:`odezoo.SolverError` when called eagerly and the solve fails;
    inside a compiled function the states are NaN and ``solver_status`` is set
    (:class:`ODEClassifier` checks it after every batch).
    """

    _SETTABLE = ("solver", "rtol", "atol", "num_steps", "step_size", "first_step", "max_steps", "gradient")

    def __init__(self, field, solver="dopri5", rtol=1e-3, atol=1e-6, t0=0.0, t1=1.0, solution_times=None,
                 num_steps=None, step_size=None, first_step=None, max_steps=10000, gradient="auto",
                 augment_dims=0, dtype=None, **kwargs):
        if dtype is None and keras.config.dtype_policy().name.startswith("mixed_"):
            # Adaptive error control needs float32: under a mixed policy the block solves in float32
            # (its inputs are cast up, its output is float32). Give the field dtype="float32" too.
            dtype = "float32"
        super().__init__(dtype=dtype, **kwargs)
        if isinstance(field, dict):
            field = keras.saving.deserialize_keras_object(field)
        if not isinstance(field, keras.layers.Layer):
            raise TypeError(f"ODEBlock's `field` must be a Keras layer called as field(t, y). Received: field={field!r}.")
        self.field = field
        object.__setattr__(self, "_ready", False)
        self.solver = solver
        self.rtol, self.atol = rtol, atol
        self.num_steps, self.step_size, self.first_step = num_steps, step_size, first_step
        self.max_steps = max_steps
        self.gradient = gradient
        for arg, value in (("t0", t0), ("t1", t1)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise bad_value(arg, value, "a finite float")
        if t1 == t0:
            raise bad_value("t1", t1, f"a float different from t0={t0!r}")
        self.t0, self.t1 = float(t0), float(t1)
        if solution_times is not None:
            try:
                times = [float(x) for x in solution_times]
            except (TypeError, ValueError):
                raise bad_value("solution_times", solution_times, "None or a list of floats") from None
            sign = 1.0 if t1 > t0 else -1.0
            rel = [sign * (x - t0) for x in times]
            if (not times or not all(map(math.isfinite, times)) or any(r < 0 for r in rel)
                    or any(b <= a for a, b in zip(rel, rel[1:]))):
                raise bad_value("solution_times", solution_times,
                                "a non-empty list of finite times from t0 onwards, strictly monotone in the "
                                "direction t0 -> t1")
            solution_times = times
        self.solution_times = solution_times
        if not isinstance(augment_dims, int) or isinstance(augment_dims, bool) or augment_dims < 0:
            raise bad_value("augment_dims", augment_dims, "an int >= 0")
        self.augment_dims = augment_dims
        object.__setattr__(self, "_ready", True)
        self._validate()
        self._compiled = {}

    # -- settable solver options -----------------------------------------------------------
    def __setattr__(self, name, value):
        checked = name in ODEBlock._SETTABLE and getattr(self, "_ready", False)
        old = getattr(self, name, None) if checked else None
        super().__setattr__(name, value)
        if checked:
            try:
                self._validate()
            except ValueError:
                super().__setattr__(name, old)  # a refused value leaves the block as it was
                raise
            self._compiled = {}

    def _validate(self):
        check_solver(self.solver)
        check_options(self.solver, rtol=self.rtol, atol=self.atol, num_steps=self.num_steps,
                      step_size=self.step_size, first_step=self.first_step, max_steps=self.max_steps)
        resolve_gradient(self.solver, self.gradient)

    # -- Keras plumbing -------------------------------------------------------------------
    def _state_shape(self, input_shape):
        shape = tuple(input_shape)
        if self.augment_dims:
            shape = shape[:-1] + (shape[-1] + self.augment_dims,)
        return shape

    def build(self, input_shape):
        y_shape = self._state_shape(input_shape)
        if not self.field.built:
            params = [p for p in inspect.signature(self.field.build).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            if len(params) >= 2:
                self.field.build((), y_shape)
            else:
                self.field(keras.KerasTensor((), dtype=self.compute_dtype),
                           keras.KerasTensor(y_shape, dtype=self.compute_dtype))
        agg = dict(trainable=False, initializer="zeros", aggregation="only_first_replica")
        self.nfe_forward = self.add_weight(name="nfe_forward", shape=(), dtype="int32", **agg)
        self.nfe_backward = self.add_weight(name="nfe_backward", shape=(), dtype="int32", **agg)
        self.solver_status = self.add_weight(name="solver_status", shape=(4,), dtype="int32", **agg)
        self.time_reached = self.add_weight(name="time_reached", shape=(2,), dtype="float32", **agg)
        self._guard_state = self.add_weight(name="tfp_guard", shape=(3,), dtype="int32", **agg)

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        if self.solution_times is not None:
            return (shape[0], len(self.solution_times)) + shape[1:]
        return shape

    # -- solving ----------------------------------------------------------------------------
    def _hooks(self):
        def fwd(info):
            info = _gate.across_replicas(info)
            return [self.nfe_forward.assign(tf.cast(info["nfe"], tf.int32)),
                    self.solver_status.assign(tf.stack([
                        tf.cast(info["reason"], tf.int32), 0,
                        tf.cast(info.get("steps", -1), tf.int32), 0])),
                    self.time_reached.assign(tf.stack([tf.cast(info["t"], tf.float32), 0.0]))]

        def bwd(info):
            info = _gate.across_replicas(info)
            s = self.solver_status
            return [self.nfe_backward.assign(tf.cast(info["nfe"], tf.int32)),
                    s.assign(tf.stack([s[0], tf.cast(info["reason"], tf.int32), s[2],
                                       tf.cast(info.get("steps", -1), tf.int32)])),
                    self.time_reached.assign(tf.stack([self.time_reached[0], tf.cast(info["t"], tf.float32)]))]

        return fwd, bwd

    def _solve(self, inputs, training, recompute=False):
        dtype = inputs.dtype
        y0 = inputs
        if self.augment_dims:
            pad = [[0, 0]] * (inputs.shape.rank - 1) + [[0, self.augment_dims]]
            y0 = tf.pad(inputs, pad)
        times = self.solution_times if self.solution_times is not None else [self.t1]
        times = tf.constant(times, dtype)
        field = _Field(self.field, training, dtype, None, None)
        fwd, bwd = self._hooks()
        if recompute:  # backprop's recompute: its field calls are the backward's
            fwd, bwd = (lambda info: [self.nfe_backward.assign(tf.cast(info["nfe"], tf.int32))]), None
        guard = TFPGuard(self._guard_state, 0) if self.solver in ("tfp_dopri5", "bdf") else None
        states, info = solve(field, y0, tf.constant(self.t0, dtype), times, solver=self.solver,
                             rtol=self.rtol, atol=self.atol, first_step=self.first_step,
                             max_steps=self.max_steps, num_steps=self.num_steps, step_size=self.step_size,
                             gradient=self.gradient, guard=guard, batch_axis=0, on_forward=fwd,
                             on_backward=bwd)
        if self.augment_dims:
            states = states[..., : inputs.shape[-1]]
        if self.solution_times is None:
            return states[-1]
        perm = [1, 0] + list(range(2, states.shape.rank))
        return tf.transpose(states, perm)

    def call(self, inputs, training=None):
        inputs = tf.convert_to_tensor(inputs)
        if inputs.dtype != self.compute_dtype:
            inputs = tf.cast(inputs, self.compute_dtype)
        # a Python flag selects the trace; a symbolic one (rare) falls back to the call context
        training = bool(training) if isinstance(training, (bool, int, np.bool_)) else None
        fn = self._compiled.get(training)
        if fn is None:
            fn = tf.function(lambda x: self._solve(x, training), jit_compile=True,
                             autograph=False, reduce_retracing=True)
            self._compiled[training] = fn
        if tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context():
            # in a replica: the counters' ONLY_FIRST_REPLICA assignment is a merge_call, which a
            # nested tf.function cannot hold; the replica step is the compiled function here
            out = self._solve(inputs, training)
        elif resolve_gradient(self.solver, self.gradient) == "backprop":
            out = self._backprop_call(fn, inputs, training)
        else:
            out = fn(inputs)
        if tf.executing_eagerly():
            self.check_status(direction="forward")
        return out

    def _backprop_call(self, fn, inputs, training):
        """Backprop through the steps, compiled whatever the caller's context.

        Differentiating a nested ``jit_compile`` function whose while_loop keeps
        its intermediates fails outside XLA ("TensorList crossing the XLA/TF
        boundary"), so the gradient is a second compiled function that recomputes
        the solve under a tape and returns the VJP (the recompute's field calls
        are counted in ``nfe_backward``).
        """
        key = ("vjp", training)
        vjp = self._compiled.get(key)
        if vjp is None:
            def vjp_fn(x, dy, variables):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = self._solve(x, training, recompute=True)
                gx, *gv = tape.gradient(y, [x] + list(variables), output_gradients=dy,
                                        unconnected_gradients=tf.UnconnectedGradients.ZERO)
                return gx, gv

            vjp = tf.function(vjp_fn, jit_compile=True, autograph=False, reduce_retracing=True)
            self._compiled[key] = vjp

        @tf.custom_gradient
        def run(x):
            from tensorflow.python.eager import record  # eager custom_gradient keeps the tape recording

            with record.stop_recording():
                y = fn(x)

            def grad(dy, variables=None):
                variables = list(variables or [])
                if not variables:
                    gx, _ = vjp(x, dy, [])
                    return gx, []
                gx, gv = vjp(x, dy, variables)
                return gx, list(gv)

            return y, grad

        return run(inputs)

    def check_status(self, direction="both"):
        """Raise :class:`odezoo.SolverError` if the last solve failed (reads the status variable)."""
        status = np.asarray(self.solver_status.numpy())
        reached = np.asarray(self.time_reached.numpy())
        checks = [("forward", 0, 2)] if direction == "forward" else [("forward", 0, 2), ("backward", 1, 3)]
        if direction == "backward":
            checks = [("backward", 1, 3)]
        for what, i, j in checks:
            if status[i] != 0:
                _dopri5.raise_for_status(int(status[i]), rtol=self.rtol, atol=self.atol,
                                         time_reached=reached[i], num_steps=status[j],
                                         max_steps=self.max_steps, solver=self.solver,
                                         what=f"ODEBlock {self.name!r} {what} solve")

    def reset_status(self):
        self.solver_status.assign([0, 0, 0, 0])

    def get_config(self):
        config = super().get_config()
        config.update(
            field=keras.saving.serialize_keras_object(self.field), solver=self.solver, rtol=self.rtol,
            atol=self.atol, t0=self.t0, t1=self.t1, solution_times=self.solution_times,
            num_steps=self.num_steps, step_size=self.step_size, first_step=self.first_step,
            max_steps=self.max_steps, gradient=self.gradient, augment_dims=self.augment_dims)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["field"] = keras.saving.deserialize_keras_object(config["field"])
        return cls(**config)


# --------------------------------------------------------------------------- ODE-Net parts
@_serializable
class ODEConvField(keras.layers.Layer):
    """ODE-Net's field (Chen et al. 2018): GN-ReLU-ConcatConv-GN-ReLU-ConcatConv-GN.

    Each "ConcatConv" is a 3x3 convolution of the state with ``t`` appended as a
    constant channel, so the field sees time. GroupNorm (not BatchNorm, whose
    statistics would update on every field evaluation, the adjoint's included).

    Args:
        channels: the state's channels (kept).
        groups: GroupNorm groups (default min(32, channels)).
    """

    def __init__(self, channels, *, groups=None, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.groups = int(groups) if groups is not None else min(32, self.channels)
        if self.channels % self.groups:
            raise bad_value("groups", groups, f"a divisor of channels={self.channels}")
        # sublayers compute in this layer's dtype (float32 under a mixed policy), not the global one
        gn = dict(groups=self.groups, epsilon=1e-5, dtype=self.dtype_policy)
        conv = dict(padding="same", dtype=self.dtype_policy)
        self.norm1 = keras.layers.GroupNormalization(name="norm1", **gn)
        self.conv1 = keras.layers.Conv2D(self.channels, 3, name="conv1", **conv)
        self.norm2 = keras.layers.GroupNormalization(name="norm2", **gn)
        self.conv2 = keras.layers.Conv2D(self.channels, 3, name="conv2", **conv)
        self.norm3 = keras.layers.GroupNormalization(name="norm3", **gn)

    def build(self, t_shape, y_shape):
        if y_shape[-1] != self.channels:
            raise ValueError(f"ODEConvField({self.channels}) was given a state with {y_shape[-1]} channels.")
        shape = tuple(y_shape)
        with_t = shape[:-1] + (self.channels + 1,)
        self.norm1.build(shape)
        self.conv1.build(with_t)
        self.norm2.build(shape)
        self.conv2.build(with_t)
        self.norm3.build(shape)

    @staticmethod
    def _concat_t(t, y):
        tt = ops.ones_like(y[..., :1]) * ops.cast(t, y.dtype)
        return ops.concatenate([y, tt], axis=-1)

    def call(self, t, y):
        z = ops.relu(self.norm1(y))
        z = self.conv1(self._concat_t(t, z))
        z = ops.relu(self.norm2(z))
        z = self.conv2(self._concat_t(t, z))
        return self.norm3(z)

    def compute_output_shape(self, t_shape, y_shape):
        return y_shape

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, groups=self.groups)
        return config


class _SolverGuard(keras.callbacks.Callback):
    """Raise SolverError after any batch whose solve failed inside the compiled step.

    ``blocks`` are objects with ``check_status()`` (ODE blocks, the FFJORD model).
    """

    def __init__(self, blocks):
        super().__init__()
        self.blocks = blocks

    def _check(self, *args, **kwargs):
        for block in self.blocks:
            block.check_status()

    on_train_batch_end = on_test_batch_end = on_predict_batch_end = _check


class SolverChecked:
    """A mixin for a ``keras.Model`` whose steps solve ODEs: every Keras entry point raises for a failed batch.

    ``fit``, ``evaluate`` and ``predict`` check after each batch (a callback),
    the ``*_on_batch`` methods after their one batch. The model names what to
    check in ``_solver_checks()``: objects with ``reset_status()`` and
    ``check_status()`` (its ODE blocks, or the model itself).
    """

    def _solver_checks(self) -> list:
        return []

    def _with_guard(self, callbacks):
        if isinstance(callbacks, keras.callbacks.CallbackList):
            return callbacks  # fit's own validation pass: the guard is already in the list
        checks = self._solver_checks()
        for check in checks:
            check.reset_status()
        return list(callbacks or []) + ([_SolverGuard(checks)] if checks else [])

    def fit(self, *args, callbacks=None, **kwargs):
        return super().fit(*args, callbacks=self._with_guard(callbacks), **kwargs)

    def evaluate(self, *args, callbacks=None, **kwargs):
        return super().evaluate(*args, callbacks=self._with_guard(callbacks), **kwargs)

    def predict(self, *args, callbacks=None, **kwargs):
        return super().predict(*args, callbacks=self._with_guard(callbacks), **kwargs)

    def _checked(self, method, *args, **kwargs):
        checks = self._solver_checks()
        for check in checks:
            check.reset_status()
        out = method(*args, **kwargs)
        for check in checks:
            check.check_status()
        return out

    def train_on_batch(self, *args, **kwargs):
        return self._checked(super().train_on_batch, *args, **kwargs)

    def test_on_batch(self, *args, **kwargs):
        return self._checked(super().test_on_batch, *args, **kwargs)

    def predict_on_batch(self, *args, **kwargs):
        return self._checked(super().predict_on_batch, *args, **kwargs)


@_serializable
class ODEClassifier(SolverChecked, keras.Model):
    """A functional classifier with :class:`ODEBlock` layers (ODE-Net, RK-Net).

    Adds ``nfe_forward`` / ``nfe_backward`` (summed over its ODE blocks) to the
    ``fit`` / ``evaluate`` logs. A batch whose solve failed applies no update
    (the optimizer's apply is gated on the blocks' ``solver_status`` inside the
    compiled step, on one device and under a ``tf.distribute`` strategy: see
    ``odezoo._gate``), and ``fit``, ``evaluate``,
    ``predict`` and the ``*_on_batch`` methods raise :class:`odezoo.SolverError` after it.
    """

    def ode_blocks(self):
        return [layer for layer in self._flatten_layers() if isinstance(layer, ODEBlock)]

    def _nfe_logs(self, backward=True):
        blocks = self.ode_blocks()
        logs = {"nfe_forward": tf.add_n([tf.cast(b.nfe_forward.value, tf.float32) for b in blocks])}
        if backward:
            logs["nfe_backward"] = tf.add_n([tf.cast(b.nfe_backward.value, tf.float32) for b in blocks])
        return logs

    def train_step(self, data):
        blocks = self.ode_blocks()
        if blocks and self.optimizer is not None:
            reasons = lambda: [b.solver_status.value[:2] for b in blocks]  # noqa: E731  [forward, backward]
            with _gate.GatedApply(self.optimizer, reasons, self.trainable_variables):
                logs = super().train_step(data)
        else:
            logs = super().train_step(data)
        logs = dict(logs)
        logs.update(self._nfe_logs())
        return logs

    def test_step(self, data):
        logs = dict(super().test_step(data))
        logs.update(self._nfe_logs(backward=False))
        return logs

    def _solver_checks(self):
        return self.ode_blocks()


def ode_classifier(*, name, input_shape, num_classes, solver, rtol, atol, num_steps=None, step_size=None,
                   first_step=None, max_steps=10000, gradient="auto", channels=64, augment_dims=0,
                   normalization="auto", classifier_activation="softmax", t1=1.0):
    """ODE-Net / RK-Net (Chen et al. 2018, MNIST): conv stem, one ODE block, pooling, classifier.

    Stem: conv3x3(channels) -> GN-ReLU -> conv4x4/2 -> GN-ReLU -> conv4x4/2 (H/4 x W/4);
    then :class:`ODEBlock` with an :class:`ODEConvField`; then GN-ReLU, global
    average pooling and a dense head. About 0.21M parameters at (28, 28, 1).
    """
    from odezoo import nets

    input_shape = nets.check_input_shape(input_shape)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise bad_value("num_classes", num_classes, "an int >= 2")
    _check_positive("channels", channels, integer=True)
    if classifier_activation not in ("softmax", None):
        raise bad_value("classifier_activation", classifier_activation, "'softmax' or None")
    groups = min(32, channels)
    if channels % groups:
        raise bad_value("channels", channels, "a multiple of 32, or at most 32")
    width = channels + augment_dims
    inputs = keras.Input(input_shape, name="pixels")
    x = nets.normalization_layer(normalization, input_shape)(inputs)
    x = keras.layers.Conv2D(channels, 3, padding="same", name="stem_conv1")(x)
    x = keras.layers.GroupNormalization(groups, epsilon=1e-5, name="stem_norm1")(x)
    x = keras.layers.ReLU(name="stem_relu1")(x)
    x = keras.layers.Conv2D(channels, 4, strides=2, padding="same", name="stem_conv2")(x)
    x = keras.layers.GroupNormalization(groups, epsilon=1e-5, name="stem_norm2")(x)
    x = keras.layers.ReLU(name="stem_relu2")(x)
    x = keras.layers.Conv2D(channels, 4, strides=2, padding="same", name="stem_conv3")(x)
    field_groups = groups if width % groups == 0 else 1
    field = ODEConvField(width, groups=field_groups, name="field", dtype="float32")  # solved in float32
    x = ODEBlock(field, solver=solver, rtol=rtol, atol=atol, num_steps=num_steps, step_size=step_size,
                 first_step=first_step, max_steps=max_steps, gradient=gradient, augment_dims=augment_dims,
                 t1=t1, name="ode_block")(x)
    x = keras.layers.GroupNormalization(groups, epsilon=1e-5, name="head_norm")(x)
    x = keras.layers.ReLU(name="head_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, activation=classifier_activation, name="classifier",
                                 dtype="float32")(x)
    return ODEClassifier(inputs, outputs, name=name)


__all__ = ["ODEBlock", "odeint", "ODEConvField", "ODEClassifier", "ode_classifier", "SolverError"]
