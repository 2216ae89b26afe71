"""Classical explicit Runge-Kutta methods declared by their Butcher tableaux.

Each is a plain fixed-grid scheme: as a network block every stage owns its own
field; as an ODE solver (``ODEBlock(solver="rk4")``) every stage calls the same f.
"""

import odezoo

ODEZOO_PLUGIN_API = 1


@odezoo.register_scheme("heun")
class Heun(odezoo.ExplicitRungeKutta):
    """Heun's method (explicit trapezoidal rule), order 2."""

    order = 2
    A = [[], [1.0]]
    b = [0.5, 0.5]


@odezoo.register_scheme("midpoint")
class Midpoint(odezoo.ExplicitRungeKutta):
    """The explicit midpoint method, order 2."""

    order = 2
    A = [[], [0.5]]
    b = [0.0, 1.0]


@odezoo.register_scheme("rk4")
class RK4(odezoo.ExplicitRungeKutta):
    """The classical fourth-order Runge-Kutta method."""

    order = 4
    A = [[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]]
    b = [1 / 6, 1 / 3, 1 / 3, 1 / 6]
