"""odezoo's ODE core: solvers, the ``ODEBlock`` layer and the pieces plugins build on.

One concern per module:

=========================  ================================================================
``status``                 reason codes, :class:`Diagnostics`, :func:`raise_for_status`,
                           the :class:`SolverStatus` mixin, :class:`SolverChecked`
``options``                the solver table (:data:`SOLVERS`), embedded pairs, the option checks
``tableau``                :class:`ButcherTableau`, :data:`DOPRI5`, :func:`tableau_of` (a pair's data)
``controllers``            step-size controllers: predictive (default), PI, PID (:class:`Controller` objects)
``integrator``             the adaptive integrator over a tableau
``independent``            ``batch_mode="independent"``: every row its own adaptive solve
``newton``                 Newton's method for implicit (ESDIRK) stages: per-row Jacobians, JFNK/GMRES
``adjoint``                the continuous adjoint and :func:`solve_flat`
``checkpoint``             ``gradient="checkpoint"``: the discrete solve's gradient by checkpointed replay
``interpolated``           the implicit pairs' adjoint: y read off the forward solve, not re-integrated
``independent_adjoint``    ``batch_mode="independent"``'s adjoint: every row's on its own steps
``fixed_grid``             registered schemes as fixed-grid solvers
``tfp``                    tfp's solvers behind guards
``dispatch``               the :func:`solve` dispatcher and :func:`odeint`
``events``                 :func:`odeint_event`: terminal events, the event time differentiable
``regularization``         RNODE's kinetic and Jacobian integrals carried by the same solve
``settings``               :class:`Setting`: solver options settable on a built or loaded layer
``compilation``            ``compile=``: a solve compiled by XLA or by TensorFlow's graph executor
``block``                  :class:`ODEBlock`
``gate``                   a failed solve applies no optimizer update (also under tf.distribute)
``dormand_prince``         :class:`DormandPrince`, tfp's ``Solver.solve`` interface
=========================  ================================================================

Names are resolved lazily: ``odezoo.ode.options``, ``odezoo.ode.tableau`` and
``odezoo.ode.settings`` need no TensorFlow, the rest import it on first use.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ODEBlock": "block",
    "odeint": "dispatch",
    "solve": "dispatch",
    "odeint_event": "events",
    "DormandPrince": "dormand_prince",
    "SolverChecked": "status",
    "SolvingModel": "status",
    "SolverStatus": "status",
    "SolverGuard": "status",
    "raise_for_status": "status",
    "REASONS": "status",
    "Diagnostics": "status",
    "times_ordered": "status",
    "run_hook": "status",
    "SOLVERS": "options",
    "ADAPTIVE": "options",
    "AdaptiveSolver": "options",
    "check_solver": "options",
    "resolve_gradient": "options",
    "check_options": "options",
    "check_finite_positive": "options",
    "embedded_pair": "options",
    "is_adaptive": "options",
    "ButcherTableau": "tableau",
    "DOPRI5": "tableau",
    "tableau_of": "tableau",
    "Controller": "controllers",
    "PredictiveController": "controllers",
    "PIController": "controllers",
    "PIDController": "controllers",
    "check_controller": "controllers",
    "StepMemory": "controllers",
    "CONTROLLERS": "controllers",
    "make_controller": "controllers",
    "integrate": "integrator",
    "gmres": "newton",
    "integrate_independent": "independent",
    "BATCH_MODES": "dispatch",
    "LINEAR_SOLVERS": "newton",
    "adjoint_solve": "adjoint",
    "solve_flat": "adjoint",
    "apply_if_solved": "gate",
    "GatedApply": "gate",
    "across_replicas": "gate",
    "TFPGuard": "tfp",
    "Setting": "settings",
    "Settings": "settings",
    "COMPILE_MODES": "options",
    "compiled_function": "compilation",
    "resolve_compile": "compilation",
    "uses_convolution": "compilation",
    "check_regularization": "regularization",
    "regularized_solve": "regularization",
    "regularization_penalty": "regularization",
    "rademacher": "regularization",
}
_NEEDS_TF = {name for name, module in _EXPORTS.items() if module not in ("options", "tableau", "settings")}

__all__ = sorted(_EXPORTS) + ["require_tensorflow"]


def require_tensorflow(what: str) -> None:
    """Raise ``odezoo``'s BackendError unless Keras runs on TensorFlow; ``what`` names the part asked for."""
    from odezoo._keras_hook import require_tensorflow as require

    require(what)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'odezoo.ode' has no attribute {name!r}")
    if name in _NEEDS_TF:
        require_tensorflow(f"odezoo.ode.{name}")
    value = getattr(importlib.import_module(f"odezoo.ode.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(
        set(__all__)
        | {
            "status",
            "options",
            "tableau",
            "controllers",
            "integrator",
            "adjoint",
            "fixed_grid",
            "tfp",
            "dispatch",
            "events",
            "settings",
            "compilation",
            "block",
            "gate",
            "dormand_prince",
        }
    )
