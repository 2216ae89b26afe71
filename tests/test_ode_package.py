"""odezoo.ode's data and objects: the tableau satisfies the conditions it claims; controllers are overridable."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses  # noqa: E402
import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from odezoo import ode  # noqa: E402
from odezoo.ode.tableau import DOPRI5  # noqa: E402

F64 = tf.float64


def test_tableau_satisfies_its_order_conditions():
    t = DOPRI5
    assert t.stages == len(t.c) == len(t.a) == len(t.b) == len(t.error) == len(t.dense)
    for i, (ci, row) in enumerate(zip(t.c, t.a)):
        assert len(row) == i
        assert math.fsum(row) == pytest.approx(ci, abs=1e-14)  # row sums: c_i = Σ_j a_ij
    assert math.fsum(t.b) == pytest.approx(1.0, abs=1e-14)
    assert math.fsum(t.b_hat) == pytest.approx(1.0, abs=1e-14)
    # a few more of the conditions for order 5 (b) and 4 (b_hat): Σ b c^k = 1/(k+1)
    c = np.array(t.c)
    for k in range(t.order):
        assert float(np.dot(t.b, c**k)) == pytest.approx(1.0 / (k + 1), abs=1e-13)
    for k in range(t.embedded_order):
        assert float(np.dot(t.b_hat, c**k)) == pytest.approx(1.0 / (k + 1), abs=1e-13)
    assert float(np.dot(t.b_hat, c**t.embedded_order)) != pytest.approx(1.0 / (t.embedded_order + 1), abs=1e-6)
    assert t.fsal and t.a[-1] == t.b[:-1] and t.c[-1] == 1.0
    assert t.error_exponent == 0.2 and t.evaluations_per_step == 6
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.order = 4


def test_controllers_are_objects_with_one_method_a_subclass_overrides():
    assert set(ode.CONTROLLERS) == {"predictive", "pi", "pid"}
    assert isinstance(ode.make_controller("pi", beta=0.08), ode.PIController)
    assert ode.make_controller("pi", beta=0.08).beta == 0.08
    calls = []

    @dataclasses.dataclass(frozen=True)
    class Elementary(ode.Controller):
        """The elementary controller h·safety·err^(-1/k), recording its calls."""

        def factors(self, ratio, memory, exponent):
            calls.append(exponent)
            fac = tf.pow(ratio, exponent) / self.safety
            return fac, fac

    f = lambda t, y: [-y[0] * (1.0 + t)]  # noqa: E731

    def run(controller):  # eager: the while_loop runs in Python, one factors() call per step
        out, info = ode.integrate(
            f, 0.0, [tf.constant([1.0], F64)], tf.constant([2.0], F64), rtol=1e-8, atol=1e-10, controller=controller
        )
        return out[0][-1], info["steps"]

    exact = math.exp(-(2.0 + 2.0))
    y_own, steps_own = run(Elementary())
    assert len(calls) == int(steps_own) and set(calls) == {0.2}
    y_pred, steps_pred = run("predictive")
    np.testing.assert_allclose([float(y_own[0]), float(y_pred[0])], exact, rtol=1e-6)
    with pytest.raises(ValueError, match="Allowed: 'predictive', 'pi', 'pid'"):
        ode.make_controller("pd")
    assert isinstance(ode.make_controller("pid"), ode.PIDController)


# --------------------------------------------------------------------------- settings
class _Owner(ode.Settings):
    """A settings owner with a per-value check and a joint one (b < 10 * a)."""

    a = ode.Setting(lambda name, v: float(v) if v > 0 else (_ for _ in ()).throw(ValueError(f"{name}={v!r}")))
    b = ode.Setting()

    def __init__(self):
        self.changed = []
        self.a, self.b = 1.0, 2.0
        self.settings_ready()

    def _validate_settings(self):
        if self.b >= 10 * self.a:
            raise LookupError(f"b={self.b!r} needs a > {self.b / 10!r}")

    def _settings_changed(self, name):
        self.changed.append(name)


def test_a_setting_runs_its_check_then_the_joint_one_and_a_refused_value_leaves_the_owner_as_it_was():
    owner = _Owner()
    assert owner.changed == []  # the constructor's own assignments are not changes
    owner.a = 3
    assert owner.a == 3.0 and isinstance(owner.a, float) and owner.changed == ["a"]
    with pytest.raises(ValueError, match="a=-1"):
        owner.a = -1
    with pytest.raises(LookupError, match="b=50"):  # any error of the joint check refuses, not only ValueError
        owner.b = 50
    assert (owner.a, owner.b, owner.changed) == (3.0, 2.0, ["a"])
    assert isinstance(_Owner.a, ode.Setting)


def test_flow_and_block_share_the_settings_and_status_mechanisms():
    from odezoo.plugins.ffjord.flow import FFJORDFlow

    for cls in (ode.ODEBlock, FFJORDFlow):
        assert issubclass(cls, ode.Settings) and issubclass(cls, ode.SolverStatus)
        assert isinstance(cls.__dict__["rtol"], ode.Setting) and isinstance(cls.__dict__["solver"], ode.Setting)


# --------------------------------------------------------------------------- moved names
@pytest.mark.parametrize(
    "old, new",
    [
        ("odezoo.layers:ODEConvField", "odezoo.plugins.ode.model:ODEConvField"),
        ("odezoo.layers:ODEClassifier", "odezoo.plugins.ode.model:ODEClassifier"),
        ("odezoo.layers:FFJORDFlow", "odezoo.plugins.ffjord.flow:FFJORDFlow"),
        ("odezoo.layers:TimeMLPField", "odezoo.plugins.ffjord.flow:TimeMLPField"),
    ],
)
def test_a_name_moved_into_a_plugin_still_resolves_with_a_deprecation_warning(old, new):
    import importlib

    old_module, _, name = old.partition(":")
    new_module = new.partition(":")[0]
    with pytest.warns(DeprecationWarning, match=rf"{old_module}\.{name} moved to {new_module}\.{name}"):
        value = getattr(importlib.import_module(old_module), name)
    assert value is getattr(importlib.import_module(new_module), name)
