"""odezoo's Dormand-Prince 5(4) with tfp's ``Solver.solve`` interface.

Why not tfp's ``DormandPrince`` (measured, tfp 0.25; see docs/ode.md): under
``jit_compile=True`` its ``max_num_steps`` is dropped and a NaN in the field
hangs the solve; its adjoint controls error on the parameter-gradient
components too; its first step is fixed. This class keeps tfp's call signature
and returns ``tfp.math.ode.Results``, so it plugs into
``tfp.bijectors.FFJORD(ode_solve_fn=solver.solve)``; the integrator is
:func:`odezoo.ode.integrator.integrate`, the gradient :mod:`odezoo.ode.adjoint`.
"""

from __future__ import annotations

import tensorflow as tf

from odezoo import checks
from odezoo.ode.adjoint import ADJOINT_CHECKPOINTS, solve_flat
from odezoo.ode.controllers import Controller, make_controller
from odezoo.ode.integrator import check_dtypes
from odezoo.ode.options import check_finite_positive
from odezoo.ode.status import OK, Diagnostics, raise_for_status

_GRADIENTS = ("adjoint", "backprop")


class DormandPrince:
    """odezoo's adaptive Dormand-Prince 5(4) with tfp's ``Solver.solve`` interface.

    Args:
        rtol, atol: relative and absolute tolerances (defaults as tfp's: 1e-3, 1e-6).
        first_step_size: None (default) for Hairer's selection, or a fixed first step.
        max_steps: hard budget of attempted steps (default 10000).
        gradient: "adjoint" (default; seminorm error control backward) or "backprop".
        adjoint_rtol, adjoint_atol: the backward solve's tolerances (default None: 10x
            the forward ones; see ``ADJOINT_TOL_FACTOR``).
        adjoint_checkpoints: forward states per interval the backward solve restarts y
            from (default 1, the interval's midpoint; 0 for none).
        controller: "predictive" (default; Gustafsson's), "pi" (Hairer's dopri5.f PI), or a
            :class:`odezoo.ode.controllers.Controller` object.
        safety, ifactor, dfactor, beta: controller constants (Hairer's defaults; beta: "pi" only).
        raise_on_failure: in eager calls, raise :class:`odezoo.SolverError` on
            failure (default True). Inside a ``tf.function`` the status is only
            returned (``results.diagnostics``) and the states are NaN.

    ``solve`` runs compiled: called eagerly it wraps the solve in
    ``tf.function(jit_compile=True)`` (traced per call, since ``ode_fn`` is a new
    closure each time: wrap your own loop in a compiled ``tf.function`` for speed).
    """

    def __init__(
        self,
        rtol=1e-3,
        atol=1e-6,
        first_step_size=None,
        max_steps=10000,
        gradient="adjoint",
        controller="predictive",
        safety=0.9,
        ifactor=10.0,
        dfactor=0.2,
        beta=0.04,
        raise_on_failure=True,
        name="dopri5",
        adjoint_rtol=None,
        adjoint_atol=None,
        adjoint_checkpoints=ADJOINT_CHECKPOINTS,
    ):
        if gradient not in _GRADIENTS:
            raise checks.bad_value("gradient", gradient, ", ".join(map(repr, _GRADIENTS)))
        for arg, value in (
            ("rtol", rtol),
            ("atol", atol),
            ("adjoint_rtol", adjoint_rtol),
            ("adjoint_atol", adjoint_atol),
            ("first_step_size", first_step_size),
        ):
            check_finite_positive(arg, value, allow_none=arg not in ("rtol", "atol"))
        self._check_controller(controller, safety, ifactor, dfactor, beta)
        checks.non_negative_int("adjoint_checkpoints", adjoint_checkpoints)
        self.adjoint = dict(
            adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol, adjoint_checkpoints=adjoint_checkpoints
        )
        checks.positive_int("max_steps", max_steps)
        self.rtol, self.atol = rtol, atol
        self.first_step_size = first_step_size
        self.max_steps = max_steps
        self.gradient = gradient
        self.controller = dict(controller=controller, safety=safety, ifactor=ifactor, dfactor=dfactor, beta=beta)
        self.raise_on_failure = raise_on_failure
        self.name = name

    @staticmethod
    def _check_controller(controller, safety, ifactor, dfactor, beta):
        check_finite_positive("safety", safety, allowed="a finite float in (0, 1]")
        if not safety <= 1:
            raise checks.bad_value("safety", safety, "a finite float in (0, 1]")
        check_finite_positive("ifactor", ifactor, allowed="a finite float >= 1")
        check_finite_positive("dfactor", dfactor, allowed="a finite float in (0, 1]")
        if not (ifactor >= 1 and dfactor <= 1):
            raise ValueError(
                f"Invalid value for `ifactor`/`dfactor`. Received: ifactor={ifactor!r}, "
                f"dfactor={dfactor!r}. Allowed: ifactor >= 1 and 0 < dfactor <= 1, both finite."
            )
        checks.non_negative("beta", beta)
        if not isinstance(controller, Controller):
            make_controller(controller)  # a ValueError naming CONTROLLERS for an unknown name

    def options(self):
        return dict(
            rtol=self.rtol, atol=self.atol, first_step=self.first_step_size, max_steps=self.max_steps, **self.controller
        )

    def solve(
        self,
        ode_fn,
        initial_time,
        initial_state,
        solution_times,
        jacobian_fn=None,
        jacobian_sparsity=None,
        batch_ndims=None,
        previous_results=None,
        constants=None,
    ):
        """Solve ``dy/dt = ode_fn(t, y, **constants)`` (tfp's signature).

        ``jacobian_fn``, ``jacobian_sparsity``, ``batch_ndims`` and
        ``previous_results`` are accepted and unused (explicit method; the
        error norm is over the whole state). ``solution_times`` is a 1-D
        sequence of times at or after ``initial_time`` (or before it, for a
        backward solve), monotone; tfp's ``ChosenBySolver`` is not supported.

        Returns:
            ``tfp.math.ode.Results(times, states, diagnostics, solver_internal_state=None)``,
            ``states`` shaped like ``initial_state`` with a leading time axis.
        """
        del jacobian_fn, jacobian_sparsity, batch_ndims, previous_results
        import tensorflow_probability as tfp

        if isinstance(solution_times, tfp.math.ode.ChosenBySolver):
            raise ValueError("odezoo's dopri5 needs explicit `solution_times` (ChosenBySolver is not supported).")
        constants = {} if constants is None else constants
        flat_y = [tf.convert_to_tensor(y) for y in tf.nest.flatten(initial_state)]
        dtype = check_dtypes(flat_y)
        times = tf.cast(tf.reshape(tf.convert_to_tensor(solution_times), [-1]), dtype)
        flat_c = [tf.convert_to_tensor(c) for c in tf.nest.flatten(constants)]

        def run(t0, ys, ts, cs):
            outputs, info = solve_flat(
                ode_fn,
                initial_state,
                constants,
                t0,
                ys,
                ts,
                cs,
                options=dict(self.options(), **self.adjoint),
                gradient=self.gradient,
            )
            return outputs, info

        if tf.executing_eagerly():
            run = tf.function(run, jit_compile=True, reduce_retracing=False)
        outputs, info = run(tf.cast(initial_time, dtype), flat_y, times, flat_c)
        if self.raise_on_failure:
            raise_for_status(
                info["reason"],
                rtol=self.rtol,
                atol=self.atol,
                time_reached=info["t"],
                num_steps=info["steps"],
                max_steps=self.max_steps,
                solver=self.name,
            )
        states = tf.nest.pack_sequence_as(initial_state, outputs)
        diag = Diagnostics(
            info["nfe"],
            tf.constant(0, tf.int32),
            tf.constant(0, tf.int32),
            tf.where(tf.equal(info["reason"], OK), 0, -1),
            info["reason"],
            info["steps"],
            info["accepted"],
            info["t"],
        )
        return tfp.math.ode.Results(times=times, states=states, diagnostics=diag, solver_internal_state=None)


__all__ = ["DormandPrince"]
