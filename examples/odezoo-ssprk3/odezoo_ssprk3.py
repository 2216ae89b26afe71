"""odezoo plugin: the Shu-Osher SSPRK3 scheme (Shu & Osher, J. Comput. Phys. 77, 1988)."""

import odezoo

ODEZOO_PLUGIN_API = 1


@odezoo.register_scheme("ssprk3")
class SSPRK3(odezoo.ExplicitRungeKutta):
    """Strong-stability-preserving Runge-Kutta, order 3, three stages at t, t + h, t + h/2."""

    order = 3
    A = [[], [1.0], [0.25, 0.25]]
    b = [1 / 6, 1 / 6, 2 / 3]
