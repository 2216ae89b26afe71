"""RNODE regularisation (odezoo.ode.regularization): the kinetic and Jacobian integrals of the solve.

References: closed forms on linear fields (scipy's expm and quad), scipy's solve_ivp of the
augmented system with the exact Jacobian, and central differences for every gradient path.
"""

import numpy as np
import pytest
import scipy.integrate as si
import scipy.linalg as sl

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

import odezoo  # noqa: E402
from odezoo.ode.regularization import check_regularization, regularized_solve  # noqa: E402
from odezoo.ode.tfp import TFPGuard  # noqa: E402


@keras.saving.register_keras_serializable(package="test_regularization")
class Linear(keras.layers.Layer):
    """f(t, y) = A y (float64)."""

    def __init__(self, a, **kwargs):
        kwargs["dtype"] = "float64"
        super().__init__(**kwargs)
        self.a = np.asarray(a, np.float64)

    def get_config(self):
        return {**super().get_config(), "a": self.a.tolist()}

    def build(self, t_shape, y_shape):
        self.w = self.add_weight(shape=self.a.shape, initializer=keras.initializers.Constant(self.a.T))

    def call(self, t, y):
        return y @ self.w


class MLP(keras.layers.Layer):
    """A small tanh field with t as an input (float64)."""

    def __init__(self, **kwargs):
        super().__init__(dtype="float64", **kwargs)

    def build(self, t_shape, y_shape):
        d = y_shape[-1]
        self.w1 = self.add_weight(shape=(d + 1, 5), initializer=keras.initializers.RandomNormal(stddev=0.7, seed=1))
        self.b1 = self.add_weight(shape=(5,), initializer=keras.initializers.RandomNormal(stddev=0.3, seed=2))
        self.w2 = self.add_weight(shape=(5, d), initializer=keras.initializers.RandomNormal(stddev=0.7, seed=3))

    def call(self, t, y):
        tt = tf.ones_like(y[..., :1]) * tf.cast(t, y.dtype)
        return tf.tanh(tf.concat([y, tt], -1) @ self.w1 + self.b1) @ self.w2


def _probe(shape, seed):
    return np.where(np.random.default_rng(seed).random(shape) < 0.5, -1.0, 1.0)


RNG = np.random.default_rng(0)
Q, _ = np.linalg.qr(RNG.normal(size=(3, 3)))
A_ROWS = np.diag([-1.0, 0.5, -2.0]) @ Q  # A Aᵀ diagonal: Hutchinson's estimate is exact for every ε
Y0 = RNG.normal(size=(4, 3))

# every path through regularized_solve: the flat one (odezoo's integrator, every gradient), an
# implicit pair, independent rows, a fixed grid, tfp's reference
PATHS = [
    ("dopri5", {}),
    ("tsit5", {"gradient": "checkpoint"}),
    ("bosh3", {"gradient": "backprop"}),
    ("kvaerno5", {}),
    ("dopri5", {"batch_mode": "independent"}),
    ("rk4", {"num_steps": 200}),
    ("tfp_dopri5", {}),
    ("bdf", {"batch_axis": 0}),
]


def _solve_fn(field, solver, options, t0, t1, guard_var):
    @tf.function
    def run(y, e):
        guard = TFPGuard(guard_var, 0) if solver in ("tfp_dopri5", "bdf") else None
        t0_ = tf.constant(t0, tf.float64)
        return regularized_solve(lambda t, y: field(t, y), y, t0_, tf.constant([t1], tf.float64), noise=e,
                                 solver=solver, rtol=1e-10, atol=1e-10, guard=guard, **options)  # fmt: skip

    return run


def _ids(paths):
    pairs = [getattr(p, "values", p) for p in paths]  # a pytest.param's values, or the pair itself
    return [f"{s}-{'-'.join(map(str, o.values()))}" for s, o in pairs]


@pytest.mark.parametrize("solver,options", PATHS, ids=_ids(PATHS))
@pytest.mark.parametrize("t1", [1.5, -0.7])
def test_linear_field_integrals_match_closed_forms(solver, options, t1):
    """kinetic_b = ∫‖A e^{At} y_b‖² dt (quad of expm), jacobian = ‖A‖_F²·|t1 - t0| exactly (A Aᵀ diagonal)."""
    if t1 < 0 and (options.get("batch_mode") == "independent" or solver in ("tfp_dopri5", "bdf")):
        pytest.skip("independent rows and tfp's solver integrate forward in time only (a failed status otherwise)")
    field = Linear(A_ROWS)
    field.build((), (None, 3))
    run = _solve_fn(field, solver, options, 0.0, t1, tf.Variable(tf.zeros(3, tf.int32)))
    states, kin, jac, _ = run(tf.constant(Y0), tf.constant(_probe(Y0.shape, 1)))
    lo, hi = sorted((0.0, t1))
    want_kin = [
        si.quad(lambda t, y=y: np.sum((A_ROWS @ sl.expm(A_ROWS * t) @ y) ** 2), lo, hi, epsabs=1e-13, epsrel=1e-12)[0]
        for y in Y0
    ]
    tol = {"tfp_dopri5": 1e-6, "bdf": 1e-5}.get(solver, 1e-8)  # tfp's references land further from theirs
    np.testing.assert_allclose(kin.numpy(), want_kin, rtol=tol)
    np.testing.assert_allclose(jac.numpy(), np.full(4, np.sum(A_ROWS**2) * abs(t1)), rtol=tol)
    np.testing.assert_allclose(states[-1].numpy(), Y0 @ sl.expm(A_ROWS * t1).T, atol=1e-6)


def test_hutchinson_estimate_is_unbiased_for_a_general_matrix():
    """A A^T not diagonal: per row the estimate is ‖Aᵀε‖²·t1; over many probes its mean is ‖A‖_F²·t1."""
    a = np.random.default_rng(3).normal(size=(3, 3))
    field = Linear(a)
    field.build((), (None, 3))
    n = 4000
    eps = _probe((n, 3), 5)
    run = _solve_fn(field, "dopri5", {}, 0.0, 2.0, None)
    _, _, jac, _ = run(tf.constant(np.random.default_rng(6).normal(size=(n, 3))), tf.constant(eps))
    np.testing.assert_allclose(jac.numpy(), 2.0 * np.sum((eps @ a) ** 2, 1), rtol=1e-8)  # each row exact
    se = np.std(jac.numpy()) / np.sqrt(n)
    assert abs(np.mean(jac.numpy()) - 2.0 * np.sum(a**2)) < 4 * se


def test_nonlinear_field_integrals_match_scipy():
    """A field with a diagonal Jacobian (the estimate is exact), t-dependent: scipy's solve_ivp of the
    augmented system (y, ∫‖f‖², ∫‖∂f/∂y‖_F²) at rtol 1e-12."""

    class Elementwise(keras.layers.Layer):
        def call(self, t, y):
            return -tf.sin(y) * (1.0 + tf.cast(t, y.dtype))

    field = Elementwise(dtype="float64")
    y0 = np.array([[0.3, -1.2], [2.0, 0.7]])

    def rhs(t, z):
        y = z[:2]
        f = -np.sin(y) * (1 + t)
        return np.concatenate([f, [np.sum(f**2), np.sum((np.cos(y) * (1 + t)) ** 2)]])

    run = _solve_fn(field, "dopri5", {}, 0.0, 1.3, None)
    _, kin, jac, _ = run(tf.constant(y0), tf.constant(_probe(y0.shape, 2)))
    for b in range(2):
        ref = si.solve_ivp(rhs, (0, 1.3), np.concatenate([y0[b], [0, 0]]), rtol=1e-12, atol=1e-13).y[:, -1]
        np.testing.assert_allclose([kin[b].numpy(), jac[b].numpy()], ref[2:], rtol=1e-8)


GRAD_PATHS = [
    ("dopri5", {"gradient": "adjoint"}),
    ("dopri5", {"gradient": "checkpoint"}),
    ("dopri5", {"gradient": "backprop"}),
    pytest.param("kvaerno3", {"gradient": "adjoint"}, marks=pytest.mark.slow),
    ("tsit5", {"gradient": "adjoint", "batch_mode": "independent"}),
    ("rk4", {"num_steps": 20}),
]


@pytest.mark.parametrize("solver,options", GRAD_PATHS, ids=_ids(GRAD_PATHS))
def test_penalty_gradient_matches_central_differences(solver, options):
    """d/dθ and d/dy0 of  c·y(t1) + 0.7·Σ kinetic + 0.3·Σ jacobian  along random directions, fixed probe."""
    field = MLP()
    y0 = tf.constant(np.random.default_rng(4).normal(size=(3, 2)))
    field.build((), (None, 2))
    eps = tf.constant(_probe((3, 2), 7))
    c = tf.constant(np.random.default_rng(5).normal(size=(3, 2)))
    run = _solve_fn(field, solver, options, 0.0, 0.8, None)

    def loss(y):
        states, kin, jac, _ = run(y, eps)
        return tf.reduce_sum(c * states[-1]) + 0.7 * tf.reduce_sum(kin) + 0.3 * tf.reduce_sum(jac)

    with tf.GradientTape() as tape:
        tape.watch(y0)
        value = loss(y0)
    grads = tape.gradient(value, [y0] + field.trainable_variables)
    base = [v.numpy() for v in field.trainable_variables]
    rng = np.random.default_rng(8)
    h = 1e-5
    for _ in range(2):
        dirs = [rng.normal(size=g.shape) for g in grads]
        analytic = sum(np.sum(g.numpy() * d) for g, d in zip(grads, dirs))
        fd = []
        for sign in (1, -1):
            for v, b, d in zip(field.trainable_variables, base, dirs[1:]):
                v.assign(b + sign * h * d)
            fd.append(loss(y0 + sign * h * dirs[0]).numpy())
        for v, b in zip(field.trainable_variables, base):
            v.assign(b)
        # the discrete solve at rtol 1e-10: the adjoint's continuous gradient agrees to ~1e-7
        np.testing.assert_allclose(analytic, (fd[0] - fd[1]) / (2 * h), rtol=2e-6, atol=1e-7)


def test_bad_regularization_names_the_value_and_the_choices():
    with pytest.raises(ValueError, match=r"kinetc.*\('kinetic', 'jacobian'\)"):
        check_regularization({"kinetc": 0.1})
    with pytest.raises(ValueError, match=r"regularization\['jacobian'\].*-1.*>= 0"):
        check_regularization({"jacobian": -1})
    with pytest.raises(ValueError, match="non-empty dict"):
        check_regularization(0.1)
    assert check_regularization({"kinetic": 1}) == {"kinetic": 1.0, "jacobian": 0.0}
    with pytest.raises(ValueError, match="event_fn"):
        odezoo.ODEBlock(MLP(), regularization={"kinetic": 0.1}, event_fn=lambda t, y: y[0, 0])


# --------------------------------------------------------------------------- the layer
def _block_model(regularization, **options):
    inputs = keras.Input((3,), dtype="float64")
    block = odezoo.ODEBlock(Linear(A_ROWS), dtype="float64", regularization=regularization, rtol=1e-8, atol=1e-8,
                            name="ode", **options)  # fmt: skip
    return keras.Model(inputs, block(inputs)), block


@pytest.mark.parametrize("options", [{}, {"gradient": "backprop"}, {"solver": "rk4", "num_steps": 50}],
                         ids=["adjoint", "backprop", "rk4"])  # fmt: skip
def test_block_adds_the_penalty_in_training_calls_only(options):
    lam = {"kinetic": 0.5, "jacobian": 0.25}
    model, block = _block_model(lam, **options)
    x = tf.constant(Y0)
    model(x, training=False)
    assert model.losses == []
    model(x, training=True)
    (loss,) = model.losses
    want_kin = np.mean(
        [si.quad(lambda t, y=y: np.sum((A_ROWS @ sl.expm(A_ROWS * t) @ y) ** 2), 0, 1, epsrel=1e-12)[0] for y in Y0]
    )
    want_jac = np.sum(A_ROWS**2)  # exact for every probe (A Aᵀ diagonal)
    np.testing.assert_allclose(block.kinetic.numpy(), want_kin, rtol=1e-5)
    np.testing.assert_allclose(block.jacobian.numpy(), want_jac, rtol=1e-5)
    np.testing.assert_allclose(loss.numpy(), 0.5 * want_kin + 0.25 * want_jac, rtol=1e-5)
    # the penalty's gradient reaches the field: kinetic energy falls as A shrinks
    with tf.GradientTape() as tape:
        model(x, training=True)
        total = tf.add_n(model.losses)
    (g,) = tape.gradient(total, block.field.trainable_variables)
    np.testing.assert_allclose(np.sum(g.numpy() * block.field.w.numpy()) > 0, True)


def test_block_kinetic_only_and_config_round_trip(tmp_path):
    model, block = _block_model({"kinetic": 0.1})
    assert not hasattr(block, "_probe_seed")  # no probe, no VJP: the kinetic term alone costs nothing more
    model(tf.constant(Y0), training=True)
    assert float(block.jacobian.numpy()) == 0.0
    config = block.get_config()
    assert config["regularization"] == {"kinetic": 0.1, "jacobian": 0.0}
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("ode").regularization == {"kinetic": 0.1, "jacobian": 0.0}
    np.testing.assert_allclose(loaded(tf.constant(Y0)).numpy(), model(tf.constant(Y0)).numpy(), rtol=1e-12)


@pytest.mark.slow  # ~10 s; the default suite checks the layer's penalty and variables directly
def test_odenet_fit_logs_the_integrals_and_the_penalty_shrinks_them():
    """ODE-Net's fit logs kinetic and jacobian; with a large weight their sum falls within a few steps."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 16, size=(64, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, size=64)
    model = odezoo.build("odenet", input_shape=(8, 8, 1), num_classes=10, channels=8,
                         regularization={"kinetic": 1.0, "jacobian": 1.0})  # fmt: skip
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    hist = model.fit(x, y, batch_size=32, epochs=3, verbose=0).history
    for key in ("kinetic", "jacobian", "nfe_forward", "nfe_backward"):
        assert key in hist, hist.keys()
    penalty = np.add(hist["kinetic"], hist["jacobian"])
    assert penalty[-1] < 0.5 * penalty[0], hist
    assert "kinetic" not in model.evaluate(x, y, verbose=0, return_dict=True)


# --------------------------------------------------------------------------- the flow
def _flow_reference(flow, x):
    """Per row: ∫‖f‖² dt and ∫‖∂f/∂z‖_F² dt along the data's path back to the base (solve_ivp, eager
    Jacobians of the flow's field)."""
    field = flow.fields[0]
    d = x.shape[1]

    def rhs(t, s):
        z = tf.constant(s[:d][None], tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(z)
            f = field(tf.constant(t, tf.float32), z)
        jac = tape.jacobian(f, z).numpy().reshape(d, d)
        f = f.numpy()[0].astype(np.float64)
        return np.concatenate([f, [-np.sum(f**2), -np.sum(jac**2)]])  # integrated from t1 down to 0

    out = []
    for row in x:
        sol = si.solve_ivp(rhs, (flow.t1, 0.0), np.concatenate([row, [0.0, 0.0]]), rtol=1e-8, atol=1e-9)
        out.append(sol.y[d:, -1])
    return np.array(out)


@pytest.mark.slow  # ~35 s: scipy's reference calls the field eagerly
def test_flow_fit_step_carries_the_integrals_and_the_penalty():
    """With trace="exact" the Jacobian norm is exact: one training step's logged integrals match scipy's,
    and the step's gradient is the NLL's plus the penalty's."""
    x = np.random.default_rng(1).normal(size=(6, 2)).astype("float32")
    lam = {"kinetic": 0.3, "jacobian": 0.2}
    flow = odezoo.build("ffjord", data_dim=2, hidden=(8, 8), trace="exact", rtol=1e-7, atol=1e-7, seed=0,
                        regularization=lam)  # fmt: skip
    flow.compile(optimizer=keras.optimizers.SGD(0.0))
    logs = flow.train_on_batch(x, return_dict=True)
    ref = _flow_reference(flow, x).mean(0)
    np.testing.assert_allclose([logs["kinetic"], logs["jacobian"]], ref, rtol=2e-4)
    # the loss differentiated is nll + penalty: its gradient against the unregularised flow's
    plain = odezoo.build("ffjord", data_dim=2, hidden=(8, 8), trace="exact", rtol=1e-7, atol=1e-7, seed=0)
    plain.set_weights(flow.get_weights())
    with tf.GradientTape() as tape:
        loss, nll, pen = flow._penalized_nll(tf.constant(x))
    g_reg = tape.gradient(loss, flow.trainable_variables)
    with tf.GradientTape() as tape:
        nll_plain = -tf.reduce_mean(plain.log_prob(tf.constant(x)))
    g_plain = tape.gradient(nll_plain, plain.trainable_variables)
    np.testing.assert_allclose(nll.numpy(), nll_plain.numpy(), rtol=1e-5)
    np.testing.assert_allclose(loss.numpy(), nll.numpy() + 0.3 * ref[0] + 0.2 * ref[1], rtol=2e-4)
    assert max(float(tf.norm(a - b)) for a, b in zip(g_reg, g_plain)) > 1e-3  # the penalty's share


@pytest.mark.slow  # ~8 s
def test_flow_hutchinson_jacobian_is_unbiased():
    """The trace's own probe estimates ‖∂f/∂z‖_F²: on 4000 copies of one point, the mean is the exact value."""
    x = np.tile(np.array([[0.4, -0.9]], "float32"), (4000, 1))
    flows = {}
    for trace in ("exact", "hutchinson"):
        flows[trace] = odezoo.build("ffjord", data_dim=2, hidden=(8, 8), trace=trace, seed=3,
                                    regularization={"jacobian": 1.0})  # fmt: skip
        flows[trace].compile(optimizer=keras.optimizers.SGD(0.0))
    flows["hutchinson"].set_weights(flows["exact"].get_weights())
    exact = flows["exact"].train_on_batch(x[:1], return_dict=True)["jacobian"]
    estimate = flows["hutchinson"].train_on_batch(x, return_dict=True)["jacobian"]
    assert abs(estimate - exact) < 0.05 * exact, (estimate, exact)


def test_flow_regularization_round_trips_and_checks_its_input(tmp_path):
    with pytest.raises(ValueError, match="regularization"):
        odezoo.build("ffjord", data_dim=2, regularization={"kinetic": float("nan")})
    flow = odezoo.build("ffjord", data_dim=2, hidden=(8,), regularization={"kinetic": 0.01})
    path = tmp_path / "flow.keras"
    flow.save(path)
    assert keras.models.load_model(path).regularization == {"kinetic": 0.01, "jacobian": 0.0}


# --------------------------------------------------------------------------- XLA and tf.distribute
@pytest.mark.slow  # ~25 s of XLA compilation
def test_regularized_train_steps_compile_with_xla():
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    net = odezoo.build("odenet", input_shape=(8, 8, 1), num_classes=10, channels=8, compile="xla",
                       regularization={"kinetic": 0.1, "jacobian": 0.1})  # fmt: skip
    net.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=True)
    flow = odezoo.build("ffjord", data_dim=2, hidden=(8, 8), rtol=1e-3, atol=1e-3,
                        regularization={"kinetic": 0.1, "jacobian": 0.1})  # fmt: skip
    flow.compile(optimizer="adam", jit_compile=True)
    for model, batch in (
        (net, (rng.integers(0, 17, (16, 8, 8, 1)).astype("float32"), np.arange(16) % 10)),
        (flow, (rng.normal(size=(16, 2)).astype("float32"),)),
    ):
        assert model.jit_compile is True
        before = [np.array(w) for w in model.trainable_weights]
        logs = model.train_on_batch(*batch, return_dict=True)
        assert np.isfinite(logs["kinetic"]) and logs["kinetic"] > 0 and logs["jacobian"] > 0, logs
        assert any(np.abs(np.array(w) - b).max() > 0 for w, b in zip(model.trainable_weights, before))


_MIRRORED = r"""
import json, sys
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, odezoo
rng = np.random.default_rng(0)
x, y = rng.integers(0, 17, (64, 8, 8, 1)).astype("float32"), np.arange(64) % 10
out = {}
for name in ("single", "mirrored"):
    keras.utils.set_random_seed(0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if name == "mirrored" else None
    scope = strategy.scope() if strategy else tf.init_scope()
    with scope:
        model = odezoo.build("rknet", input_shape=(8, 8, 1), num_classes=10, channels=8, num_steps=3,
                             regularization={"kinetic": 0.05})
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    hist = model.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0).history
    out[name] = {k: [float(v) for v in hist[k]] for k in ("loss", "kinetic")}
json.dump(out, open(sys.argv[1], "w"))
"""


@pytest.mark.slow
def test_regularized_training_is_the_same_mirrored(tmp_path):
    """Two logical CPUs: the mirrored run's losses follow the single device's, penalty included (Keras sums
    the replicas' add_loss values). On a fixed grid (RK-Net), where both runs take the same steps: an
    adaptive solve steps differently on each replica's half batch. The kinetic term alone: the Jacobian
    term's probes differ between the runs."""
    import json
    import os
    import subprocess
    import sys

    result = tmp_path / "out.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", _MIRRORED, str(result)], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(result.read_text())
    assert out["single"]["kinetic"][1] < out["single"]["kinetic"][0]
    # the logged integrals are the first replica's half batch's means: near the whole batch's
    np.testing.assert_allclose(out["mirrored"]["kinetic"], out["single"]["kinetic"], rtol=0.2)
    # the losses (the second after one update) agree: the penalty counted once, its gradient too
    np.testing.assert_allclose(out["mirrored"]["loss"], out["single"]["loss"], rtol=1e-4)


@pytest.mark.slow
def test_flow_integrals_agree_across_its_solvers():
    """tfp's reference solver carries the same integrals as dopri5 (which the slow test checks against
    scipy); it once skipped them (the run then refused: 0 solves collected)."""
    x = np.random.default_rng(2).normal(size=(16, 2)).astype("float32")
    logs = {}
    for solver in ("dopri5", "tfp_dopri5"):
        keras.utils.set_random_seed(0)
        flow = odezoo.build("ffjord", data_dim=2, hidden=(8, 8), trace="exact", solver=solver, rtol=1e-6,
                            atol=1e-6, regularization={"kinetic": 0.1, "jacobian": 0.1})  # fmt: skip
        flow.compile(optimizer=keras.optimizers.SGD(0.0))
        logs[solver] = flow.train_on_batch(x, return_dict=True)
    for key in ("kinetic", "jacobian", "nll"):
        np.testing.assert_allclose(logs["tfp_dopri5"][key], logs["dopri5"][key], rtol=1e-3, err_msg=key)
