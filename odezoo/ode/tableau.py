"""Butcher tableaus of embedded Runge-Kutta pairs, as data the adaptive integrator reads.

A pair is registered by making a :class:`ButcherTableau`; the integrator
(:func:`odezoo.ode.integrator.integrate`) takes one and needs no change for another
FSAL pair with the same dense-output form.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit embedded pair with its error weights and dense-output coefficients.

    Attributes:
        name: short name ("dopri5").
        c: nodes c_i (len s).
        a: rows of A below the diagonal (row i has i entries).
        b: weights of the propagated solution (order ``order``).
        error: error weights e = b - b_hat (the embedded estimate is h·Σ e_i k_i).
        dense: weights of the 5th continuous term of Shampine's dense output
            (``dopri5.f``'s ``contd5``); the other terms come from y, y_new, k1 and k_s.
        order: order of ``b``; embedded_order: order of ``b_hat``.
        fsal: first same as last: the last row of A equals b and c[-1] = 1, so the
            last stage is f at the new point, reused as the next step's first.
    """

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    error: tuple[float, ...]
    dense: tuple[float, ...]
    order: int
    embedded_order: int
    fsal: bool = True

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def b_hat(self) -> tuple[float, ...]:
        """Weights of the embedded solution, b - e."""
        return tuple(b - e for b, e in zip(self.b, self.error))

    @property
    def error_exponent(self) -> float:
        """1/k for the error model err ∝ h^k, k = embedded_order + 1 (controllers use it)."""
        return 1.0 / (self.embedded_order + 1)

    @property
    def evaluations_per_step(self) -> int:
        """Field calls per attempted step (one fewer with FSAL)."""
        return self.stages - 1 if self.fsal else self.stages


# Dormand & Prince (1980), FSAL: the 7th stage is f at the new point.
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
DOPRI5 = ButcherTableau(
    name="dopri5",
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=_DP_A,
    b=_DP_A[6] + (0.0,),
    # 5th-order minus embedded 4th-order weights (stages 1..7)
    error=(71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40),
    # Shampine's dense output (dopri5.f, contd5)
    dense=(
        -12715105075 / 11282082432,
        0.0,
        87487479700 / 32700410799,
        -10690763975 / 1880347072,
        701980252875 / 199316789632,
        -1453857185 / 822651844,
        69997945 / 29380423,
    ),
    order=5,
    embedded_order=4,
)
