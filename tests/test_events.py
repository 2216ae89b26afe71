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
    [
        "dopri5",
        pytest.param("tsit5", marks=pytest.mark.slow),
        pytest.param("bosh3", marks=pytest.mark.slow),
        pytest.param("dopri8", marks=pytest.mark.slow),
    ],
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
    balls = lambda t, y: tf.stack([y[:, 1], -G + 0.0 * y[:, 1]], 1)  # noqa: E731
    with pytest.raises(ValueError, match=r"one value per row, shape \(1,\).*\(1, 2\)"):
        odezoo.odeint_event(balls, y0[None], 0.0, lambda t, y: y, batch_mode="independent")
    with pytest.raises(ValueError, match=r"a scalar.*\(2,\)"):
        odezoo.odeint_event(ball, y0, 0.0, lambda t, y: y)
    with pytest.raises(ValueError, match="gradient='adjoint'.*'backprop'"):
        odezoo.odeint_event(balls, y0[None], 0.0, ground, gradient="adjoint", batch_mode="independent")
    with pytest.raises(ValueError, match="batch_mode='rows'"):
        odezoo.odeint_event(ball, y0, 0.0, ground, batch_mode="rows")
    with pytest.raises(ValueError, match="solver='rk4'.*embedded pair"):
        odezoo.odeint_event(ball, y0, 0.0, ground, solver="rk4")
    with pytest.raises(ValueError, match="solver='tfp_dopri5'.*embedded pair"):
        odezoo.odeint_event(ball, y0, 0.0, ground, solver="tfp_dopri5")


# ------------------------------------------------------------------- one event per row (independent)
H_ROWS = np.array([10.0, 1.0, 5.0, 0.2])
V_ROWS = np.array([2.0, 0.0, -1.0, 0.5])
G_ROWS = np.array([9.81, 1.62, 3.7, 24.8])


def test_every_row_stops_at_its_own_event_with_closed_form_derivatives():
    """batch_mode="independent": four balls with their own height, speed and gravity hit the
    ground at their own closed-form times; d(t_e)/d(h0, g) and d(v_e)/d(h0, g) per row."""
    h0 = tf.Variable(H_ROWS)
    g = tf.Variable(G_ROWS)

    def f(t, y):
        assert t.shape == (4, 1)  # every row's own time, shaped to broadcast against the state
        return tf.stack([y[:, 1], -g + 0.0 * y[:, 1]], 1)

    with tf.GradientTape(persistent=True) as tape:
        y0 = tf.stack([h0, tf.constant(V_ROWS)], 1)
        t_e, y_e = odezoo.odeint_event(f, y0, 0.0, lambda t, y: y[:, 0], direction=-1, batch_mode="independent")
        total_t, total_v = tf.reduce_sum(t_e), tf.reduce_sum(y_e[:, 1])
    root = np.sqrt(V_ROWS**2 + 2 * G_ROWS * H_ROWS)
    want = (V_ROWS + root) / G_ROWS
    np.testing.assert_allclose(t_e.numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(y_e.numpy(), np.stack([0 * want, -root], 1), atol=1e-12)
    dt_dh, dt_dg = tape.gradient(total_t, [h0, g])
    np.testing.assert_allclose(dt_dh.numpy(), 1.0 / root, rtol=1e-9)
    np.testing.assert_allclose(dt_dg.numpy(), (H_ROWS / root * G_ROWS - (V_ROWS + root)) / G_ROWS**2, rtol=1e-9)
    dv_dh, dv_dg = tape.gradient(total_v, [h0, g])  # v_e = −sqrt(v0² + 2 g h0)
    np.testing.assert_allclose(dv_dh.numpy(), -G_ROWS / root, rtol=1e-9)
    np.testing.assert_allclose(dv_dg.numpy(), -H_ROWS / root, rtol=1e-9)


@pytest.mark.slow
def test_a_row_without_an_event_is_named():
    y0 = tf.constant(np.stack([H_ROWS, V_ROWS], 1))
    rising = tf.constant([-1.0, -1.0, 1.0, -1.0], tf.float64)  # row 2 is thrown upwards for ever

    def f(t, y):
        return tf.stack([y[:, 1], rising + 0.0 * y[:, 1]], 1)

    with pytest.raises(odezoo.SolverError, match=r"row 2 of 4.*did not cross zero.*t_max=50"):
        odezoo.odeint_event(f, y0, 0.0, lambda t, y: y[:, 0], direction=-1, t_max=50.0, batch_mode="independent")

    @tf.function
    def compiled():
        return odezoo.odeint_event(f, y0, 0.0, lambda t, y: y[:, 0], direction=-1, t_max=50.0,
                                   batch_mode="independent")  # fmt: skip

    t_e, y_e = compiled()
    assert np.isnan(t_e.numpy()[2]) and np.all(np.isnan(y_e.numpy()[2]))
    root = np.sqrt(V_ROWS**2 + 2 * H_ROWS)
    np.testing.assert_allclose(np.delete(t_e.numpy(), 2), np.delete(V_ROWS + root, 2), rtol=1e-9)


@pytest.mark.slow
def test_independent_events_gradient_matches_finite_differences_on_a_nonlinear_field():
    """A damped pendulum per row, the event θ = 0 (downward): the gradient of Σ t_e + Σ ω_e with
    respect to the initial angles and the field's damping, against central differences."""
    damping = tf.Variable(0.3, dtype=tf.float64)
    theta0 = tf.Variable(np.array([1.0, 0.5, 2.0]))

    def f(t, y):
        return tf.stack([y[:, 1], -tf.sin(y[:, 0]) - damping * y[:, 1]], 1)

    def objective():
        y0 = tf.stack([theta0, tf.zeros_like(theta0)], 1)
        t_e, y_e = odezoo.odeint_event(f, y0, 0.0, lambda t, y: y[:, 0], direction=-1, rtol=1e-10, atol=1e-12,
                                       batch_mode="independent")  # fmt: skip
        return tf.reduce_sum(t_e) + tf.reduce_sum(y_e[:, 1])

    with tf.GradientTape() as tape:
        value = objective()
    got = tape.gradient(value, [theta0, damping])
    for var, grad in zip((theta0, damping), got):
        fd = _central_differences(lambda: float(objective()), var)
        np.testing.assert_allclose(grad.numpy(), fd, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_a_stiff_event_through_an_implicit_pair():
    """kvaerno5 finds an event on a stiff field (u' = −1000(u − s), s' = 1 from 0: u(t) = t −
    (1 − e^{−1000 t})/1000 reaches 1 at t = 1.001): its search steps by Newton with the true
    Jacobian (a zero one, from a paused tape, needs thousands of steps) and the crossing step is
    retaken with its Newton stages, not as an explicit step."""

    def f(t, y):
        return tf.stack([-1000.0 * (y[0] - y[1]), tf.ones_like(y[1])])

    y0 = tf.zeros([2], tf.float64)
    t_e, y_e = odezoo.odeint_event(f, y0, 0.0, lambda t, y: y[0] - 1.0, solver="kvaerno5", rtol=1e-8, atol=1e-10,
                                   max_steps=300)  # fmt: skip
    assert abs(float(t_e) - 1.001) < 1e-7
    np.testing.assert_allclose(y_e.numpy(), [1.0, 1.001], atol=1e-7)


# ----------------------------------------------------------------------- ODEBlock(event_fn=...)
import keras  # noqa: E402


@keras.saving.register_keras_serializable(package="odezoo_test_events")
class Fall(keras.layers.Layer):
    """y = (height, velocity) per row, y' = (v, −g) with g a trainable weight."""

    def build(self, t_shape, y_shape):
        self.g = self.add_weight(shape=(), initializer=keras.initializers.Constant(G))

    def call(self, t, y):
        return tf.stack([y[:, 1], -self.g + 0.0 * y[:, 1]], 1)


@keras.saving.register_keras_serializable(package="odezoo_test_events")
class Ground(keras.layers.Layer):
    """The height: per row (independent) or the batch's mean (shared: one event)."""

    def __init__(self, per_row=True, **kwargs):
        super().__init__(**kwargs)
        self.per_row = per_row

    def call(self, t, y):
        return y[:, 0] if self.per_row else tf.reduce_mean(y[:, 0])

    def get_config(self):
        return dict(super().get_config(), per_row=self.per_row)


@pytest.mark.slow
@pytest.mark.parametrize("batch_mode", ["independent", "shared"])
def test_odeblock_returns_the_state_at_the_event_trains_and_reloads(batch_mode, tmp_path):
    """ODEBlock(event_fn=...): the output is y at the event (closed form), its gradient with
    respect to the input and the field's weight the closed form's, inside a compiled model;
    a .keras round trip keeps the event."""
    x = np.stack([H_ROWS, V_ROWS], 1).astype("float32")
    per_row = batch_mode == "independent"
    block = odezoo.ODEBlock(Fall(), event_fn=Ground(per_row), event_direction=-1, t1=20.0, rtol=1e-6,
                            atol=1e-6, batch_mode=batch_mode)  # fmt: skip
    inputs = keras.Input((2,))
    model = keras.Model(inputs, block(inputs))
    if per_row:  # v_e = −sqrt(v0² + 2 g h0) per row
        root = np.sqrt(V_ROWS**2 + 2 * G * H_ROWS)
        want = np.stack([0 * root, -root], 1)
        d_dg, d_dx = -H_ROWS / root, np.stack([-G / root, -V_ROWS / root], 1)
    else:  # the mean height hits zero at t_e; each row moves by its own (h0, v0) until then
        mh, mv = H_ROWS.mean(), V_ROWS.mean()
        rm = np.sqrt(mv**2 + 2 * G * mh)
        t_e = (mv + rm) / G
        want = np.stack([H_ROWS + V_ROWS * t_e - G * t_e**2 / 2, V_ROWS - G * t_e], 1)
        dte_dg, dte_dmh, dte_dmv = (mh / rm * G - (mv + rm)) / G**2, 1.0 / rm, (1.0 + mv / rm) / G
        d_dg = np.full(4, -t_e - G * dte_dg)  # d(v_e)/dg per row: −t_e − g·dt_e/dg
        n = len(H_ROWS)
        d_dx = np.stack([np.full(4, -G * dte_dmh / n), 1.0 - G * dte_dmv / n * np.ones(4)], 1)
        d_dx = np.stack([d_dx[:, 0] * n, n * np.ones(4) - G * dte_dmv * np.ones(4)], 1)  # Σ over rows
        d_dx = np.stack([-G * dte_dmh * np.ones(4), 1.0 * np.ones(4) - G * dte_dmv * np.ones(4)], 1)
    np.testing.assert_allclose(model.predict(x, verbose=0), want, atol=1e-4)

    @tf.function(jit_compile=block.compiled_by == "xla")
    def grads(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            v = tf.reduce_sum(model(x)[:, 1])
        return tape.gradient(v, [x, block.field.g])

    gx, gg = grads(tf.constant(x))
    np.testing.assert_allclose(float(gg), d_dg.sum(), rtol=1e-3)
    if per_row:
        np.testing.assert_allclose(gx.numpy(), d_dx, rtol=1e-3, atol=1e-5)
    assert int(block.nfe_forward.numpy()) > 0 and int(block.solver_status.numpy()[0]) == 0
    path = str(tmp_path / "event.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.layers[-1].event_direction == -1 and isinstance(loaded.layers[-1].event_fn, Ground)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_odeblock_event_not_reached_by_t1_is_status_7():
    x = np.stack([H_ROWS, V_ROWS], 1).astype("float32")
    block = odezoo.ODEBlock(Fall(), event_fn=Ground(), event_direction=-1, t1=0.1, batch_mode="independent")
    with pytest.raises(odezoo.SolverError, match="status 7"):
        block(x)
    assert int(block.solver_status.numpy()[0]) == 7


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(solution_times=[0.5, 1.0]), "no solution_times"),
        (dict(solver="rk4", num_steps=4), "solver='rk4'.*embedded pair"),
        (dict(t1=-1.0), "t1=-1.0.*after t0"),
        (dict(event_direction=2), "event_direction=2.*-1, 0, 1"),
        (dict(batch_mode="independent", solver="bdf"), "solver='bdf'.*embedded pair"),
        (dict(event_fn=3), "event_fn.*callable"),
    ],
)
def test_odeblock_bad_event_options_are_named(kwargs, match):
    kwargs = dict(dict(event_fn=Ground()), **kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        odezoo.ODEBlock(Fall(), **kwargs)


@pytest.mark.slow
def test_stiff_events_per_row_through_an_implicit_pair_with_their_derivatives():
    """kvaerno5 per row (batch_mode="independent"): u' = −λ_b(u − s), s' = 1 from 0 reaches u = 1
    where F(t, λ) = t − (1 − e^{−λt})/λ − 1 = 0 (brentq), and dt_e/dλ = −F_λ/F_t, through the
    rows' own Newton stages (backprop) and the implicit function theorem."""
    from scipy.optimize import brentq

    lam_np = np.array([10.0, 1e3, 1e5])
    lam = tf.Variable(lam_np)

    def f(t, y):
        return tf.stack([-lam * (y[:, 0] - y[:, 1]), tf.ones_like(y[:, 1])], 1)

    with tf.GradientTape() as tape:
        t_e, y_e = odezoo.odeint_event(f, tf.zeros([3, 2], tf.float64), 0.0, lambda t, y: y[:, 0] - 1.0,
                                       solver="kvaerno5", rtol=1e-9, atol=1e-11, max_steps=400,
                                       batch_mode="independent")  # fmt: skip
    grad = tape.gradient(t_e, lam).numpy()
    F = lambda t, lam_b: t - (1 - np.exp(-lam_b * t)) / lam_b - 1.0  # noqa: E731
    want = np.array([brentq(F, 1.0, 2.0, args=(lam_b,), xtol=1e-15) for lam_b in lam_np])
    np.testing.assert_allclose(t_e.numpy(), want, rtol=1e-8)
    np.testing.assert_allclose(y_e.numpy()[:, 0], 1.0, atol=1e-8)
    e = np.exp(-lam_np * want)
    f_t, f_l = 1 - e, (1 - e) / lam_np**2 - want * e / lam_np
    np.testing.assert_allclose(grad, -f_l / f_t, rtol=1e-5, atol=1e-12)
