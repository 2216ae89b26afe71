"""The plugin's own test: odezoo's conformance kit for adaptive solvers on the installed pair."""

import numpy as np
import tensorflow as tf

import odezoo
import odezoo.testing


def test_fehlberg45_is_discovered():
    assert "fehlberg45" in odezoo.list_schemes()
    loaded = {rec["name"]: rec for rec in odezoo.plugin_report()["loaded"]}
    assert loaded["fehlberg45"]["schemes"] == ["fehlberg45"]


def test_fehlberg45_conforms_as_an_adaptive_solver():
    # orders 5 and 4, the error estimate, the dense output, tolerance proportionality,
    # ODEBlock gradients against finite differences, a .keras round trip
    result = odezoo.testing.check_solver("fehlberg45")
    assert abs(result["order_measured"] - 5) < 0.4 and abs(result["error_order_measured"] - 4) < 0.4
    assert result["dense"] == "hermite" and result["round_trip"] == "ok"


def test_fehlberg45_solves_exponential_decay():
    t = tf.constant([0.0, 0.5, 2.0], tf.float64)
    y = odezoo.odeint(lambda t, y: -y, tf.constant([1.0], tf.float64), t, solver="fehlberg45", rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(y.numpy()[:, 0], np.exp(-t.numpy()), rtol=1e-7)
