"""Butcher tableaus of embedded Runge-Kutta pairs, as data the adaptive integrator reads.

A pair is declared as an :class:`odezoo.ExplicitRungeKutta` scheme with embedded weights
``b_hat``, registered by a plugin like any scheme; :func:`tableau_of` turns it into the
:class:`ButcherTableau` that the integrator (:func:`odezoo.ode.integrator.integrate`)
reads. FSAL or not; dense output in Shampine's form (``dense``), as polynomial weights
(``dense_poly``), or, with neither, the cubic Hermite interpolant.
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
            None when the pair has none.
        order: order of ``b``; embedded_order: order of ``b_hat``.
        fsal: first same as last: the last row of A equals b and c[-1] = 1, so the
            last stage is f at the new point, reused as the next step's first. Without
            it the integrator evaluates f at the new point after each step (that is the
            next step's first stage: s evaluations per step either way).
        dense_poly: continuous weights b_i(θ) = Σ_k dense_poly[i][k]·θ^(k+1) (s rows), or None.
            With neither ``dense`` nor ``dense_poly``: the cubic Hermite interpolant.
        hit_times: reach solution times by shortening the step to end on them (no
            interpolation; ``dense_kind`` "step").
        error_low: weights b - b_hat_low of a second embedded estimate, or None.
        combine: ``combine(err, err_low)``, the error ratio from the two scaled RMS norms
            (with ``error_low``).
        estimate_order: k in error ratio ∝ h^k (None: embedded_order + 1).
        implicit: an ESDIRK pair (:class:`odezoo.DiagonallyImplicitRungeKutta`): row i of
            ``a`` then has i + 1 entries, the last the diagonal ``gamma``; the stages are
            solved by Newton (:mod:`odezoo.ode.newton`) with the settings ``newton``
            (pairs of name and value: linear_solver, kappa, max_iterations, krylov).
        predictor: (implicit) rows of weights α_ij for Newton's starting values, or None.
    """

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    error: tuple[float, ...]
    dense: tuple[float, ...] | None
    order: int
    embedded_order: int
    fsal: bool = True
    dense_poly: tuple[tuple[float, ...], ...] | None = None
    hit_times: bool = False
    error_low: tuple[float, ...] | None = None
    combine: object = None
    estimate_order: int | None = None
    implicit: bool = False
    gamma: float = 0.0
    predictor: tuple[tuple[float, ...], ...] | None = None
    newton: tuple = ()

    @property
    def dense_kind(self) -> str:
        """ "shampine", "polynomial", "hermite" or "step": how solution times inside a step are reached."""
        if self.hit_times:
            return "step"
        if self.dense is not None:
            return "shampine"
        return "polynomial" if self.dense_poly is not None else "hermite"

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def b_hat(self) -> tuple[float, ...]:
        """Weights of the embedded solution, b - e."""
        return tuple(b - e for b, e in zip(self.b, self.error))

    @property
    def error_exponent(self) -> float:
        """1/k for the error model err ∝ h^k, k = ``estimate_order`` or embedded_order + 1 (controllers use it)."""
        return 1.0 / (self.estimate_order or self.embedded_order + 1)

    @property
    def evaluations_per_step(self) -> int:
        """Field calls per attempted step (one fewer with FSAL); an implicit pair's vary with Newton."""
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


def tableau_of(scheme) -> ButcherTableau:
    """The integrator's data for a registered embedded pair (an :class:`odezoo.ExplicitRungeKutta`
    class or instance with ``b_hat``); a ValueError for a scheme without one."""
    if not getattr(scheme, "is_embedded", lambda: False)():
        raise ValueError(f"{scheme!r} has no embedded weights `b_hat`: it is a fixed-grid scheme only.")
    k = scheme.coefficients()
    implicit = bool(k.get("implicit", False))
    extra = {}
    if implicit:
        predictor = k["predictor"]
        extra = dict(implicit=True, gamma=float(k["gamma"]), newton=tuple(sorted(k["newton"].items())),
                     predictor=None if predictor is None else tuple(tuple(r) for r in predictor))  # fmt: skip
    return ButcherTableau(
        name=k["name"],
        c=tuple(k["c"]),
        a=tuple(tuple(row[: i + implicit]) for i, row in enumerate(k["A"])),
        b=tuple(k["b"]),
        error=tuple(k["error"]),
        dense=None if k["dense_shampine"] is None else tuple(k["dense_shampine"]),
        dense_poly=None if k["dense"] is None else tuple(tuple(r) for r in k["dense"]),
        order=int(k["order"]),
        embedded_order=int(k["error_order"]),
        fsal=bool(k["fsal"]),
        hit_times=bool(k["step_to_times"]),
        error_low=None if k["error_low"] is None else tuple(k["error_low"]),
        combine=None if k["error_low"] is None else scheme.combine_errors,  # a staticmethod: class or instance
        # None where it is the default, embedded_order + 1 (so dopri5's tableau equals DOPRI5)
        estimate_order=None if k["estimate_order"] == k["error_order"] + 1 else int(k["estimate_order"]),
        **extra,
    )
