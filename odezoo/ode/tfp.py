"""tfp's solvers (``DormandPrince``, ``BDF``) behind odezoo's guards: ``solver="tfp_dopri5"`` and ``"bdf"``."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from odezoo.ode.integrator import all_finite
from odezoo.ode.status import MAX_STEPS, NONFINITE, OK, UNORDERED, run_hook, times_ordered


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
        reason = tf.where(state[2] > 0, NONFINITE, tf.where(state[1] > 0, MAX_STEPS, OK))
        return state[0], reason

    def field(self, f):
        def guarded(t, y, **kw):
            dy = f(t, y, **kw)
            flat = tf.nest.flatten(dy)
            finite = all_finite([tf.convert_to_tensor(x) for x in flat])
            over = self.v[0] >= self.budget
            upd = self.v.scatter_nd_add(
                [[0], [1], [2]], tf.stack([1, tf.cast(over, tf.int32), tf.cast(tf.logical_not(finite), tf.int32)])
            )
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
                finite = all_finite(dys)
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
                deps = run_hook(on_backward, info)
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
                "odezoo.odeint(..., solver='bdf') on a single system."
            )

        return y, grad

    return run(x)


def tfp_solve(
    kind,
    f,
    y0,
    t0,
    times,
    *,
    rtol,
    atol,
    first_step,
    max_steps,
    guard,
    batch_axis=None,
    on_forward=None,
    on_backward=None,
):
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
        solver = tfp.math.ode.DormandPrince(
            rtol=rtol, atol=atol, max_num_steps=max_steps, **({"first_step_size": first_step} if first_step else {})
        )
        budget = 6 * max_steps + 1
    else:
        solver = tfp.math.ode.BDF(
            rtol=rtol, atol=atol, max_num_steps=max_steps, **({"first_step_size": first_step} if first_step else {})
        )
        budget = 8 * max_steps + 1
    guard.budget = budget
    ordered = times_ordered(t0, times)
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
            y_in, lambda y_in: tf.map_fn(per_sample, y_in, fn_output_signature=(dtype, tf.int32))
        )
        failed = tf.reduce_max(failed)
        states = tf.transpose(states, [1, 0] + list(range(2, states.shape.rank)))
    else:
        states, failed = one(y_in)
    with tf.control_dependencies([states]):
        calls, reason = TFPGuard.status(guard.v.read_value())
    # tfp's own failure (its status) or a non-finite state the guard did not see: never silent numbers
    reason = tf.where(tf.logical_and(tf.equal(reason, 0), failed > 0), MAX_STEPS, reason)
    finite = tf.reduce_all(tf.math.is_finite(states))
    reason = tf.where(tf.logical_and(tf.equal(reason, 0), tf.logical_not(finite)), NONFINITE, reason)
    reason = tf.where(ordered, reason, UNORDERED)
    info = dict(
        reason=reason,
        nfe=calls,
        steps=tf.constant(-1),
        accepted=tf.constant(-1),
        t=tf.where(tf.equal(reason, 0), times[-1], tf.constant(np.nan, dtype)),
    )
    deps = run_hook(on_forward, info)
    with tf.control_dependencies(deps):
        states = tf.where(tf.equal(reason, 0), states, tf.constant(np.nan, dtype))
    (states,) = guard.guard_cotangents([states])
    return states, info


__all__ = ["TFPGuard", "tfp_solve"]
