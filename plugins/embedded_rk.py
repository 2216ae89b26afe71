"""Embedded Runge-Kutta pairs: adaptive solvers that are also fixed-grid schemes and network blocks.

Each is an :class:`odezoo.ExplicitRungeKutta` whose tableau carries embedded weights
``b_hat`` (and its order ``error_order``), so the same class serves three ways:
``odezoo.build("resnet", scheme="bosh3")`` (a network block), ``ODEBlock(field,
solver="bosh3", num_steps=8)`` (a fixed grid) and ``ODEBlock(field, solver="bosh3",
rtol=..., atol=...)`` / ``odeint(..., solver="bosh3")`` (odezoo's adaptive integrator,
with the adjoint, guards and NFE counters of dopri5).

Coefficients are the published ones (sources at each class); where a value is irrational
it is given to double precision.
"""

from fractions import Fraction as F

import numpy as np

import odezoo

ODEZOO_PLUGIN_API = 1


@odezoo.register_scheme("dopri5")
class DormandPrince5(odezoo.ExplicitRungeKutta):
    """Dormand & Prince (1980) 5(4), FSAL, with Shampine's dense output (``dopri5.f``).

    The tableau of :data:`odezoo.ode.tableau.DOPRI5`, re-expressed as a scheme (the two
    are checked equal to the last bit by the tests). As a network block it is a
    6-field block: the 7th stage (b = 0) only serves the error estimate.
    """

    order, error_order = 5, 4
    A = [
        [],
        [F(1, 5)],
        [F(3, 40), F(9, 40)],
        [F(44, 45), F(-56, 15), F(32, 9)],
        [F(19372, 6561), F(-25360, 2187), F(64448, 6561), F(-212, 729)],
        [F(9017, 3168), F(-355, 33), F(46732, 5247), F(49, 176), F(-5103, 18656)],
        [F(35, 384), 0, F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84)],
    ]
    b = [F(35, 384), 0, F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84), 0]
    b_hat = [F(5179, 57600), 0, F(7571, 16695), F(393, 640), F(-92097, 339200), F(187, 2100), F(1, 40)]
    c = [0, F(1, 5), F(3, 10), F(4, 5), F(8, 9), 1, 1]
    dense_shampine = [
        F(-12715105075, 11282082432),
        0,
        F(87487479700, 32700410799),
        F(-10690763975, 1880347072),
        F(701980252875, 199316789632),
        F(-1453857185, 822651844),
        F(69997945, 29380423),
    ]


@odezoo.register_scheme("bosh3")
class BogackiShampine3(odezoo.ExplicitRungeKutta):
    """Bogacki & Shampine (1989) 3(2), FSAL; solution times by the cubic Hermite interpolant (order 3)."""

    order, error_order = 3, 2
    A = [[], [F(1, 2)], [0, F(3, 4)], [F(2, 9), F(1, 3), F(4, 9)]]
    b = [F(2, 9), F(1, 3), F(4, 9), 0]
    b_hat = [F(7, 24), F(1, 4), F(1, 3), F(1, 8)]


@odezoo.register_scheme("heun_euler")
class HeunEuler(odezoo.ExplicitRungeKutta):
    """Heun's method with Euler's as the embedded estimate, 2(1); not FSAL; Hermite solution times."""

    order, error_order = 2, 1
    A = [[], [1]]
    b = [F(1, 2), F(1, 2)]
    b_hat = [1, 0]


def _tsit5_dense():
    """Tsitouras (2011)'s continuous weights b_i(θ), expanded into powers θ^1..θ^4."""
    P = np.polynomial.Polynomial
    theta = P([0.0, 1.0])
    factored = [
        -1.0530884977290216 * theta * (theta - 1.3299890189751412) * P([0.7139816917074209, -1.4364028541716351, 1.0]),
        0.1017 * theta**2 * P([1.2949852507374631, -2.1966568338249754, 1.0]),
        2.490627285651252793 * theta**2 * P([1.57803468208092486, -2.38535645472061657, 1.0]),
        -16.54810288924490272 * (theta - 1.21712927295533244) * (theta - 0.61620406037800089) * theta**2,
        47.37952196281928122 * (theta - 1.203071208372362603) * (theta - 0.658047292653547382) * theta**2,
        -34.87065786149660974 * (theta - 1.2) * (theta - 2.0 / 3.0) * theta**2,
        2.5 * (theta - 1.0) * (theta - 0.6) * theta**2,
    ]
    return [list(np.pad(p.coef, (0, 5 - len(p.coef)))[1:]) for p in factored]


@odezoo.register_scheme("tsit5")
class Tsitouras5(odezoo.ExplicitRungeKutta):
    """Tsitouras (2011) 5(4), FSAL, with its order-4 continuous extension for solution times.

    Ch. Tsitouras, "Runge-Kutta pairs of order 5(4) satisfying only the first column
    simplifying assumption", Computers & Mathematics with Applications 62 (2011) 770-775.
    """

    order, error_order = 5, 4
    c = [0, 0.161, 0.327, 0.9, 0.9800255409045097, 1, 1]
    A = [
        [],
        [0.161],
        [-0.008480655492356989, 0.335480655492357],
        [2.897153057105493, -6.359448489975075, 4.3622954328695815],
        [5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525],
        [5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401, -0.028269050394068383],
        [0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081, 2.324710524099774],
    ]
    b = [0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081, 2.324710524099774, 0]
    b_hat = [
        0.09468075576583945,
        0.009183565540343254,
        0.4877705284247616,
        1.234297566930479,
        -2.7077123499835256,
        1.866628418170587,
        1 / 66,
    ]
    dense = _tsit5_dense()
