"""Built-in schemes: declared order, solver-form derivations, network forms, bad options."""

import numpy as np
import pytest

import odezoo
from odezoo.testing import check_scheme, linear_test_problem

BUILTIN = ["euler", "heun", "midpoint", "rk4", "polyinception", "fractal_rk", "reversible", "linear_multistep"]


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_scheme_passes_conformance_kit(name):
    result = check_scheme(name)
    assert abs(result["slope"] - odezoo.get_scheme(name).order) <= 0.3
    assert result["network"] == "ok"


@pytest.mark.parametrize("variant", ["poly2", "mpoly2", "way2"])
def test_polyinception_variants_conform(variant):
    scheme = odezoo.get_scheme("polyinception")(variant=variant)
    assert scheme.num_fields == (1 if variant == "poly2" else 2)
    assert check_scheme(scheme)["network"] == "ok"


def test_polyinception_is_truncated_neumann_series_of_backward_euler():
    A = np.array([[-1.0, 0.3], [0.2, -0.5]])
    f = lambda t, y: A @ y  # noqa: E731
    y, h = np.array([1.0, 2.0]), 0.1
    got = odezoo.get_scheme("polyinception")().step([f], 0.0, y, h)
    want = (np.eye(2) + h * A + h * h * A @ A) @ y
    np.testing.assert_allclose(got, want, rtol=1e-14)
    # and it approaches the backward-Euler step (I - hA)^-1 y to O(h^3)
    be = np.linalg.solve(np.eye(2) - h * A, y)
    assert np.max(np.abs(got - be)) < 5 * h**3 * np.max(np.abs(y))


def test_linear_multistep_is_consistent_and_zero_stable():
    for k in (-0.9, -0.05, 0.0, 0.5, 0.9):
        # rho(z) = z^2 - (1-k) z - k; roots 1 and -k
        roots = np.roots([1.0, -(1.0 - k), -k])
        assert np.isclose(np.max(np.abs(roots)), 1.0) and np.isclose(np.min(np.abs(roots)), abs(k))
        result = check_scheme(odezoo.get_scheme("linear_multistep")(k=k), network=False)
        assert abs(result["slope"] - 1.0) <= 0.3


def test_linear_multistep_rejects_unstable_k():
    with pytest.raises(ValueError, match=r"k=1\.5.*\|k\| < 1"):
        odezoo.get_scheme("linear_multistep")(k=1.5)
    with pytest.raises(ValueError, match="p_L"):
        odezoo.get_scheme("linear_multistep")(p_L=0.0)


def test_polyinception_rejects_unknown_variant():
    with pytest.raises(ValueError, match="variant='poly3'.*poly2, mpoly2, way2"):
        odezoo.get_scheme("polyinception")(variant="poly3")


def test_fractal_solver_form_is_mean_of_identity_and_two_euler_units():
    lin = linear_test_problem()
    f, y, h, t = lin["f"], lin["y0"], 0.05, 0.3
    heun = odezoo.get_scheme("fractal_rk")().step([f, f], t, y, h)
    unit = lambda z, s: z + h * f(s, z)  # noqa: E731
    np.testing.assert_allclose(heun, 0.5 * (y + unit(unit(y, t), t + h)), rtol=1e-14)


def test_rk_tableau_matches_classical_rk4_by_hand():
    lin = linear_test_problem()
    f, y, h, t = lin["f"], lin["y0"], 0.1, 0.2
    k1 = f(t, y)
    k2 = f(t + h / 2, y + h / 2 * k1)
    k3 = f(t + h / 2, y + h / 2 * k2)
    k4 = f(t + h, y + h * k3)
    want = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    np.testing.assert_allclose(odezoo.get_scheme("rk4")().step([f] * 4, t, y, h), want, rtol=1e-14)


def test_scheme_block_rejects_unknown_option_naming_valid_ones():
    from odezoo.layers import ConvFieldFactory

    with pytest.raises(TypeError, match=r"'varaint'.*did you mean 'variant'.*Valid keys: degree, variant"):
        odezoo.SchemeBlock("polyinception", ConvFieldFactory(), varaint="way2")
    with pytest.raises(odezoo.UnknownNameError, match="'rk5'"):
        odezoo.SchemeBlock("rk5", ConvFieldFactory())
