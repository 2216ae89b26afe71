"""odezoo.odeint_event (issue 16): terminal events against closed forms, and the event time's
gradient by the implicit function theorem against closed forms and finite differences."""

import numpy as np
import pytest
import tensorflow as tf

import odezoo
from odezoo.testing import _central_differences

G, H0, V0 = 9.81, 10.0, 2.0


def falling_ball(g):
    """y = (height, velocity), y' = (v, −g)."""
    return lambda t, y: tf.stack([y[1], -g])


def hit_time(h0, v0, g):
    return (v0 + np.sqrt(v0**2 + 2 * g * h0)) / g


@pytest.mark.parametrize(
    "solver",
    ["dopri5", pytest.param("tsit5", marks=pytest.mark.slow), "bosh3", pytest.param("dopri8", marks=pytest.mark.slow)],
)
def test_falling_ball_hits_the_ground_at_the_closed_form_time_with_its_derivatives(solver):
    g = tf.Variable(G, dtype=tf.float64)
    h0 = tf.Variable(H0, dtype=tf.float64)

    def event_and_grads(which):
        with tf.GradientTape() as tape:
            y0 = tf.stack([h0, tf.constant(V0, tf.float64)])
            t_e, y_e = odezoo.odeint_event(falling_ball(g), y0, 0.0, lambda t, y: y[0], direction=-1, solver=solver)
            target = t_e if which == "t" else y_e[1]
        return t_e, y_e, tape.gradient(target, [h0, g])

    t_e, y_e, (got_h0, got_g) = event_and_grads("t")
    want = hit_time(H0, V0, G)
    root = np.sqrt(V0**2 + 2 * G * H0)
    assert abs(float(t_e) - want) < 1e-9
    np.testing.assert_allclose(y_e.numpy(), [0.0, V0 - G * want], atol=1e-8)
    dt_dh0 = 1.0 / root
    dt_dg = (H0 / root * G - (V0 + root)) / G**2
    np.testing.assert_allclose([float(got_h0), float(got_g)], [dt_dh0, dt_dg], rtol=1e-7)
    # the impact velocity v_e = v0 − g·t_e: dv_e/dh0 = −g·dt/dh0, dv_e/dg = −t_e − g·dt/dg
    _, _, (dv_h0, dv_g) = event_and_grads("v")
    np.testing.assert_allclose([float(dv_h0), float(dv_g)], [-G * dt_dh0, -want - G * dt_dg], rtol=1e-7)


@pytest.mark.slow
def test_compiled_and_eager_agree():
    g = tf.Variable(G, dtype=tf.float64)
    h0 = tf.Variable(H0, dtype=tf.float64)

    def run():
        with tf.GradientTape() as tape:
            y0 = tf.stack([h0, tf.constant(V0, tf.float64)])
            t_e, _ = odezoo.odeint_event(falling_ball(g), y0, 0.0, lambda t, y: y[0], direction=-1)
        return t_e, tape.gradient(t_e, [h0, g])

    eager = run()
    compiled = tf.function(run, jit_compile=True)()
    np.testing.assert_allclose(float(compiled[0]), float(eager[0]), rtol=1e-12)
    np.testing.assert_allclose([float(x) for x in compiled[1]], [float(x) for x in eager[1]], rtol=1e-9)


@pytest.mark.slow
def test_direction_picks_the_upward_or_the_downward_crossing():
    y0 = tf.constant([H0, 8.0], tf.float64)  # thrown up at 8 m/s: passes 11 m going up, then down
    level = 11.0
    disc = np.sqrt(8.0**2 - 2 * G * (level - H0))
    up, down = (8.0 - disc) / G, (8.0 + disc) / G
    t_up, _ = odezoo.odeint_event(falling_ball(G), y0, 0.0, lambda t, y: y[0] - level, direction=1)
    t_down, _ = odezoo.odeint_event(falling_ball(G), y0, 0.0, lambda t, y: y[0] - level, direction=-1)
    t_any, _ = odezoo.odeint_event(falling_ball(G), y0, 0.0, lambda t, y: y[0] - level)
    assert abs(float(t_up) - up) < 1e-9 and abs(float(t_down) - down) < 1e-9
    assert abs(float(t_any) - up) < 1e-9  # the first crossing either way


@pytest.mark.slow
def test_bouncing_ball_by_restarting_at_each_event():
    """Dropped from H0, restitution e: bounces at t1 = sqrt(2 h0/g), then every 2·e^k·v1/g later."""
    e = 0.8
    h0 = tf.Variable(H0, dtype=tf.float64)
    with tf.GradientTape() as tape:
        t, y = tf.constant(0.0, tf.float64), tf.stack([h0, tf.constant(0.0, tf.float64)])
        times = []
        for _ in range(3):
            t, y = odezoo.odeint_event(falling_ball(G), y, t, lambda t, y: y[0], direction=-1)
            times.append(t)
            y = tf.stack([tf.zeros_like(y[0]), -e * y[1]])  # on the ground, velocity reversed
        last = times[-1]
    t1 = np.sqrt(2 * H0 / G)
    v1 = G * t1
    want = [t1, t1 + 2 * e * v1 / G, t1 + 2 * e * v1 / G + 2 * e**2 * v1 / G]
    np.testing.assert_allclose([float(x) for x in times], want, rtol=1e-9)
    # t3 = t1·(1 + 2e + 2e²) ∝ sqrt(h0): dt3/dh0 = t3 / (2 h0)
    np.testing.assert_allclose(float(tape.gradient(last, h0)), want[-1] / (2 * H0), rtol=1e-7)


@pytest.mark.slow
def test_gradients_match_finite_differences_on_a_nonlinear_field_and_event():
    rng = np.random.default_rng(0)
    w = tf.Variable(rng.normal(size=(3, 3)) * 0.5)
    c = tf.Variable(1.3, dtype=tf.float64)  # the event's threshold: the event function's own parameter

    def field(t, y):
        return tf.tanh(tf.linalg.matvec(w, y)) + tf.constant([0.5, 0.1, -0.2], tf.float64)

    def event(t, y):
        return y[0] + 0.1 * y[1] ** 2 - c

    y0 = tf.Variable([0.2, -0.1, 0.4], dtype=tf.float64)

    def run():
        return odezoo.odeint_event(field, y0, 0.0, event, rtol=1e-11, atol=1e-12)

    grads = {}
    for which in ("t", "y"):
        with tf.GradientTape() as tape:
            t_e, y_e = run()
            target = t_e if which == "t" else tf.reduce_sum(tf.sin(y_e))
        grads[which] = tape.gradient(target, [y0, w, c])

    def event_time():
        return float(run()[0])

    def loss_at_event():
        return float(tf.reduce_sum(tf.sin(run()[1])))

    for k, var in enumerate((y0, w, c)):
        fd_t, fd_y = _central_differences(event_time, var), _central_differences(loss_at_event, var)
        np.testing.assert_allclose(grads["t"][k].numpy(), fd_t, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(grads["y"][k].numpy(), fd_y, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_no_event_is_an_error_eagerly_and_nan_compiled():
    y0 = tf.constant([H0, 0.0], tf.float64)
    with pytest.raises(odezoo.SolverError, match=r"did not cross zero \(direction=-1\).*t_max=1\.0"):
        odezoo.odeint_event(falling_ball(G), y0, 0.0, lambda t, y: y[0], direction=-1, t_max=1.0)
    with pytest.raises(odezoo.SolverError, match="max_steps=5"):
        odezoo.odeint_event(lambda t, y: -y, y0, 0.0, lambda t, y: y[0] + 1.0, max_steps=5)

    @tf.function(jit_compile=True)
    def run():
        return odezoo.odeint_event(falling_ball(G), y0, 0.0, lambda t, y: y[0], direction=-1, t_max=1.0)

    t_e, y_e = run()
    assert np.isnan(float(t_e)) and np.all(np.isnan(y_e.numpy()))


def test_bad_arguments_name_the_choices():
    y0 = tf.constant([H0, 0.0], tf.float64)
    ball, ground = falling_ball(G), (lambda t, y: y[0])
    with pytest.raises(ValueError, match="direction=2.*-1, 0, 1"):
        odezoo.odeint_event(ball, y0, 0.0, ground, direction=2)
    with pytest.raises(ValueError, match="batch_mode='independent'.*not available yet"):
        odezoo.odeint_event(ball, y0, 0.0, ground, batch_mode="independent")
    with pytest.raises(ValueError, match="batch_mode='rows'"):
        odezoo.odeint_event(ball, y0, 0.0, ground, batch_mode="rows")
    with pytest.raises(ValueError, match="solver='rk4'.*embedded pair"):
        odezoo.odeint_event(ball, y0, 0.0, ground, solver="rk4")
    with pytest.raises(ValueError, match="solver='tfp_dopri5'.*embedded pair"):
        odezoo.odeint_event(ball, y0, 0.0, ground, solver="tfp_dopri5")
