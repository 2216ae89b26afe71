"""Kvaerno's ESDIRK pairs: implicit adaptive solvers for stiff problems.

Each is an :class:`odezoo.DiagonallyImplicitRungeKutta`: an explicit first stage, one
diagonal entry γ for the others (each stage a Newton solve, :mod:`odezoo.ode.newton`),
stiffly accurate (the last stage is the new point), A- and L-stable, with an embedded
pair for step control. Coefficients from Kvaerno, "Singly diagonally implicit Runge-Kutta
methods with an explicit first stage", BIT 44 (2004), 489-502, as diffrax writes them;
the stage predictors (guesses of each stage's derivative for Newton's first iterate) as
OrdinaryDiffEq.jl and diffrax give them.
"""

import odezoo

ODEZOO_PLUGIN_API = 1

# γ: the root in (1/6, 1/2) of 6γ³ − 18γ² + 9γ − 1 = 0 (L-stability of the 3rd-order method)
_G3 = 0.43586652150845899942
_K3 = dict(
    a31=(-4 * _G3**2 + 6 * _G3 - 1) / (4 * _G3),
    a32=(-2 * _G3 + 1) / (4 * _G3),
    a41=(6 * _G3 - 1) / (12 * _G3),
    a42=-1 / ((24 * _G3 - 12) * _G3),
    a43=(-6 * _G3**2 + 6 * _G3 - 1) / (6 * _G3 - 3),
)


@odezoo.register_scheme("kvaerno3")
class Kvaerno3(odezoo.DiagonallyImplicitRungeKutta):
    """Kvaerno 3(2), 4 stages: the embedded 2nd-order solution is the third stage (c = 1)."""

    order, error_order = 3, 2
    A = [
        [0.0],
        [_G3, _G3],
        [_K3["a31"], _K3["a32"], _G3],
        [_K3["a41"], _K3["a42"], _K3["a43"], _G3],
    ]
    b = [_K3["a41"], _K3["a42"], _K3["a43"], _G3]
    b_hat = [_K3["a31"], _K3["a32"], _G3, 0.0]
    c = [0.0, 2 * _G3, 1.0, 1.0]
    predictor = [[1.0], [1.0 - 1 / (2 * _G3), 1 / (2 * _G3)], [_K3["a31"], _K3["a32"], _G3]]


_G5 = 0.26
_A5 = [
    [0.0],
    [_G5, _G5],
    [0.13, 0.84033320996790809, _G5],
    [0.22371961478320505, 0.47675532319799699, -0.06470895363112615, _G5],
    [0.16648564323248321, 0.10450018841591720, 0.03631482272098715, -0.13090704451073998, _G5],
    [0.13855640231268224, 0.0, -0.04245337201752043, 0.02446657898003141, 0.61943039072480676, _G5],
    [0.13659751177640291, 0.0, -0.05496908796538376, -0.04118626728321046, 0.62993304899016403,
     0.06962479448202728, _G5],
]  # fmt: skip


@odezoo.register_scheme("kvaerno5")
class Kvaerno5(odezoo.DiagonallyImplicitRungeKutta):
    """Kvaerno 5(4), 7 stages: the embedded 4th-order solution is the sixth stage (c = 1)."""

    order, error_order = 5, 4
    A = _A5
    b = _A5[6]
    b_hat = _A5[5] + [0.0]
    c = [0.0, 0.52, 1.230333209967908, 0.8957659843500759, 0.43639360985864756, 1.0, 1.0]
    predictor = [
        [1.0],
        [-1.366025403784441, 2.3660254037844357],
        [-0.19650552613122207, 0.8113579546496623, 0.38514757148155954],
        [0.10375304369958693, 0.937994698066431, -0.04174774176601781, 0.0],
        [-0.17281112873898072, 0.6235784481025847, 0.5492326806363959, 0.0, 0.0],
        _A5[5][:5] + [_G5],
    ]
