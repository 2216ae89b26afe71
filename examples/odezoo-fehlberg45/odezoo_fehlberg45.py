"""odezoo plugin: Fehlberg's pair 4(5) (NASA TR R-315, 1969), propagating the 5th-order solution."""

from fractions import Fraction as F

import odezoo

ODEZOO_PLUGIN_API = 1


@odezoo.register_scheme("fehlberg45")
class Fehlberg45(odezoo.ExplicitRungeKutta):
    """Six stages, not FSAL; solution times inside a step by the cubic Hermite interpolant."""

    order, error_order = 5, 4
    A = [
        [],
        [F(1, 4)],
        [F(3, 32), F(9, 32)],
        [F(1932, 2197), F(-7200, 2197), F(7296, 2197)],
        [F(439, 216), -8, F(3680, 513), F(-845, 4104)],
        [F(-8, 27), 2, F(-3544, 2565), F(1859, 4104), F(-11, 40)],
    ]
    b = [F(16, 135), 0, F(6656, 12825), F(28561, 56430), F(-9, 50), F(2, 55)]
    b_hat = [F(25, 216), 0, F(1408, 2565), F(2197, 4104), F(-1, 5), 0]
