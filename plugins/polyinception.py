"""PolyInception (Zhang et al., "PolyNet", CVPR 2017) read as an approximate backward-Euler step."""

import odezoo
from odezoo import checks

ODEZOO_PLUGIN_API = 1

VARIANTS = ("poly2", "mpoly2", "way2")


@odezoo.register_scheme("polyinception")
class PolyInception(odezoo.Scheme):
    """y + h·F(y) + h²·G(F(y)): a truncated series for backward Euler. Order 1.

    Derivation. Backward Euler solves y_{n+1} = y_n + h·f(y_{n+1}); for a
    linear field f(y) = Ay this is y_{n+1} = (I − hA)⁻¹ y_n
    = (I + hA + h²A² + ...) y_n. Keeping two terms of the Neumann series gives
    the solver form

        y_{n+1} = y_n + h·F(t_{n+1}, y_n) + h²·G(t_{n+1}, F(t_{n+1}, y_n))

    with F = G = f when solving; its local error is O(h²) for any smooth f, so
    it is first order (consistent), like backward Euler itself.

    Network forms (h = 1, ``variant`` chooses; Zhang et al. 2017):
        poly2:  y + F(y) + F(F(y))  — one F, the series above (num_fields 1);
        mpoly2: y + F(y) + G(F(y))  — a second, separately weighted G (2 fields);
        way2:   y + F(y) + G(y)     — two parallel paths (2 fields), as a
                 solver an Euler step of F + G, which the network form does not
                 scale (it is not consistent for F = G = f).

    ``degree`` lengthens poly2's series: y + Σ_{j=1..degree} h^j·F^j(y), F^j the j-fold
    application (PolyNet's poly-3 is degree 3; degree 1 is an Euler step at t + h). For a
    linear field the series cut after F^k is the k-th fixed-point iterate of backward
    Euler from y (scheme ``backward_euler``), which it approaches as the degree grows.

    Args:
        variant: "poly2" (default), "mpoly2" or "way2".
        degree: the series' last power for "poly2" (default 2); the other variants are
            degree 2 only.
    """

    order = 1
    num_fields = 1

    def __init__(self, variant="poly2", degree=2):
        if variant not in VARIANTS:
            raise checks.bad_value("variant", variant, ", ".join(VARIANTS))
        self.variant = variant
        self.num_fields = 1 if variant == "poly2" else 2
        self.degree = checks.positive_int("degree", degree)
        if variant != "poly2" and self.degree != 2:
            raise checks.bad_value("degree", degree, f"2 for variant={variant!r} (any positive int for 'poly2')")

    def _series(self, F, t, y, h):
        term, out = y, y
        for j in range(1, self.degree + 1):
            term = F(t, term)
            out = out + h**j * term
        return out

    def step(self, fields, t, y, h):
        F, G = fields[0], fields[-1]
        t1 = t + h
        if self.variant == "poly2":
            return self._series(F, t1, y, h)
        fy = F(t1, y)
        return y + h * fy + (h * h) * G(t1, fy)

    def block_step(self, fields, t, y, h, *, training=None, ctx=None):
        F, G = fields[0], fields[-1]
        if self.variant == "poly2":
            return self._series(F, t, y, h)
        fy = F(t, y)
        if self.variant == "way2":
            return y + h * fy + h * G(t, y)
        return y + h * fy + (h * h) * G(t, fy)
