"""ODE-RNN and Neural CDE: masks and padding never change a result; the solves against
closed forms and scipy; gradients against finite differences; save/load; bad input."""

import numpy as np
import pytest
import tensorflow as tf
from scipy.integrate import solve_ivp

import keras
import odezoo
from odezoo import data

C = 3


def _batch(seed=0, n=4, t=7, drop=0.3):
    """Ragged, irregularly timed series with dropped entries (a Series: its checks hold)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, t + 1, size=n)
    lengths[0] = t
    times = np.cumsum(rng.uniform(0.2, 1.0, size=(n, t)), axis=1)
    inside = np.arange(t)[None, :] < lengths[:, None]
    mask = (inside[:, :, None] & (rng.uniform(size=(n, t, C)) > drop)).astype(float)
    mask[:, 0, 0] = 1.0  # every sample observed at least once
    return data.Series(rng.normal(size=(n, t, C)), times, mask, lengths)


def _inputs(s):
    return {k: np.array(v) for k, v in s.inputs().items()}


def _model(name, **kw):
    keras.utils.set_random_seed(1)
    defaults = dict(input_channels=C, num_classes=3, units=6, field_units=8, rtol=1e-5, atol=1e-7)
    return odezoo.build(name, **{**defaults, **kw})


FAMILIES = [("ode_rnn", {}), ("neural_cde", {"interpolation": "hermite"}), ("neural_cde", {"interpolation": "linear"})]
IDS = ["ode_rnn", "ncde_hermite", "ncde_linear"]


@pytest.mark.parametrize("name, kw", FAMILIES, ids=IDS)
def test_unobserved_entries_padding_and_empty_steps_never_change_a_result(name, kw):
    model = _model(name, **kw)
    s = _batch()
    x = _inputs(s)
    base = model.predict(x, verbose=0)
    # 1. values where the mask is 0: anything, NaN included
    junk = dict(x, values=np.where(x["mask"] > 0, x["values"], np.nan))
    junk["values"][0, 0, 1] = 1e6 if x["mask"][0, 0, 1] == 0 else junk["values"][0, 0, 1]
    np.testing.assert_allclose(model.predict(junk, verbose=0), base, rtol=0, atol=1e-6)
    # 2. five more steps of padding, with values and (later) times of their own
    pad = 5
    padded = {
        "values": np.concatenate([x["values"], np.full((4, pad, C), 7.0)], 1),
        "times": np.concatenate([x["times"], x["times"][:, -1:] + 1 + np.arange(pad)], 1),
        "mask": np.concatenate([x["mask"], np.zeros((4, pad, C))], 1),
    }
    np.testing.assert_allclose(model.predict(padded, verbose=0), base, rtol=0, atol=1e-6)
    # 3. a wholly unobserved step inside sample 0 (between its steps 2 and 3)
    ins = {k: np.insert(v, 3, 0.0, axis=1) for k, v in x.items()}
    ins["times"][:, 3] = 0.5 * (x["times"][:, 2] + x["times"][:, 3])
    ins["values"][:, 3] = 5.0
    ins["mask"][1:] = np.insert(x["mask"][1:], x["mask"].shape[1], 0.0, axis=1)  # others: padding at the end
    ins["values"][1:] = np.insert(x["values"][1:], x["values"].shape[1], 0.0, axis=1)
    ins["times"][1:] = np.concatenate([x["times"][1:], x["times"][1:, -1:]], 1)
    np.testing.assert_allclose(model.predict(ins, verbose=0), base, rtol=0, atol=1e-6)
    # and an observed value does change it (the test could fail)
    moved = dict(x, values=x["values"].copy())
    k = int(np.argmax(x["mask"][0, :, 2]))
    moved["values"][0, k, 2] += 1.0
    assert np.abs(model.predict(moved, verbose=0)[0] - base[0]).max() > 1e-4


def _numpy_knots(s):
    """X_k by numpy: time since the first observation, each channel by np.interp over its own
    observations (flat outside them, 0 if never observed), running observation counts; only the
    steps with an observation, in order."""
    out = []
    for i in range(len(s)):
        seen = s.mask[i].max(-1) > 0
        t, v, m = s.times[i][seen], s.values[i][seen], s.mask[i][seen]
        cols = [t - t[0]]
        for c in range(C):
            obs = m[:, c] > 0
            cols.append(np.interp(t, t[obs], v[obs, c]) if obs.any() else np.zeros_like(t))
        cols += list(np.cumsum(m, axis=0).T)
        out.append(np.stack(cols, -1))
    return out


def test_path_knots_against_numpy_interp():
    from odezoo.plugins.timeseries.model import compact, path_knots

    s = _batch(seed=3, n=6, t=9, drop=0.5)
    knots = path_knots(*compact(_inputs(s))).numpy()
    for i, ref in enumerate(_numpy_knots(s)):
        np.testing.assert_allclose(knots[i, : len(ref)], ref, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(knots[i, len(ref) :], np.broadcast_to(ref[-1], knots[i, len(ref) :].shape))


@pytest.mark.parametrize("interpolation", ["hermite", "linear"])
@pytest.mark.parametrize("solver", ["dopri5", "tsit5"])
def test_cde_with_a_constant_field_is_z0_plus_g_times_the_paths_increment(interpolation, solver):
    """With g(z) = G constant, z(end) = z(0) + G (X_end - X_0) whatever the path's shape."""
    model = _model("neural_cde", interpolation=interpolation, solver=solver, rtol=1e-6, atol=1e-6)
    layer = model.get_layer("neural_cde")
    layer.g3.kernel.assign(np.zeros(layer.g3.kernel.shape))
    rng = np.random.default_rng(0)
    layer.g3.bias.assign(rng.normal(size=layer.g3.bias.shape))
    s = _batch(seed=5, n=5, t=8, drop=0.4)
    z = keras.Model(model.inputs, layer.output).predict(_inputs(s), verbose=0)
    G = np.tanh(layer.g3.bias.numpy()).reshape(layer.units, layer.path_channels)
    w, b = layer.initial.kernel.numpy(), layer.initial.bias.numpy()
    for i, ref in enumerate(_numpy_knots(s)):
        expected = ref[0] @ w + b + G @ (ref[-1] - ref[0])
        np.testing.assert_allclose(z[i], expected, rtol=1e-4, atol=1e-4)


def _gru(cell, x, h):
    """Keras's GRUCell (reset_after=True) in numpy."""
    k, r, bias = cell.kernel.numpy(), cell.recurrent_kernel.numpy(), cell.bias.numpy()
    u = cell.units
    xi, hi = x @ k + bias[0], h @ r + bias[1]
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    zg, rg = sig(xi[:u] + hi[:u]), sig(xi[u : 2 * u] + hi[u : 2 * u])
    hh = np.tanh(xi[2 * u :] + rg * hi[2 * u :])
    return zg * h + (1 - zg) * hh


def test_ode_rnn_against_scipy_and_a_numpy_gru():
    model = _model("ode_rnn", rtol=1e-6, atol=1e-6)
    layer = model.get_layer("ode_rnn")
    s = _batch(seed=7, n=3, t=6, drop=0.4)
    h_model = keras.Model(model.inputs, layer.output).predict(_inputs(s), verbose=0)
    w1, b1 = layer.f_hidden.kernel.numpy(), layer.f_hidden.bias.numpy()
    w2, b2 = layer.f_out.kernel.numpy(), layer.f_out.bias.numpy()
    field = lambda t, h: np.tanh(h @ w1 + b1) @ w2 + b2  # noqa: E731
    for i in range(len(s)):
        h, tau = np.zeros(layer.units), None
        for k in range(s.lengths[i]):
            m = s.mask[i, k]
            if not m.any():
                continue
            t = float(s.times[i, k])
            if tau is not None:
                h = solve_ivp(field, (tau, t), h, rtol=1e-11, atol=1e-12).y[:, -1]
            h = _gru(layer.cell, np.concatenate([s.values[i, k] * m, m]), h)
            tau = t
        np.testing.assert_allclose(h_model[i], h, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "name, kw",
    [
        FAMILIES[0],
        FAMILIES[1],
        pytest.param("neural_cde", {"interpolation": "linear", "solver": "tsit5"}, marks=pytest.mark.slow),
    ],
    ids=["ode_rnn", "ncde_hermite", "ncde_linear_tsit5"],
)
def test_gradient_against_central_differences(name, kw):
    model = _model(name, rtol=1e-6, atol=1e-6, **kw)
    if name == "neural_cde":  # its hidden ReLUs make the loss kinked at the differences' scale: smooth them
        for dense in (model.get_layer(name).g1, model.get_layer(name).g2):
            dense.activation = keras.activations.tanh
    s = _batch(seed=2)
    x = {k: tf.constant(v) for k, v in _inputs(s).items()}
    y = tf.constant([0, 1, 2, 0])
    loss_fn = keras.losses.SparseCategoricalCrossentropy()

    @tf.function
    def loss_and_grad():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        return loss, tape.gradient(loss, model.trainable_variables)

    _, grads = loss_and_grad()
    rng = np.random.default_rng(0)
    direction = [rng.normal(size=v.shape) for v in model.trainable_variables]
    norm = np.sqrt(sum(np.sum(d * d) for d in direction))
    direction = [(d / norm).astype("float32") for d in direction]  # a unit step in weight space
    analytic = sum(float(np.sum(g.numpy() * d)) for g, d in zip(grads, direction))
    start = [v.numpy() for v in model.trainable_variables]
    eps, sides = 1e-2, []
    for sign in (1, -1):
        for v, w, d in zip(model.trainable_variables, start, direction):
            v.assign(w + sign * eps * d)
        sides.append(float(loss_and_grad()[0]))
    for v, w in zip(model.trainable_variables, start):
        v.assign(w)
    numeric = (sides[0] - sides[1]) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=2e-3, abs=1e-4)


# fit: slow (5-30 s each); the default suite saves and loads every family untrained (below)
@pytest.mark.slow
@pytest.mark.parametrize("name, kw", FAMILIES, ids=IDS)
def test_fit_logs_nfe_and_the_trained_model_round_trips_through_save(name, kw, tmp_path):
    model = _model(name, **kw)
    s = _batch(seed=4, n=8)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert not model.jit_compile  # the solving layers keep the step out of XLA
    history = model.fit(_inputs(s), np.arange(8) % 3, batch_size=4, epochs=1, verbose=0)
    assert history.history["nfe_forward"][-1] >= 8  # an adaptive solve: 2 + 6 per step at least
    _round_trip(model, name, s, tmp_path)


@pytest.mark.parametrize("name, kw", FAMILIES, ids=IDS)
def test_every_family_round_trips_through_save(name, kw, tmp_path):
    model = _model(name, **kw)
    _round_trip(model, name, _batch(seed=4, n=8), tmp_path)
    assert keras.models.load_model(str(tmp_path / "m.keras")).get_layer(name).get_config() == (
        model.get_layer(name).get_config()
    )


def _round_trip(model, name, s, tmp_path):
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(_inputs(s), verbose=0), model.predict(_inputs(s), verbose=0), atol=1e-6)
    assert loaded.get_layer(name).get_config()["solver"] == "dopri5"


def test_regressor_head():
    model = _model("neural_cde", num_classes=None, outputs=2)
    out = model.predict(_inputs(_batch()), verbose=0)
    assert out.shape == (4, 2)


@pytest.mark.parametrize(
    "name, kw, message",
    [
        ("ode_rnn", {"gradient": "adjoint"}, "gradient=.adjoint"),
        ("neural_cde", {"gradient": "checkpoint"}, "gradient=.checkpoint"),
        ("neural_cde", {"interpolation": "spline"}, "interpolation=.spline"),
        ("neural_cde", {"solver": "bdf"}, "solver=.bdf"),
        ("neural_cde", {"outputs": 2}, "exactly one of num_classes"),
        ("ode_rnn", {"input_channels": 0}, "input_channels=0"),
    ],
)
def test_bad_options_are_named(name, kw, message):
    with pytest.raises(ValueError, match=message):
        odezoo.build(name, **kw)


@pytest.mark.slow  # 10 s
def test_odezoo_train_on_a_series_dataset_writes_a_remeasurable_entry(tmp_path):
    if data.sktime_data_dir() is None:
        pytest.skip("sktime is not installed (pip install 'odezoo[timeseries]')")
    from odezoo import _train

    entry, model = _train.train(
        "ode_rnn",
        dataset="japanese_vowels_drop50",
        epochs=1,
        batch_size=64,
        lr=1e-2,
        out=str(tmp_path),
        config={"units": 4, "field_units": 4},
        verbose=0,
        return_model=True,
    )
    assert entry["config"]["input_channels"] == 12 and entry["config"]["num_classes"] == 9
    assert entry["command"].startswith("odezoo train ode_rnn --dataset japanese_vowels_drop50 --epochs 1")
    assert entry["metrics"]["nfe_forward_per_step"] >= 8
    assert _train.evaluate(model, "series_classifier", "japanese_vowels_drop50") == {
        "accuracy": entry["metrics"]["accuracy"]
    }
    with pytest.raises(LookupError, match="Valid dataset for series_classifier 'ode_rnn's: .*japanese_vowels"):
        _train.train("ode_rnn", dataset="japanese_vowels_drop0", epochs=1, out=str(tmp_path / "x"))


@pytest.mark.parametrize("name", ["ode_rnn", "neural_cde"])
def test_a_sample_with_no_observations_is_an_error_not_a_prediction(name):
    model = _model(name)
    x = _inputs(_batch())
    x["mask"][2] = 0.0  # what a Series refuses, given as a raw dict
    with pytest.raises(tf.errors.InvalidArgumentError, match="a sample has no observations"):
        model.predict(x, verbose=0)


# ----------------------------------------------------------------------------- latent ODE
def _latent(**kw):
    keras.utils.set_random_seed(3)
    return odezoo.build("latent_ode", **{**dict(input_channels=C, latent_dim=3, units=5, field_units=6), **kw})


def test_latent_decoder_with_a_constant_field_is_a_straight_line_in_each_rows_own_times():
    model = _latent(rtol=1e-6, atol=1e-6)
    dec = model.trajectory
    dec.f_out.kernel.assign(np.zeros(dec.f_out.kernel.shape))
    b = np.array([0.5, -1.0, 2.0], "float32")
    dec.f_out.bias.assign(b)
    s = _batch(seed=8)
    z0 = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    lengths = np.array([7, 3, 5, 4])
    z = dec(tf.constant(z0), tf.constant(s.times), tf.constant(lengths)).numpy()
    for i in range(4):
        t = s.times[i] - s.times[i, 0]
        t = np.where(np.arange(len(t)) < lengths[i], t, t[lengths[i] - 1])  # at rest past its length
        np.testing.assert_allclose(z[i], z0[i] + t[:, None] * b, rtol=1e-5, atol=1e-5)


def test_latent_encoder_reads_each_row_backwards_in_time():
    model = _latent()
    s = _batch(seed=9, drop=0.0)  # complete rows: compaction is the identity
    mean, log_var, _ = model.encode(_inputs(s))
    rev = {k: np.zeros_like(v) for k, v in _inputs(s).items()}
    for i, n in enumerate(s.lengths):
        rev["values"][i, :n] = s.values[i, :n][::-1]
        rev["mask"][i, :n] = s.mask[i, :n][::-1]
        rev["times"][i] = -s.times[i, n - 1]
        rev["times"][i, :n] = -s.times[i, :n][::-1]
    stats = model.to_latent(model.encoder(rev)).numpy()
    np.testing.assert_allclose(mean.numpy(), stats[:, :3], atol=1e-5)
    np.testing.assert_allclose(log_var.numpy(), stats[:, 3:], atol=1e-5)


def test_latent_elbo_against_scipy_and_masks():
    from scipy.stats import norm

    model = _latent(obs_std=0.3)
    model.compile(optimizer="adam")
    s = _batch(seed=10)
    logs = model.test_on_batch(_inputs(s), return_dict=True)  # z0 = the mean of q(z0)
    mean, log_var, (values, _, mask, _) = model.encode(_inputs(s))
    x_hat = model(_inputs(s)).numpy()
    m = mask.numpy() > 0
    logpdf = norm.logpdf(values.numpy(), loc=x_hat, scale=0.3)[m]
    mu, lv = mean.numpy().astype(float), log_var.numpy().astype(float)
    kl = 0.5 * np.sum(np.exp(lv) + mu**2 - 1 - lv, axis=1)
    assert logs["nll"] == pytest.approx(-logpdf.mean(), rel=1e-4)
    assert logs["kl"] == pytest.approx(kl.mean(), rel=1e-4)
    assert logs["loss"] == pytest.approx(-logpdf.sum() / 4 + kl.mean(), rel=1e-4)
    junk = _inputs(s)
    junk["values"] = np.where(junk["mask"] > 0, junk["values"], np.nan)
    assert model.test_on_batch(junk, return_dict=True)["loss"] == pytest.approx(logs["loss"], rel=1e-6)


def test_latent_extrapolate_at_the_observed_times_is_the_reconstruction(tmp_path):
    model = _latent()
    s = _batch(seed=11, drop=0.0)
    x = _inputs(s)
    rec = model.predict(x, verbose=0)
    full = s.subset([0])  # a complete row of full length: extrapolating at its own later times
    out = model.extrapolate(_inputs(full), full.times[0, 1:]).numpy()
    np.testing.assert_allclose(out[0], rec[0, 1:], atol=1e-5)
    assert model.sample(np.linspace(0.0, 2.0, 5), n=3).shape == (3, 5, C)
    path = str(tmp_path / "latent.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), rec, atol=1e-6)


@pytest.mark.parametrize("fraction", [0.5, 0.3])
def test_latent_encode_fraction_encodes_each_rows_early_observations_only(fraction, tmp_path):
    model = _latent(encode_fraction=fraction)
    s = _batch(seed=12, drop=0.3)
    x = _inputs(s)
    early = x["mask"].copy()  # numpy: each row's observed times, its cutoff, the mask beyond it cleared
    for i in range(len(s)):
        seen = s.times[i][(x["mask"][i].sum(axis=1) > 0) & (np.arange(s.times.shape[1]) < s.lengths[i])]
        early[i][s.times[i] > seen[0] + fraction * (seen[-1] - seen[0])] = 0.0
    assert 0 < early.sum() < x["mask"].sum()
    got = model.encode(x, fraction)
    want = model.encode(dict(x, mask=early))
    for a, b in zip(got[:2], want[:2]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    full = model.encode(x)
    assert not np.allclose(got[0].numpy(), full[0].numpy(), atol=1e-4)  # it did see less
    np.testing.assert_allclose(model.encode(x, 1.0)[0].numpy(), full[0].numpy(), atol=1e-6)
    path = str(tmp_path / "latent.keras")
    model.save(path)
    assert keras.models.load_model(path).encode_fraction == fraction
    # the likelihood still counts every observed entry: the (deterministic) test loss moves with a late value
    late = dict(x, values=np.where(early < x["mask"], x["values"] + 1.0, x["values"]))
    model.compile(optimizer="adam")
    a, b = model.test_on_batch(x, return_dict=True), model.test_on_batch(late, return_dict=True)
    assert b["nll"] > a["nll"] and b["kl"] == pytest.approx(a["kl"], rel=1e-6)
    with pytest.raises(ValueError, match="encode_fraction.*0, 1"):
        _latent(encode_fraction=0.0)


@pytest.mark.slow
def test_latent_ode_learns_spirals():
    train = data.load_series("spirals", "train").subset(range(200))
    model = odezoo.build("latent_ode")
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(train.inputs(), batch_size=50, epochs=5, verbose=0).history
    assert history["nll"][-1] < 0.8 * history["nll"][0]


class _ArcOracle:
    """A stand-in generative model: ``extrapolate`` returns the clean spiral arcs (or zeros) at the
    times asked, and records what it was shown."""

    def __init__(self, zeros=False, rows=slice(None)):
        self.zeros, self.shown = zeros, None
        self.arcs, self.grid, _ = data.spiral_arcs(200, seed=1)
        self.arcs, self.grid = self.arcs[rows], self.grid[rows]  # the rows it will be asked about

    def extrapolate(self, inputs, times):
        self.shown = inputs
        index = np.searchsorted(self.grid[0], times)
        assert np.allclose(self.grid[0][index], times)  # asked at grid times only
        out = np.take_along_axis(self.arcs, index[..., None], 1)
        return np.zeros_like(out) if self.zeros else out


def test_extrapolation_errors_against_a_loop_over_rows_and_times():
    from odezoo import _train

    oracle = _ArcOracle()
    exact = _train.extrapolation_errors(oracle)
    assert exact == {"interpolation_mse": 0.0, "extrapolation_mse": 0.0}
    test = data.load_series("spirals", "test")
    shown = oracle.shown
    assert np.all(shown["mask"][test.times >= 3.0] == 0)  # nothing from the split on is shown
    assert np.array_equal(shown["mask"][test.times < 3.0], test.mask[test.times < 3.0])
    # a model that always says 0: the errors are the arcs' mean squares over each time set
    zero = _train.extrapolation_errors(_ArcOracle(zeros=True))
    early, late = [], []
    for i in range(len(test)):
        for j, t in enumerate(oracle.grid[i]):
            if t > test.times[i, 0]:
                (late if t >= 3.0 else early).append(np.mean(oracle.arcs[i, j] ** 2))
    assert zero["interpolation_mse"] == pytest.approx(np.mean(early), rel=1e-6)
    assert zero["extrapolation_mse"] == pytest.approx(np.mean(late), rel=1e-6)
    with pytest.raises(odezoo.UnknownNameError, match="spirals"):
        _train.extrapolation_errors(oracle, "japanese_vowels")


def test_odezoo_train_refuses_a_latent_ode_on_a_dataset_it_cannot_measure(tmp_path):
    from odezoo import _train

    with pytest.raises(odezoo.UnknownNameError, match="japanese_vowels.*spirals"):
        _train.train("latent_ode", dataset="japanese_vowels", epochs=1, out=str(tmp_path / "zoo"))
    assert not (tmp_path / "zoo").exists() or not list((tmp_path / "zoo").iterdir())  # nothing half-written


@pytest.mark.slow
def test_odezoo_train_trains_the_latent_ode_and_its_entry_is_re_measured(tmp_path):
    from odezoo import _train, _weights

    config = dict(latent_dim=2, units=4, field_units=4)
    entry, model = _train.train(
        "latent_ode", dataset="spirals", epochs=1, batch_size=500, lr=1e-2, config=config, out=str(tmp_path),
        tag="t", verbose=0, return_model=True,
    )  # fmt: skip
    metrics = entry["metrics"]
    assert set(metrics) == {"interpolation_mse", "extrapolation_mse", "nfe_forward_per_step"}
    assert metrics["nfe_forward_per_step"] > 0
    assert _train.extrapolation_errors(model) == pytest.approx(
        {k: metrics[k] for k in ("interpolation_mse", "extrapolation_mse")}, rel=1e-6
    )
    assert entry["config"]["input_channels"] == 2 and entry["config"]["latent_dim"] == 2
    loaded = _weights.read_manifest(str(tmp_path))["latent_ode.t"]
    assert loaded["metrics"] == metrics
    again = _train.measure_step_nfe(model, "spirals", 500, steps=2)
    assert set(again) == {"nfe_forward_per_step"} and again["nfe_forward_per_step"] > 0


@pytest.mark.parametrize(
    "name",
    ["ode_rnn", pytest.param("neural_cde", marks=pytest.mark.slow), pytest.param("latent_ode", marks=pytest.mark.slow)],
)
def test_a_failed_solve_applies_no_update_and_raises(name):
    kw = dict(input_channels=C, units=4, field_units=4, rtol=1e-6, atol=1e-6, max_steps=1)  # a budget of one step
    model = odezoo.build(name, **kw, **({} if name == "latent_ode" else {"num_classes": 3}))
    loss = None if name == "latent_ode" else "sparse_categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    before = [np.array(w) for w in model.trainable_weights]
    args = (_inputs(_batch()),) if name == "latent_ode" else (_inputs(_batch()), np.arange(4) % 3)
    with pytest.raises(odezoo.SolverError):
        model.train_on_batch(*args)
    assert all(np.array_equal(a, np.array(b)) for a, b in zip(before, model.trainable_weights))


def test_plot_extrapolation_writes_a_png_and_names_bad_rows(tmp_path):
    from odezoo.plotting import plot_extrapolation

    test = data.load_series("spirals", "test")
    oracle = _ArcOracle(rows=slice(0, 6))
    arcs, grid, _ = data.spiral_arcs(200, seed=1)
    path = plot_extrapolation(oracle, test, str(tmp_path / "x.png"), split=3.0, truth=(grid[0], arcs))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    shown = oracle.shown["mask"].sum(axis=2) > 0
    assert np.array_equal(shown, test.times[:6] < 3.0)  # the first six rows, each up to the split
    with pytest.raises(ValueError, match=r"rows=\[200\]"):
        plot_extrapolation(oracle, test, str(tmp_path / "y.png"), split=3.0, rows=[200])
    assert not (tmp_path / "y.png").exists()
