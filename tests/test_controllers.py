"""Issue 15: step-size controllers as objects (predictive, PI, Söderlind's PID family), on every entry point.

The PID family is checked against closed forms of its factor (the elementary controller, the PI
controller it reproduces), and every controller's solves against the closed-form solution.
"""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

import odezoo
from odezoo.ode.controllers import CONTROLLERS, Controller, PIController, PIDController, StepMemory
from odezoo.testing import linear_test_problem


def _memory(err_prev=0.3, err_prev2=0.7, accepted=5, streak=3):
    c = lambda v: tf.constant(v, tf.float64)  # noqa: E731
    return StepMemory(h=c(0.1), h_prev=c(0.08), err_prev=c(err_prev), streak=tf.constant(streak),
                      err_prev2=c(err_prev2), accepted=tf.constant(accepted))  # fmt: skip


def test_pid_factors_follow_their_closed_forms():
    ratio, k = tf.constant(0.5, tf.float64), 0.2
    # (0, 1, 0): the elementary controller h·safety·err^(-1/k)
    fac, fac_rej = PIDController().factors(ratio, _memory(), k)
    assert float(fac) == pytest.approx(0.5**0.2 / 0.9, rel=1e-14)
    assert float(fac_rej) == pytest.approx(0.5**0.2 / 0.9, rel=1e-14)
    # a full PID: err_n^(b1/k) err_{n-1}^(b2/k) err_{n-2}^(b3/k) / safety
    p, i, d = 0.3, 0.5, 0.1
    fac, _ = PIDController(pcoeff=p, icoeff=i, dcoeff=d).factors(ratio, _memory(), k)
    expected = 0.5 ** ((p + i + d) * k) * 0.3 ** (-(p + 2 * d) * k) * 0.7 ** (d * k) / 0.9
    assert float(fac) == pytest.approx(expected, rel=1e-14)
    # before two accepted steps the unknown history counts as 1
    fac, _ = PIDController(pcoeff=p, icoeff=i, dcoeff=d).factors(ratio, _memory(accepted=1), k)
    assert float(fac) == pytest.approx(0.5 ** ((p + i + d) * k) * 0.3 ** (-(p + 2 * d) * k) / 0.9, rel=1e-14)


def test_pid_with_hairers_coefficients_is_the_pi_controller():
    beta, k = 0.04, 0.2
    pid = PIDController(pcoeff=beta / k, icoeff=1 - 1.75 * beta / k)
    for ratio in (0.01, 0.5, 0.99):
        a, _ = pid.factors(tf.constant(ratio, tf.float64), _memory(), k)
        b, _ = PIController(beta=beta).factors(tf.constant(ratio, tf.float64), _memory(), k)
        assert float(a) == pytest.approx(float(b), rel=1e-13)


@dataclasses.dataclass(frozen=True)
class Cautious(Controller):
    """A third party's controller: the elementary one, never growing more than 1.5x."""

    def factors(self, ratio, memory, exponent):
        fac = tf.maximum(tf.pow(ratio, exponent) / self.safety, 1 / 1.5)
        return fac, fac


@pytest.mark.parametrize("controller", [*CONTROLLERS, PIDController(pcoeff=0.4, icoeff=0.3), Cautious()],
                         ids=[*CONTROLLERS, "pid_0.4_0.3", "third_party"])  # fmt: skip
@pytest.mark.parametrize("solver", ["tsit5", "bosh3"])  # dopri5 with predictive and pi: test_solvers.py
def test_every_controller_solves_to_the_tolerance(controller, solver):
    problem = linear_test_problem()
    A, b = problem["A"], problem["b"]
    times = np.linspace(0.0, 4.0, 9)
    exact = np.stack([problem["exact"](t) for t in times])
    errors = []
    for tol in (1e-5, 1e-8):
        out = odezoo.odeint(
            lambda t, y: tf.linalg.matvec(tf.constant(A), y) + tf.constant(b) * tf.cos(t),
            tf.constant(problem["y0"]), tf.constant(times), solver=solver, rtol=tol, atol=tol,
            controller=controller, max_steps=100000,
        )  # fmt: skip
        errors.append(np.max(np.abs(out.numpy() - exact)))
        assert errors[-1] < 100 * tol
    assert errors[1] < errors[0] / 100


@keras.saving.register_keras_serializable(package="test_controllers")
class Field(keras.layers.Layer):
    def build(self, t_shape, y_shape):
        self.w = self.add_weight(shape=(y_shape[-1], y_shape[-1]), initializer="orthogonal")

    def call(self, t, y):
        return tf.tanh(y @ self.w)


def test_odeblock_takes_a_controller_by_name_saves_it_and_refuses_what_cannot_use_it():
    x = tf.constant(np.random.default_rng(0).normal(size=(4, 3)).astype("float32"))
    nfe, out = {}, {}
    for name in ("predictive", "pid"):
        keras.utils.set_random_seed(0)
        block = odezoo.ODEBlock(Field(), solver="tsit5", rtol=1e-8, atol=1e-8, t1=6.0, controller=name)
        out[name] = block(x).numpy()
        nfe[name] = int(block.nfe_forward)
    assert nfe["predictive"] != nfe["pid"]  # the controller really steers the solve
    np.testing.assert_allclose(out["pid"], out["predictive"], atol=1e-4)
    assert odezoo.ODEBlock.from_config(block.get_config()).controller == "pid"
    with pytest.raises(ValueError, match=r"controller='fast'.*'predictive', 'pi', 'pid'"):
        odezoo.ODEBlock(Field(), controller="fast")
    with pytest.raises(ValueError, match="steers odezoo's adaptive integrator"):
        odezoo.ODEBlock(Field(), solver="rk4", num_steps=4, controller="pi")
    with pytest.raises(ValueError, match="steers odezoo's adaptive integrator"):
        odezoo.ODEBlock(Field(), solver="tfp_dopri5", controller="pid")


def test_the_flow_takes_a_controller_saves_it_and_refuses_it_with_tfp():
    from odezoo import data

    x = data.toy_density("8gaussians", 32, seed=2)
    logp = {}
    for name in ("predictive", "pi"):
        keras.utils.set_random_seed(0)
        flow = odezoo.build("ffjord", data_dim=2, hidden=[8, 8], rtol=1e-7, atol=1e-7, controller=name)
        logp[name] = flow.log_prob(x, trace="exact").numpy()
    np.testing.assert_allclose(logp["pi"], logp["predictive"], atol=2e-4)
    assert type(flow).from_config(flow.get_config()).controller == "pi"
    with pytest.raises(ValueError, match="steers odezoo's integrator"):
        odezoo.build("ffjord", data_dim=2, solver="tfp_dopri5", controller="pid")
    with pytest.raises(ValueError, match=r"controller='fast'.*'predictive', 'pi', 'pid'"):
        odezoo.build("ffjord", data_dim=2, controller="fast")
