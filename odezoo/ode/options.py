"""Solver names and option checks: the one table of adaptive solvers, and the checks every entry point shares.

TensorFlow-free (the builder and ``describe()`` read the table under any backend).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from odezoo import checks


@dataclass(frozen=True)
class AdaptiveSolver:
    """An adaptive solver of :func:`odezoo.odeint` / :class:`odezoo.ODEBlock`.

    Attributes:
        name: the ``solver=`` name.
        order: convergence order (None: variable, e.g. BDF).
        gradients: the gradient methods offered ("adjoint", "backprop").
        tfp: True for tfp's solvers, run behind a :class:`odezoo.ode.tfp.TFPGuard`.
        description: one line for docs and errors.
    """

    name: str
    order: int | None
    gradients: tuple[str, ...]
    tfp: bool
    description: str


SOLVERS = {
    s.name: s
    for s in (
        AdaptiveSolver("dopri5", 5, ("adjoint", "backprop"), False, "odezoo's own Dormand-Prince 5(4)"),
        AdaptiveSolver("tfp_dopri5", 5, ("adjoint",), True, "tfp.math.ode.DormandPrince behind odezoo's guards"),
        AdaptiveSolver("bdf", None, ("adjoint",), True, "tfp.math.ode.BDF behind odezoo's guards, per sample"),
    )
}
ADAPTIVE = tuple(SOLVERS)
TFP_SOLVERS = tuple(name for name, s in SOLVERS.items() if s.tfp)
GRADIENTS = ("auto", "adjoint", "backprop")


def check_solver(solver):
    """Validate a solver name: an adaptive solver or a registered scheme (UnknownNameError otherwise)."""
    if solver in ADAPTIVE:
        return solver
    from odezoo import _registry

    if not isinstance(solver, str):
        raise checks.bad_value("solver", solver, "'dopri5', 'tfp_dopri5', 'bdf' or a registered scheme name")
    try:
        _registry.get_scheme(solver)
    except LookupError:
        from odezoo._errors import UnknownNameError

        raise UnknownNameError("solver", solver, list(ADAPTIVE) + _registry.list_schemes()) from None
    from odezoo._layers import make_scheme

    if any(width != 4 for width in make_scheme(solver, {}).block_fields(4)):
        # e.g. "reversible": its fields act on halves of the state, a partitioned system
        raise checks.bad_value(
            "solver",
            solver,
            "an adaptive solver or a scheme whose fields take the whole "
            f"state (solver={solver!r} splits the state, so it cannot solve dy/dt = f(t, y))",
        )
    return solver


def resolve_gradient(solver, gradient):
    """The gradient method actually used; a clear ValueError for unsupported combinations."""
    if gradient not in GRADIENTS:
        raise checks.bad_value("gradient", gradient, ", ".join(map(repr, GRADIENTS)))
    spec = SOLVERS.get(solver)
    if gradient == "auto":
        return "adjoint" if spec is not None else "backprop"
    if gradient == "adjoint" and spec is None:
        raise ValueError(
            f"gradient='adjoint' is not offered for the fixed-grid solver {solver!r}: differentiate "
            "through its steps with gradient='backprop' (or 'auto'), or use solver='dopri5'."
        )
    if gradient == "backprop" and spec is not None and "backprop" not in spec.gradients:
        raise ValueError(
            f"gradient='backprop' is not offered for {solver!r} (tfp's solvers only have the adjoint); "
            "use solver='dopri5' for backprop through an adaptive solve."
        )
    return gradient


def _is_tensor(value):
    tf = sys.modules.get("tensorflow")  # no TensorFlow imported: the value cannot be a tensor
    return tf is not None and isinstance(value, (tf.Tensor, tf.Variable))


def check_finite_positive(arg, value, *, allow_none=False, allowed="a finite positive float"):
    """Validate a numeric solver option (a Python number; tensors are left to the caller)."""
    if value is None and allow_none:
        return None
    if _is_tensor(value):
        return value
    if not checks.is_real(value) or not (math.isfinite(value) and value > 0):
        raise checks.bad_value(arg, value, ("None or " if allow_none else "") + allowed)
    return value


def check_options(solver, *, rtol, atol, num_steps, step_size, first_step, max_steps):
    """The numeric options of ``odeint`` / ``ODEBlock``; a fixed grid needs exactly one of num_steps, step_size."""
    checks.positive("rtol", rtol)
    checks.positive("atol", atol)
    checks.positive_int("num_steps", num_steps, allow_none=True)
    checks.positive("step_size", step_size, allow_none=True)
    checks.positive("first_step", first_step, allow_none=True)
    checks.positive_int("max_steps", max_steps)
    if solver not in ADAPTIVE:
        if (num_steps is None) == (step_size is None):
            raise ValueError(
                f"The fixed-grid solver {solver!r} needs exactly one of `num_steps` or `step_size`. "
                f"Received: num_steps={num_steps!r}, step_size={step_size!r}."
            )
