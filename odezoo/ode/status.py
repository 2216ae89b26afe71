"""How a solve reports: reason codes, diagnostics, the status mixin and the Keras-side checks.

Why the status is returned and not asserted: XLA drops ``tf.debugging.Assert``
(measured in ``tests/test_solvers.py::test_xla_drops_assert``) and
``tf.py_function`` does not compile. So a failed solve returns NaN states
(never silently wrong numbers) plus a reason code; callers that hold a concrete
code (eager calls, a layer's status variables read after each batch) raise
:class:`odezoo.SolverError` through :func:`raise_for_status`.
"""

from __future__ import annotations

import collections

import keras
import numpy as np
import tensorflow as tf

from odezoo._errors import SolverError
from odezoo.ode.gate import GatedApply, across_replicas

# reasons (tfp's ``diagnostics.status`` is 0 on success and -1 on failure; ours adds why)
OK, MAX_STEPS, NONFINITE, UNDERFLOW, UNORDERED, NEWTON, DRIFT, NO_EVENT = 0, 1, 2, 3, 4, 5, 6, 7
REASONS = {
    OK: "success",
    MAX_STEPS: "the step budget (max_steps attempted steps) was exhausted",
    NONFINITE: "NaN or Inf in the state, the field or the cotangents",
    UNDERFLOW: "the step size underflowed (the tolerances cannot be met: stiff or singular field?)",
    UNORDERED: "the solution times are out of order (not monotone from t0 in the direction of integration)",
    NEWTON: "an implicit stage's Newton iteration kept failing until the step size underflowed "
    "(a field too nonlinear or not smooth for the implicit solver, or NaN/Inf inside the iteration)",
    DRIFT: "the adjoint's backward re-integration of the state drifted from the forward solution "
    "(the field is unstable backward in time, e.g. stiff and dissipative): use gradient='checkpoint', "
    "or an implicit pair (kvaerno3, kvaerno5), whose adjoint reads the state off the forward solve",
    NO_EVENT: "the event function did not cross zero (in the requested direction) before the end of the "
    "interval (t1, or t_max) or within the step budget",
}


def times_ordered(t0, times):
    """A scalar bool tensor: ``times`` run monotonically from ``t0`` towards ``times[-1]``.

    Equal neighbours are allowed (the adjoint's refined grid repeats t0); the static
    checks of ``odeint`` and ``ODEBlock`` refuse repeated user times before this runs.
    """
    times = tf.reshape(times, [-1])
    t0 = tf.cast(t0, times.dtype)
    direction = tf.where(times[-1] >= t0, tf.ones([], times.dtype), -tf.ones([], times.dtype))
    edges = tf.concat([tf.reshape(t0, [1]), times], 0)
    return tf.reduce_all(direction * (edges[1:] - edges[:-1]) >= 0.0)


def run_hook(hook, info):
    """Run ``hook(info)`` (None: nothing) and return the ops it made, for control dependencies."""
    if hook is None:
        return []
    ops = hook(info)
    if ops is None:
        return []
    return [o for o in tf.nest.flatten(ops) if o is not None]


class Diagnostics(
    collections.namedtuple(
        "Diagnostics",
        [
            "num_ode_fn_evaluations",
            "num_jacobian_evaluations",
            "num_matrix_factorizations",
            "status",
            "reason",
            "num_steps",
            "num_accepted_steps",
            "time_reached",
        ],
    )
):
    """Diagnostics of one solve (tfp's four fields plus odezoo's).

    Attributes:
        num_ode_fn_evaluations: field calls in the forward solve (int32 scalar),
            the initial f(t0) and the initial-step probe included.
        num_jacobian_evaluations, num_matrix_factorizations: always 0 (explicit method).
        status: tfp's convention: 0 success, -1 failure.
        reason: odezoo's code: 0 ok, 1 step budget exhausted, 2 NaN/Inf, 3 step underflow,
            4 solution times out of order (see :data:`REASONS`).
        num_steps: attempted steps; num_accepted_steps: accepted ones.
        time_reached: the time the solution reached (the last solution time on success).
    """

    __slots__ = ()

    @property
    def success(self):
        return self.status >= 0


def raise_for_status(reason, *, rtol, atol, time_reached, num_steps, max_steps=None, what="ODE solve", solver="dopri5"):
    """Raise :class:`SolverError` if a concrete ``reason`` is not OK (no-op on symbolic tensors)."""
    try:
        code = int(np.asarray(reason))
    except (TypeError, ValueError, NotImplementedError):
        return
    if code == OK:
        return
    budget = f" of max_steps={max_steps}" if max_steps is not None else ""
    where = ""
    if time_reached is not None and num_steps is not None:  # None: the caller did not record them
        t = float(np.asarray(time_reached))
        steps = int(np.asarray(num_steps))
        where = f"; time reached t={t:.6g} after {steps} attempted steps{budget}"
    elif max_steps is not None:
        where = f"; max_steps={max_steps}"
    raise SolverError(
        f"{what} with {solver!r} failed: status {code} ({REASONS.get(code, 'unknown')}); "
        f"rtol={rtol!r}, atol={atol!r}{where}."
    )


class SolverStatus:
    """NFE counters and the solve status of a Keras layer or model that solves ODEs.

    The owner calls :meth:`add_status_weights` in ``build`` and has ``rtol``,
    ``atol``, ``max_steps`` and ``solver`` attributes. The variables (non-trainable,
    aggregation ONLY_FIRST_REPLICA, so they survive tf.distribute):

    * ``nfe_forward``, ``nfe_backward``: field evaluations of the last solves.
    * ``solver_status``: ``[forward reason, backward reason]``, followed by
      ``[forward steps, backward steps]`` when steps are tracked (0 = success; :data:`REASONS`).
    * ``time_reached`` (steps tracked only): float32 ``[forward, backward]``.
    """

    def add_status_weights(self, *, track_steps=True):
        agg = dict(trainable=False, initializer="zeros", aggregation="only_first_replica")
        self.nfe_forward = self.add_weight(name="nfe_forward", shape=(), dtype="int32", **agg)
        self.nfe_backward = self.add_weight(name="nfe_backward", shape=(), dtype="int32", **agg)
        self.solver_status = self.add_weight(
            name="solver_status", shape=(4 if track_steps else 2,), dtype="int32", **agg
        )
        if track_steps:
            self.time_reached = self.add_weight(name="time_reached", shape=(2,), dtype="float32", **agg)

    def status_hooks(self, *, accumulate=False):
        """``(on_forward, on_backward)``: solve hooks that record each solve's report in the status variables.

        The replicas agree on one report first (:func:`odezoo.ode.gate.across_replicas`). By default
        each solve overwrites the last, and a forward solve clears the backward's entries (it starts a
        step). ``accumulate``: the evaluation counts add up and the worst reason is kept, for owners that
        solve several times per step (the FFJORD flow's blocks), which reset the status themselves.
        """
        steps = self.solver_status.shape[0] == 4

        def hook(i):
            nfe = (self.nfe_forward, self.nfe_backward)[i]

            def record(info):
                info = across_replicas(info)
                status = self.solver_status
                fresh = i == 0 and not accumulate
                kept = (lambda j: tf.zeros([], status.dtype)) if fresh else (lambda j: status[j])
                reason = tf.cast(info["reason"], tf.int32)
                if accumulate:
                    reason = tf.maximum(status[i], reason)
                entries = [reason, kept(1)] if i == 0 else [kept(0), reason]
                count = tf.cast(info["nfe"], tf.int32)
                ops = [nfe.assign_add(count) if accumulate else nfe.assign(count)]
                if steps:
                    taken = tf.cast(info.get("steps", -1), tf.int32)
                    entries += [taken, kept(3)] if i == 0 else [kept(2), taken]
                ops.append(status.assign(tf.stack(entries)))
                if steps:
                    t = tf.cast(info["t"], tf.float32)
                    reached = self.time_reached
                    ops.append(reached.assign(tf.stack([t, 0.0] if i == 0 else [reached[0], t])))
                return ops

            return record

        return hook(0), hook(1)

    def status_label(self) -> str:
        """How errors name the solves (``"<label> forward solve"``)."""
        return f"{type(self).__name__} {self.name!r}"

    def check_status(self, direction="both"):
        """Raise :class:`odezoo.SolverError` if the last solve failed (reads the status variable).

        ``direction``: "forward", "backward" or "both".
        """
        status = np.asarray(self.solver_status.numpy())
        steps = status.shape[0] == 4
        reached = np.asarray(self.time_reached.numpy()) if steps else None
        checks = {"forward": [0], "backward": [1]}.get(direction, [0, 1])
        for i in checks:
            if status[i] != 0:
                raise_for_status(
                    int(status[i]),
                    rtol=self.rtol,
                    atol=self.atol,
                    time_reached=reached[i] if steps else None,
                    num_steps=status[2 + i] if steps else None,
                    max_steps=self.max_steps,
                    solver=self.solver,
                    what=f"{self.status_label()} {('forward', 'backward')[i]} solve",
                )

    def reset_status(self):
        self.solver_status.assign([0] * self.solver_status.shape[0])


class SolverGuard(keras.callbacks.Callback):
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
        return list(callbacks or []) + ([SolverGuard(checks)] if checks else [])

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


class SolvingModel(SolverChecked):
    """A mixin for a ``keras.Model`` (functional or subclassed, with Keras's own steps) whose layers
    solve ODEs: ``fit`` / ``evaluate`` log ``nfe_forward`` (and in training ``nfe_backward``),
    summed over the layers; a batch whose solve failed applies no update (:class:`GatedApply`,
    on one device and under a ``tf.distribute`` strategy); every Keras entry point raises
    :class:`odezoo.SolverError` after it (:class:`SolverChecked`).

    A model with its own ``train_step`` wraps its update in ``with self.solve_gate():``.
    The model names its solving layers in ``solving_layers()``: layers with the
    ``nfe_forward``, ``nfe_backward`` and ``solver_status`` variables of
    :class:`odezoo.ODEBlock` (:class:`SolverStatus`). ODE-Net's and the time-series
    families' models are built on it.
    """

    def solving_layers(self) -> list:
        return []

    def _nfe_logs(self, backward=True):
        layers = self.solving_layers()
        if not layers:
            return {}
        logs = {"nfe_forward": tf.add_n([tf.cast(x.nfe_forward.value, tf.float32) for x in layers])}
        if backward:
            logs["nfe_backward"] = tf.add_n([tf.cast(x.nfe_backward.value, tf.float32) for x in layers])
        return logs

    def solve_gate(self):
        """A context for the step's optimizer update: applied only if every solving layer's
        forward and backward solve succeeded (:class:`GatedApply`); for a custom ``train_step``."""
        layers = self.solving_layers()
        reasons = lambda: [x.solver_status.value[:2] for x in layers]  # noqa: E731  [forward, backward]
        return GatedApply(self.optimizer, reasons, self.trainable_variables)

    def train_step(self, data):
        if self.solving_layers() and self.optimizer is not None:
            with self.solve_gate():
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
        return self.solving_layers()
