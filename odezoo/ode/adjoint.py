"""The continuous adjoint of the adaptive integrator, and ``solve_flat``, the core tfp-style entry.

``gradient="adjoint"``: the augmented system (state, adjoint, parameter-gradient
integrals) is integrated backward with error control on the state and the
adjoint only: the "seminorm" of Kidger, Chen & Lyons, "Hey, that's not an ODE",
ICML 2021. Gradients reach the ``tf.Variable``s the field reads and the
``constants``. ``gradient="backprop"`` differentiates through the accepted steps
(the ``while_loop`` has ``maximum_iterations = max_steps``, which XLA needs).
"""

from __future__ import annotations

import tensorflow as tf

from odezoo.ode.integrator import integrate, rms
from odezoo.ode.status import DRIFT, OK, raise_for_status, run_hook


# The backward solve's defaults (measured on the peer problem, benchmarks/ode/README.md,
# "The adjoint's gradient error"). The gradient's error is dominated by the backward solve
# re-integrating y from the *computed* y(t1): restarting y from one forward state in the
# middle of each interval (free: dense output) cut it 5.6x at 1e-5. With that, the backward
# solve's own error is small beside what it inherits from the forward solve, so its
# tolerances are 10x looser than the forward ones: 30% fewer backward evaluations, and the
# gradient still 3x more accurate than without the restart.
ADJOINT_CHECKPOINTS = 1
ADJOINT_TOL_FACTOR = 10.0
# Where each backward solve (one per interval between restarts) takes its first step:
# "forward", the step the forward solve was using at that time (no probe, and
# no ramp-up from a cautious start: benchmarks/ode/README.md, "Issue 14"), or "select",
# Hairer's initial step selection at every restart (one more evaluation each, and a small
# first step).
ADJOINT_FIRST_STEPS = ("forward", "select")
ADJOINT_FIRST_STEP = "forward"
# The backward solve re-integrates y from each restart to the next, where the forward solve's
# state is known: a re-integrated state farther from it than this many units of the backward
# tolerance (atol + rtol·|y|, RMS) fails the gradient with status DRIFT instead of returning
# gradients computed along a wrong trajectory. Backward in time y is unstable where the field
# is strongly dissipative (a stiff one: e^{1000 t} on y' = -1000 y), and such a gradient was
# finite and wrong by 95 orders of magnitude before this guard (tests/test_esdirk.py).
ADJOINT_DRIFT_LIMIT = 1e3


def _refine(t0, times, k):
    """``times`` with ``k`` evenly spaced points inserted before each (after ``t0``)."""
    if k == 0:
        return times
    prev = tf.concat([tf.reshape(tf.cast(t0, times.dtype), [1]), times[:-1]], 0)
    frac = tf.range(1, k + 1, dtype=times.dtype) / (k + 1)
    inner = prev[:, None] + (times - prev)[:, None] * frac[None, :]
    return tf.reshape(tf.concat([inner, times[:, None]], 1), [-1])


def _spread(d, k):
    """Cotangents at ``times`` → at the refined times (zero at the inserted points)."""
    if k == 0:
        return d
    d = d[:, None]
    z = tf.zeros_like(d)
    return tf.reshape(tf.concat([z] * k + [d], 1), tf.concat([[-1], tf.shape(d)[2:]], 0))


@tf.autograph.experimental.do_not_convert
def adjoint_solve(fn, t0, y0, times, constants, *, options, on_forward=None, on_backward=None):
    """:func:`integrate` under a continuous-adjoint custom gradient.

    Args:
        fn: ``fn(t, y_flat, c_flat) -> flat``.
        y0, constants: flat lists of tensors (constants receive gradients).
        options: keyword options of :func:`integrate`, plus the backward solve's
            ``adjoint_rtol`` / ``adjoint_atol`` (None: ``ADJOINT_TOL_FACTOR`` times the
            forward ones) and ``adjoint_checkpoints`` (default ``ADJOINT_CHECKPOINTS``):
            the number of evenly spaced forward states, per interval between solution
            times, from which the backward solve restarts y (0: only at solution times);
            ``adjoint_first_step``, one of :data:`ADJOINT_FIRST_STEPS` (default
            :data:`ADJOINT_FIRST_STEP`, "forward").
        on_forward / on_backward: optional ``callable(info)`` run on the forward /
            backward info dict (the Keras layer assigns its NFE and status variables);
            whatever ops it returns are made control dependencies of the results.

    Returns ``(outputs, info)`` as :func:`integrate`.

    With an implicit pair (``options["tableau"]``, the ESDIRK ones), the problem is taken to be
    stiff, where re-integrating y backward is unstable: :mod:`odezoo.ode.interpolated` solves
    the adjoint with y read off the forward solve instead.
    """
    ny = len(y0)
    options = dict(options)
    adjoint_rtol = options.pop("adjoint_rtol", None)
    adjoint_atol = options.pop("adjoint_atol", None)
    if getattr(options.get("tableau"), "implicit", False):
        from odezoo.ode.interpolated import interpolated_adjoint_solve

        rtol = ADJOINT_TOL_FACTOR * options["rtol"] if adjoint_rtol is None else adjoint_rtol
        atol = ADJOINT_TOL_FACTOR * options["atol"] if adjoint_atol is None else adjoint_atol
        return interpolated_adjoint_solve(fn, t0, y0, times, constants, options=options, rtol=rtol, atol=atol,
                                          on_forward=on_forward, on_backward=on_backward)  # fmt: skip
    checkpoints = int(options.pop("adjoint_checkpoints", ADJOINT_CHECKPOINTS))
    first_steps = options.pop("adjoint_first_step", ADJOINT_FIRST_STEP)
    if first_steps not in ADJOINT_FIRST_STEPS:
        raise ValueError(f"adjoint_first_step must be one of {ADJOINT_FIRST_STEPS}. Received: {first_steps!r}.")
    times = tf.convert_to_tensor(times)
    eager = tf.executing_eagerly()
    fine = _refine(t0, times, checkpoints)

    @tf.custom_gradient
    def _solve(*args):
        ys, cs = list(args[:ny]), list(args[ny:])
        fine_outputs, info = integrate(lambda t, y: fn(t, y, cs), t0, ys, fine, **options)
        outputs = [o[checkpoints :: checkpoints + 1] for o in fine_outputs]
        extra = run_hook(on_forward, info)
        with tf.control_dependencies(extra):
            outputs = [tf.identity(o) for o in outputs]
        info_flat = [info[k] for k in ("reason", "nfe", "steps", "accepted", "t")]
        starts = tf.stop_gradient(info["step_sizes"]) if first_steps == "forward" else None

        def grad_fn(*dys, variables=None):
            variables = list(variables or [])
            dys = [tf.zeros_like(o) if d is None else d for d, o in zip(dys[:ny], outputs)]
            dys = [_spread(d, checkpoints) for d in dys]
            opts = dict(options)
            opts["rtol"] = ADJOINT_TOL_FACTOR * options["rtol"] if adjoint_rtol is None else adjoint_rtol
            opts["atol"] = ADJOINT_TOL_FACTOR * options["atol"] if adjoint_atol is None else adjoint_atol
            grads_y, grads_c, grads_v, binfo = _adjoint_backward(
                fn, t0, fine, fine_outputs, dys, cs, variables, opts, starts, ys
            )
            with tf.control_dependencies(run_hook(on_backward, binfo)):
                grads_y = [tf.identity(g) for g in grads_y]
            if eager:
                raise_for_status(
                    binfo["reason"],
                    rtol=opts["rtol"],
                    atol=opts["atol"],
                    time_reached=binfo["t"],
                    num_steps=binfo["steps"],
                    max_steps=options.get("max_steps"),
                    what="adjoint (backward) solve",
                )
            return grads_y + grads_c, grads_v

        return outputs + info_flat, grad_fn

    res = _solve(*y0, *constants)
    outputs = list(res[:ny])
    info = dict(zip(("reason", "nfe", "steps", "accepted", "t"), res[ny:]))
    return outputs, info


@tf.autograph.experimental.do_not_convert
def _adjoint_backward(fn, t0, times, outputs, dys, consts, variables, options, starts=None, y0=None):
    """Integrate (y, a, ∫a·∂f/∂θ, ∫a·∂f/∂c) backward from times[-1] to t0.

    ``starts``: None (Hairer's selection at every restart) or the first step of the backward
    solve that starts at each of ``times`` (the forward solve's ``step_sizes``). ``y0``: the
    forward solve's initial state (the drift guard's last comparison), or None.
    """
    ny, nc, nv = len(outputs), len(consts), len(variables)
    dtype = outputs[0].dtype
    n = times.shape[0]
    times = tf.cast(times, dtype)
    t0 = tf.cast(t0, dtype)
    v_values = [v for v in variables]

    def aug_fn(t, state, cs=consts):
        y = state[:ny]
        a = state[ny : 2 * ny]
        with tf.GradientTape() as tape:
            tape.watch(y)
            tape.watch(cs)
            for v in v_values:
                tape.watch(v)
            fy = [tf.cast(tf.convert_to_tensor(o), dtype) for o in fn(t, y, cs)]
        vjps = tape.gradient(
            fy, y + list(cs) + v_values, output_gradients=a, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        vjps = [tf.convert_to_tensor(g) for g in vjps]
        return fy + [-g for g in vjps]

    # the forward solve's seminorm (components it left out of its error norm, such as the
    # regularisation's integrals, which nothing depends on) holds for the state and its adjoint
    forward_mask = list(options.get("norm_mask") or [True] * ny)
    mask = forward_mask * 2 + [False] * (nc + nv)
    opts = dict(options)
    opts["norm_mask"] = mask
    zero = tf.constant(0, tf.int32)

    # one while_loop over the intervals (one traced copy of the integrator, whatever len(times))
    def cond(j, y, adj, g_c, g_v, reason, nfe, steps, accepted, t_reached):
        return tf.logical_and(j >= 0, tf.equal(reason, OK))

    def body(j, y, adj, g_c, g_v, reason, nfe, steps, accepted, t_reached):
        t_start = times[j]
        t_stop = tf.where(j > 0, times[tf.maximum(j - 1, 0)], t0)
        first = opts.get("first_step") if starts is None else tf.gather(starts, j)
        aug0 = list(y) + list(adj) + list(g_c) + list(g_v)
        outs, info = integrate(aug_fn, t_start, aug0, tf.reshape(t_stop, [1]), **dict(opts, first_step=first))
        state = [o[0] for o in outs]
        prev = tf.maximum(j - 1, 0)
        more = tf.cast(j > 0, dtype)
        # the drift guard: the re-integrated y against the forward state there
        known = [tf.gather(o, prev) for o in outputs]
        if y0 is not None:  # at t0: the forward solve's initial state
            known = [tf.where(j > 0, k, tf.cast(y, dtype)) for k, y in zip(known, y0)]
        drift = rms(
            [(s - k) / (opts["atol"] + opts["rtol"] * tf.abs(k)) for s, k in zip(state[:ny], known)], forward_mask
        )
        checked = tf.logical_or(j > 0, y0 is not None)
        drifted = tf.logical_and(checked, tf.logical_and(tf.equal(info["reason"], OK), drift > ADJOINT_DRIFT_LIMIT))
        # restart y from the forward solution (torchdiffeq does too); add that time's cotangent
        y = [tf.where(j > 0, tf.gather(o, prev), s) for o, s in zip(outputs, state[:ny])]
        adj = [a + more * tf.gather(dy, prev) for a, dy in zip(state[ny : 2 * ny], dys)]
        t_reached = tf.where(tf.equal(info["reason"], OK), t_stop, info["t"])
        return (
            j - 1,
            y,
            adj,
            state[2 * ny : 2 * ny + nc],
            state[2 * ny + nc :],
            tf.where(drifted, DRIFT, info["reason"]),
            nfe + info["nfe"],
            steps + info["steps"],
            accepted + info["accepted"],
            t_reached,
        )

    loop_vars = (
        tf.constant(n - 1, tf.int32),
        [o[n - 1] for o in outputs],
        [dy[n - 1] for dy in dys],
        [tf.zeros_like(c) for c in consts],
        [tf.zeros(v.shape, dtype) for v in v_values],
        tf.constant(OK, tf.int32),
        zero,
        zero,
        zero,
        times[n - 1],
    )
    (_, _, adj, g_c, g_v, reason, nfe, steps, accepted, t_reached) = tf.while_loop(
        cond, body, loop_vars, maximum_iterations=n
    )
    info = dict(reason=reason, nfe=nfe, steps=steps, accepted=accepted, t=t_reached)
    failed = tf.not_equal(reason, OK)  # a failed backward solve gives NaN gradients, never plausible ones

    def blank(gs):
        return [tf.where(failed, tf.cast(float("nan"), g.dtype), g) for g in gs]

    return blank(adj), blank(g_c), blank(g_v), info


def solve_flat(
    ode_fn,
    state_structure,
    constants_structure,
    t0,
    ys,
    ts,
    cs,
    *,
    options,
    gradient,
    on_forward=None,
    on_backward=None,
):
    """Solve with a tfp-style ``ode_fn(t, y, **constants)`` on flat lists; the shared core."""

    def fn(t, y, c):
        state = tf.nest.pack_sequence_as(state_structure, y)
        kwargs = tf.nest.pack_sequence_as(constants_structure, c) if c else {}
        return tf.nest.flatten(ode_fn(t, state, **kwargs))

    if gradient in ("adjoint", "checkpoint"):
        from odezoo.ode.checkpoint import checkpoint_solve  # imports this module's integrator only

        custom = adjoint_solve if gradient == "adjoint" else checkpoint_solve
        return custom(fn, t0, ys, ts, cs, options=options, on_forward=on_forward, on_backward=on_backward)
    options = {k: v for k, v in options.items() if not k.startswith("adjoint_")}
    outputs, info = integrate(lambda t, y: fn(t, y, cs), t0, ys, ts, **options)
    extra = run_hook(on_forward, info)
    if extra:
        with tf.control_dependencies(extra):
            outputs = [tf.identity(o) for o in outputs]
    return outputs, info


__all__ = [
    "adjoint_solve",
    "solve_flat",
    "ADJOINT_CHECKPOINTS",
    "ADJOINT_TOL_FACTOR",
    "ADJOINT_FIRST_STEPS",
    "ADJOINT_FIRST_STEP",
    "ADJOINT_DRIFT_LIMIT",
]
