"""Step-size controllers of the adaptive integrator: small objects with one method.

The integrator measures the RMS error ratio ``err`` of each attempted step
(accepted when ``err <= 1``) and asks the controller for the factor ``fac`` the
step is divided by: ``h_next = h / fac``, kept in ``[1/ifactor, 1/dfactor]``
by the integrator, with no growth right after a rejection (Hairer, Nørsett &
Wanner I, II.4). ``err`` is O(h^k), k = embedded order + 1 (5 for dopri5).

A new controller subclasses :class:`Controller` and overrides :meth:`Controller.factors`;
:data:`CONTROLLERS` names the built-in ones for ``controller="..."``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import tensorflow as tf

from odezoo import checks


class StepMemory(NamedTuple):
    """What a controller may look at besides this step's error ratio (all tensors).

    ``h``: this step; ``h_prev``: the last accepted step; ``err_prev``: the last
    accepted error ratio (at least 1e-4; 1e-4 before the first); ``streak``:
    accepted steps in a row before this one (0 at the start and after a rejection).
    """

    h: tf.Tensor
    h_prev: tf.Tensor
    err_prev: tf.Tensor
    streak: tf.Tensor


@dataclass(frozen=True)
class Controller:
    """A step-size controller (Hairer's constants by default).

    Attributes:
        safety: the safety factor (0.9); also sets the end-of-interval rule.
        ifactor, dfactor: bounds of the step ratio h_new / h, kept in [dfactor, ifactor].
    """

    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2

    def factors(self, ratio, memory: StepMemory, exponent: float):
        """``(fac, fac_rejected)``: divide h by ``fac`` after an accepted step, by ``fac_rejected`` after a rejection.

        Args:
            ratio: this step's error ratio, finite and at least 1e-10.
            memory: :class:`StepMemory`.
            exponent: 1/k (0.2 for dopri5).
        """
        raise NotImplementedError


@dataclass(frozen=True)
class PredictiveController(Controller):
    """Gustafsson's predictive controller ("PC11"), the default.

    ``h_{n+1} = h_n · 0.9·err_n^(-1/k) · (err_{n-1}/err_n)^(1/k) · h_n/h_{n-1}``
    (Gustafsson, ACM TOMS 20, 1994; Hairer & Wanner II, IV.8, eq. (8.25);
    Söderlind, Numer. Algorithms 31, 2002). Modelling err ≈ φ·h^k with φ varying
    smoothly, it extrapolates the trend of φ, so a step sequence that keeps
    growing (or shrinking) is followed without the lag of the elementary
    controller ``h·0.9·err^(-1/k)`` or of a PI controller. Its trend needs two
    controlled steps, so the first two steps, and the two after a rejection,
    use the elementary one. Why: on Neural-ODE fields the steps grow from
    Hairer's cautious first step over the whole (short) interval, and the
    elementary or PI controller trails that growth with more steps than the
    tolerance asks for (benchmarks/ode/README.md).
    """

    def factors(self, ratio, memory, exponent):
        fac_i = tf.pow(ratio, exponent) / self.safety
        fac_pc = fac_i * tf.pow(ratio / memory.err_prev, exponent) * tf.abs(memory.h_prev / memory.h)
        return tf.where(memory.streak >= 2, fac_pc, fac_i), fac_i


@dataclass(frozen=True)
class PIController(Controller):
    """Hairer's PI controller of ``dopri5.f``: ``h·0.9·err_n^-(1/k - 0.75β)·err_{n-1}^β``, β = 0.04.

    Gustafsson, ACM TOMS 17, 1991. Its low gain damps the step-size oscillation
    of stability-limited (stiff-ish) fields: prefer it there (on Van der Pol,
    mu = 50, at 1e-3 it made fewer field calls and far fewer rejections than the
    predictive or the elementary controller, in a NumPy model of this integrator).
    """

    beta: float = 0.04

    def factors(self, ratio, memory, exponent):
        fac11 = tf.pow(ratio, exponent - self.beta * 0.75)
        return fac11 / tf.pow(memory.err_prev, self.beta) / self.safety, fac11 / self.safety


CONTROLLERS = {"predictive": PredictiveController, "pi": PIController}


def make_controller(controller="predictive", *, safety=0.9, ifactor=10.0, dfactor=0.2, beta=0.04):
    """A :class:`Controller` from a name in :data:`CONTROLLERS` (``beta``: "pi" only), or ``controller`` itself."""
    if isinstance(controller, Controller):
        return controller
    if not isinstance(controller, str) or controller not in CONTROLLERS:
        raise checks.bad_value("controller", controller, ", ".join(map(repr, CONTROLLERS)))
    kwargs = dict(safety=safety, ifactor=ifactor, dfactor=dfactor)
    if CONTROLLERS[controller] is PIController:
        kwargs["beta"] = beta
    return CONTROLLERS[controller](**kwargs)
