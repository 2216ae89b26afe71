"""Step-size controllers of the adaptive integrator: small objects with one method.

The integrator measures the RMS error ratio ``err`` of each attempted step
(accepted when ``err <= 1``) and asks the controller for the factor ``fac`` the
step is divided by: ``h_next = h / fac``, kept in ``[1/ifactor, 1/dfactor]``
by the integrator, with no growth right after a rejection (Hairer, Nørsett &
Wanner I, II.4). ``err`` is O(h^k), k = embedded order + 1 (5 for dopri5).

A new controller subclasses :class:`Controller` and overrides :meth:`Controller.factors`
(pass the object as ``controller=`` to :func:`odezoo.odeint` or ``integrate``);
:data:`CONTROLLERS` names the built-in ones for ``controller="..."`` (also on
:class:`odezoo.ODEBlock`, which saves the name).
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
    accepted steps in a row before this one (0 at the start and after a rejection);
    ``err_prev2``: the accepted error ratio before ``err_prev`` (1e-4 until there is
    one); ``accepted``: accepted steps so far.
    """

    h: tf.Tensor
    h_prev: tf.Tensor
    err_prev: tf.Tensor
    streak: tf.Tensor
    err_prev2: tf.Tensor = None
    accepted: tf.Tensor = None


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


@dataclass(frozen=True)
class PIDController(Controller):
    """Söderlind's PID family, parameterised as diffrax's ``PIDController`` is.

    ``h_{n+1} = h_n · safety · err_n^(-β1/k) · err_{n-1}^(-β2/k) · err_{n-2}^(-β3/k)``
    with β1 = p + i + d, β2 = −(p + 2d), β3 = d (``pcoeff``, ``icoeff``, ``dcoeff``;
    Söderlind, ACM TOMS 29, 2003; Söderlind & Wang, J. Comput. Appl. Math. 185, 2006).
    The defaults (0, 1, 0) are the elementary controller h·safety·err^(-1/k);
    ``PIDController(pcoeff=0.4, icoeff=0.3)`` is diffrax's suggestion for non-stiff
    problems, and ``pcoeff = β·k, icoeff = 1 − 1.75·β·k`` reproduces :class:`PIController`.
    A history term whose error is not yet known (the first steps) counts as 1.
    """

    pcoeff: float = 0.0
    icoeff: float = 1.0
    dcoeff: float = 0.0

    def factors(self, ratio, memory, exponent):
        b1 = self.pcoeff + self.icoeff + self.dcoeff
        b2 = -(self.pcoeff + 2.0 * self.dcoeff)
        b3 = self.dcoeff
        one = tf.ones_like(ratio)
        known = memory.accepted if memory.accepted is not None else memory.streak
        e1 = tf.where(known >= 1, memory.err_prev, one)
        e2 = one if memory.err_prev2 is None else tf.where(known >= 2, memory.err_prev2, one)
        fac = tf.pow(ratio, b1 * exponent) * tf.pow(e1, b2 * exponent) * tf.pow(e2, b3 * exponent)
        return fac / self.safety, tf.pow(ratio, exponent) / self.safety


CONTROLLERS = {"predictive": PredictiveController, "pi": PIController, "pid": PIDController}


def check_controller(arg, controller):
    """A name in :data:`CONTROLLERS` or a :class:`Controller` object (a ValueError naming the choices otherwise)."""
    if isinstance(controller, Controller) or (isinstance(controller, str) and controller in CONTROLLERS):
        return controller
    raise checks.bad_value(arg, controller, ", ".join(map(repr, CONTROLLERS)) + " or a Controller object")


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
