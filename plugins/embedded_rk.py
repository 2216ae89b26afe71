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


@odezoo.register_scheme("dopri8")
class DormandPrince8(odezoo.ExplicitRungeKutta):
    """Dormand & Prince's 8(5,3) as Hairer's ``dop853.f`` runs it: 12 stages, not FSAL.

    The propagated solution has order 8; the error ratio combines a 5th-order and a
    3rd-order embedded estimate as ``dop853.f`` does, err5² / sqrt(err5² + 0.01·err3²)
    (Hairer, Nørsett & Wanner, *Solving ODEs I*, II.10), which scales as h^8. Its
    continuous extension needs three more field evaluations per step, so solution
    times are reached by ending steps on them (``step_to_times``) instead. As a network
    block it is a 12-field block; on a fixed grid a step costs 12 evaluations, and 12
    per attempted step adaptively (11 stages and f at the new point).

    Coefficients as ``dop853.f`` publishes them (its c, a, b, and the error weights
    ``er`` = b - b_hat and ``bhh`` = b_hat_low), to double precision.
    """

    order, error_order, estimate_order = 8, 5, 8
    step_to_times = True
    c = [
        0.0,
        0.05260015195876773,
        0.0789002279381516,
        0.1183503419072274,
        0.2816496580927726,
        0.3333333333333333,
        0.25,
        0.3076923076923077,
        0.6512820512820513,
        0.6,
        0.8571428571428571,
        1.0,
    ]
    A = [
        [],
        [0.05260015195876773],
        [0.0197250569845379, 0.0591751709536137],
        [0.02958758547680685, 0.0, 0.08876275643042054],
        [0.2413651341592667, 0.0, -0.8845494793282861, 0.924834003261792],
        [0.037037037037037035, 0.0, 0.0, 0.17082860872947386, 0.12546768756682242],
        [0.037109375, 0.0, 0.0, 0.17025221101954405, 0.06021653898045596, -0.017578125],
        [
            0.03709200011850479,
            0.0,
            0.0,
            0.17038392571223998,
            0.10726203044637328,
            -0.015319437748624402,
            0.008273789163814023,
        ],
        [
            0.6241109587160757,
            0.0,
            0.0,
            -3.3608926294469414,
            -0.868219346841726,
            27.59209969944671,
            20.154067550477894,
            -43.48988418106996,
        ],
        [
            0.47766253643826434,
            0.0,
            0.0,
            -2.4881146199716677,
            -0.590290826836843,
            21.230051448181193,
            15.279233632882423,
            -33.28821096898486,
            -0.020331201708508627,
        ],
        [
            -0.9371424300859873,
            0.0,
            0.0,
            5.186372428844064,
            1.0914373489967295,
            -8.149787010746927,
            -18.52006565999696,
            22.739487099350505,
            2.4936055526796523,
            -3.0467644718982196,
        ],
        [
            2.273310147516538,
            0.0,
            0.0,
            -10.53449546673725,
            -2.0008720582248625,
            -17.9589318631188,
            27.94888452941996,
            -2.8589982771350235,
            -8.87285693353063,
            12.360567175794303,
            0.6433927460157636,
        ],
    ]
    b = [
        0.054293734116568765,
        0.0,
        0.0,
        0.0,
        0.0,
        4.450312892752409,
        1.8915178993145003,
        -5.801203960010585,
        0.3111643669578199,
        -0.1521609496625161,
        0.20136540080403034,
        0.04471061572777259,
    ]
    b_hat = [
        0.04117368912237389,
        0.0,
        0.0,
        0.0,
        0.0,
        5.675469339128614,
        2.3872768489717506,
        -7.465581142465571,
        0.6614932157077935,
        -0.48634006837553356,
        0.11944219431891463,
        0.06706592359165889,
    ]
    b_hat_low = [F(31, 127), 0, 0, 0, 0, 0, 0, 0, F(12675, 17272), 0, 0, F(3, 136)]

    @staticmethod
    def combine_errors(err, err_low):
        """dop853's combined ratio from the scaled RMS norms of the 5th- and 3rd-order estimates."""
        return err * err / (err * err + 0.01 * err_low * err_low) ** 0.5
