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
        gradients: the gradient methods offered ("adjoint", "backprop", "checkpoint").
        tfp: True for tfp's solvers, run behind a :class:`odezoo.ode.tfp.TFPGuard`.
        description: one line for docs and errors.
    """

    name: str
    order: int | None
    gradients: tuple[str, ...]
    tfp: bool
    description: str


_OWN = ("adjoint", "backprop", "checkpoint")  # what odezoo's integrator offers
SOLVERS = {
    s.name: s
    for s in (
        AdaptiveSolver("dopri5", 5, _OWN, False, "odezoo's own Dormand-Prince 5(4)"),
        AdaptiveSolver("tfp_dopri5", 5, ("adjoint",), True, "tfp.math.ode.DormandPrince behind odezoo's guards"),
        AdaptiveSolver("bdf", None, ("adjoint",), True, "tfp.math.ode.BDF behind odezoo's guards, per sample"),
    )
}
ADAPTIVE = tuple(SOLVERS)
TFP_SOLVERS = tuple(name for name, s in SOLVERS.items() if s.tfp)
GRADIENTS = ("auto", "adjoint", "backprop", "checkpoint")
# batch_mode="independent": "auto" is the per-row adjoint (odezoo.ode.independent_adjoint)
INDEPENDENT_GRADIENTS = ("auto", "adjoint", "backprop")
# the ``compile=`` choices (odezoo.ode.compilation), here so that they are read without TensorFlow
COMPILE_MODES = ("auto", "xla", "graph")


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


def embedded_pair(solver):
    """The registered :class:`odezoo.ExplicitRungeKutta` with embedded weights named ``solver``, or None."""
    if not isinstance(solver, str) or solver in TFP_SOLVERS:
        return None
    from odezoo import _registry

    try:
        scheme = _registry.get_scheme(solver)
    except LookupError:
        return None
    is_embedded = getattr(scheme, "is_embedded", None)
    return scheme if is_embedded is not None and is_embedded() else None


def is_adaptive(solver, num_steps=None, step_size=None):
    """Whether ``solver`` solves adaptively: tfp's solvers always; an embedded pair given no grid.

    An embedded pair (``"dopri5"`` too, once its plugin is loaded) given ``num_steps`` or
    ``step_size`` runs on that fixed grid instead.
    """
    grid = num_steps is not None or step_size is not None
    if solver in TFP_SOLVERS:
        return True
    if solver in SOLVERS:
        return not (grid and embedded_pair(solver) is not None)
    return not grid and embedded_pair(solver) is not None


def _spec(solver, num_steps, step_size):
    if not is_adaptive(solver, num_steps, step_size):
        return None  # a fixed grid
    spec = SOLVERS.get(solver)
    if spec is None:
        pair = embedded_pair(solver)
        spec = AdaptiveSolver(solver, pair.order, _OWN, False, f"the embedded pair {solver!r}")
    return spec


def resolve_gradient(solver, gradient, *, num_steps=None, step_size=None):
    """The gradient method actually used; a clear ValueError for unsupported combinations."""
    if gradient not in GRADIENTS:
        raise checks.bad_value("gradient", gradient, ", ".join(map(repr, GRADIENTS)))
    spec = _spec(solver, num_steps, step_size)
    if gradient == "auto":
        return "adjoint" if spec is not None else "backprop"
    if gradient == "adjoint" and spec is None:
        raise ValueError(
            f"gradient='adjoint' is not offered for the fixed-grid solver {solver!r}: differentiate "
            "through its steps with gradient='backprop' (or 'auto'), or use solver='dopri5'."
        )
    if gradient == "checkpoint" and (spec is None or "checkpoint" not in spec.gradients):
        raise ValueError(
            f"gradient='checkpoint' replays the accepted steps of odezoo's adaptive integrator; "
            f"{'the fixed grid' if spec is None else 'tfp solver'} {solver!r} has none: use "
            f"{'backprop' if spec is None else 'adjoint'!r}, or an embedded pair such as solver='dopri5' "
            "without num_steps/step_size."
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
    pair = embedded_pair(solver) is not None
    if solver not in ADAPTIVE or pair:
        if (num_steps is None) == (step_size is None) and not (pair and num_steps is None):
            what = (
                f"The embedded pair {solver!r} solves adaptively (rtol, atol) without a grid, or on a fixed grid "
                "with one of `num_steps` or `step_size`, not both"
                if pair
                else f"The fixed-grid solver {solver!r} needs exactly one of `num_steps` or `step_size`"
            )
            raise ValueError(f"{what}. Received: num_steps={num_steps!r}, step_size={step_size!r}.")
    implicit = pair and getattr(embedded_pair(solver), "is_implicit", lambda: False)()
    if implicit and (num_steps is not None or step_size is not None):
        raise ValueError(
            f"The implicit pair {solver!r} solves adaptively only: give rtol and atol, not a grid. "
            f"Received: num_steps={num_steps!r}, step_size={step_size!r}. (A fixed-step implicit method: "
            "'backward_euler'.)"
        )
