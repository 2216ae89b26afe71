"""Issue 12, item 7: no silently wrong numbers from the ODE layer.

A failed solve inside training applies no update and every Keras entry point
raises SolverError; numeric solver options must be finite and positive;
fixed-grid solves report non-finite states like dopri5; an out-of-order time
grid is its own error; ODEBlock(solver="bdf") agrees with scipy on Robertson.
"""

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import odezoo  # noqa: E402
from odezoo import ode  # noqa: E402
from odezoo.ode import status as ode_status  # noqa: E402
from odezoo.ode import DormandPrince  # noqa: E402

F64 = tf.float64
INF = math.inf


def _snapshot(model):
    return [np.array(w.numpy(), copy=True) for w in model.trainable_weights]


def _assert_unchanged(model, before, iterations):
    for a, w in zip(before, model.trainable_weights):
        np.testing.assert_array_equal(a, w.numpy())  # bitwise: NaN where NaN, nothing moved
    assert int(model.optimizer.iterations.numpy()) == iterations


def _entry_points(
    model, x, y, fail, names=("train_on_batch", "fit", "test_on_batch", "evaluate", "predict_on_batch", "predict")
):
    """Keras entry points on a batch whose solve fails: SolverError each time, and no update."""
    before = _snapshot(model)
    iterations = int(model.optimizer.iterations.numpy())
    calls = {
        "train_on_batch": lambda: model.train_on_batch(x, y),
        "fit": lambda: model.fit(x, y, batch_size=len(x), epochs=1, verbose=0),
        "test_on_batch": lambda: model.test_on_batch(x, y),
        "evaluate": lambda: model.evaluate(x, y, batch_size=len(x), verbose=0),
        "predict_on_batch": lambda: model.predict_on_batch(x),
        "predict": lambda: model.predict(x, batch_size=len(x), verbose=0),
    }
    for name in names:
        with pytest.raises(odezoo.SolverError, match=fail):
            calls[name]()
        _assert_unchanged(model, before, iterations)


@pytest.mark.slow  # ~2 CPU minutes: three XLA compiles of dopri5 with its adjoint
def test_odenet_failed_solve_applies_no_update_and_every_entry_point_raises():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 17, (4, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 4)
    model = odezoo.build("odenet", input_shape=(8, 8, 1), channels=8, max_steps=1, rtol=1e-9, atol=1e-9)
    model.compile("adam", "sparse_categorical_crossentropy", jit_compile=True)
    _entry_points(model, x, y, fail=r"status 1.*max_steps=1")


@pytest.mark.parametrize(
    "names",
    [
        ("train_on_batch", "fit"),  # one compiled train step: the default suite's share
        pytest.param(("test_on_batch", "evaluate", "predict_on_batch", "predict"), marks=pytest.mark.slow),
    ],
)
def test_rknet_non_finite_state_is_a_solver_error_and_a_good_batch_still_trains(names):
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 17, (4, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 4)
    model = odezoo.build("rknet", input_shape=(8, 8, 1), channels=8, num_steps=2)
    model.compile("sgd", "sparse_categorical_crossentropy", jit_compile=True)
    before = _snapshot(model)
    model.train_on_batch(x, y)  # the gate lets a good batch through
    assert int(model.optimizer.iterations.numpy()) == 1
    assert any(not np.array_equal(a, w.numpy()) for a, w in zip(before, model.trainable_weights))
    bad = x.copy()
    bad[0, 0, 0, 0] = np.inf  # the fixed-grid state goes non-finite: status 2, as dopri5 reports it
    _entry_points(model, bad, y, fail=r"'rk4' failed: status 2", names=names)


@pytest.mark.slow  # ~3 CPU minutes: three XLA compiles of the flow's solves
def test_ffjord_failed_solve_applies_no_update_and_every_entry_point_raises():
    x = odezoo.data.toy_density("8gaussians", 16, seed=0)
    flow = odezoo.build("ffjord", data_dim=2, hidden=(8,), max_steps=1, rtol=1e-9, atol=1e-9, seed=0)
    flow.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)
    _entry_points(flow, x, None, fail=r"FFJORD forward solve.*status 1")


# --------------------------------------------------------------------------- options
_BAD_NUMBERS = [INF, -INF, math.nan, 0.0, -1.0]


@pytest.mark.parametrize("value", _BAD_NUMBERS)
@pytest.mark.parametrize("arg", ["rtol", "atol", "first_step", "step_size"])
def test_odeblock_and_odeint_refuse_non_finite_or_non_positive_options(arg, value):
    kw = {arg: value}
    if arg == "step_size":
        kw["solver"] = "rk4"
    with pytest.raises(ValueError, match=rf"Received: {arg}={value!r}"):
        odezoo.ODEBlock(keras.layers.Dense(2), **kw)
    with pytest.raises(ValueError, match=rf"Received: {arg}={value!r}"):
        odezoo.odeint(lambda t, y: -y, [1.0], [0.0, 10.0], **kw)


def test_the_reported_rtol_inf_is_refused():
    with pytest.raises(ValueError, match=r"Received: rtol=inf.*finite positive"):
        odezoo.odeint(lambda t, y: -y, [1.0], [0.0, 10.0], rtol=INF)


def test_settable_block_options_are_checked_too():
    block = odezoo.ODEBlock(keras.layers.Dense(2))
    for arg in ("rtol", "atol", "first_step"):
        old = getattr(block, arg)
        with pytest.raises(ValueError, match=rf"Received: {arg}=inf"):
            setattr(block, arg, INF)
        assert getattr(block, arg) == old  # a refused value is not kept
    block.num_steps, block.solver = 4, "rk4"
    with pytest.raises(ValueError, match="num_steps"):
        block.num_steps = INF
    assert block.num_steps == 4


def test_an_unknown_solver_name_set_on_a_block_is_refused_and_not_kept():
    # the unknown name is a LookupError, not a ValueError: it used to stay set on the block
    block = odezoo.ODEBlock(keras.layers.Dense(2))
    with pytest.raises(odezoo.UnknownNameError, match="'dopri55'"):
        block.solver = "dopri55"
    assert block.solver == "dopri5" and block.get_config()["solver"] == "dopri5"


@pytest.mark.parametrize(
    "arg", ["rtol", "atol", "adjoint_rtol", "adjoint_atol", "first_step_size", "safety", "ifactor", "dfactor"]
)
def test_dormand_prince_refuses_non_finite_options(arg):
    with pytest.raises(ValueError, match=rf"Received: {arg}=inf"):
        DormandPrince(**{arg: INF})
    with pytest.raises(ValueError, match=arg):
        DormandPrince(**{arg: -1.0})


@pytest.mark.parametrize("arg", ["rtol", "atol"])
def test_flow_refuses_non_finite_tolerances(arg):
    flow = odezoo.build("ffjord", data_dim=2, hidden=(4,))
    with pytest.raises(ValueError, match=rf"Received: {arg}=inf"):
        setattr(flow, arg, INF)
    with pytest.raises(ValueError, match=rf"Received: {arg}=nan"):
        odezoo.build("ffjord", data_dim=2, hidden=(4,), **{arg: math.nan})


# --------------------------------------------------------------------------- fixed grids, time grids
@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_fixed_grid_non_finite_state_raises_like_dopri5(solver):
    f = lambda t, y: tf.where(t > 0.5, tf.constant(np.nan, F64), -y)  # noqa: E731
    for s, kw in ((solver, dict(num_steps=8)), ("dopri5", {})):
        with pytest.raises(odezoo.SolverError, match=rf"{s!r} failed: status 2 \(NaN or Inf"):
            odezoo.odeint(f, tf.constant([1.0], F64), tf.constant([0.0, 1.0], F64), solver=s, **kw)


def test_fixed_grid_failure_inside_a_compiled_function_sets_the_block_status():
    class Blowup(keras.layers.Layer):
        def call(self, t, y):
            return y * 1e30

    block = odezoo.ODEBlock(Blowup(), solver="euler", num_steps=20)

    @tf.function(jit_compile=True)
    def run(x):
        return block(x)

    assert np.all(np.isnan(run(tf.ones((2, 3))).numpy()))
    assert block.solver_status.numpy()[0] == ode_status.NONFINITE
    with pytest.raises(odezoo.SolverError, match="status 2"):
        block.check_status()


@pytest.mark.parametrize("t", [[0.0, 1.0, 0.5], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [0.0, math.nan]])
@pytest.mark.parametrize("solver", ["dopri5", "rk4"])
def test_out_of_order_static_times_are_a_value_error(t, solver):
    kw = dict(num_steps=4) if solver == "rk4" else {}
    with pytest.raises(ValueError, match=r"Invalid value for `t`.*strictly increasing or strictly decreasing"):
        odezoo.odeint(lambda tt, y: -y, tf.constant([1.0], F64), tf.constant(t, F64), solver=solver, **kw)


def test_odeblock_refuses_repeated_solution_times():
    with pytest.raises(ValueError, match="solution_times.*strictly monotone"):
        odezoo.ODEBlock(keras.layers.Dense(2), solution_times=[0.5, 0.5, 1.0])


@pytest.mark.parametrize("solver", ["dopri5", "tfp_dopri5", "bdf"])
def test_out_of_order_run_time_times_have_their_own_status(solver):
    guard = ode.TFPGuard(tf.Variable([0, 0, 0], dtype=tf.int32), 0)

    @tf.function(jit_compile=True, input_signature=[tf.TensorSpec([2], F64)])
    def run(t):
        return ode.solve(
            lambda tt, y: -y,
            tf.constant([[1.0]], F64),
            tf.constant(0.0, F64),
            t,
            solver=solver,
            guard=guard,
            batch_axis=0,
        )

    ys, info = run(tf.constant([1.0, 0.5], F64))
    assert np.all(np.isnan(ys.numpy())) and int(info["reason"]) == ode_status.UNORDERED
    ys, info = run(tf.constant([0.5, 1.0], F64))
    np.testing.assert_allclose(ys.numpy()[:, 0, 0], np.exp(-np.array([0.5, 1.0])), rtol=1e-2)
    assert int(info["reason"]) == ode_status.OK
    with pytest.raises(odezoo.SolverError, match=r"status 4 \(the solution times are out of order"):
        ode.raise_for_status(
            info["reason"] * 0 + ode_status.UNORDERED, rtol=1e-7, atol=1e-9, time_reached=0.0, num_steps=0
        )


def test_run_time_out_of_order_reason_from_integrate():
    @tf.function(jit_compile=True)
    def run(t):
        return ode.integrate(
            lambda tt, y: [-y[0]], tf.constant(0.0, F64), [tf.constant([1.0], F64)], t, rtol=1e-6, atol=1e-9
        )[1]["reason"]

    assert int(run(tf.constant([1.0, 0.5], F64))) == ode_status.UNORDERED
    assert int(run(tf.constant([0.5, 1.0], F64))) == ode_status.OK


def test_partitioned_scheme_is_refused_as_a_solver():
    with pytest.raises(ValueError, match=r"Received: solver='reversible'.*cannot solve dy/dt = f\(t, y\)"):
        odezoo.ODEBlock(keras.layers.Dense(2), solver="reversible", num_steps=4)


@pytest.mark.slow
def test_under_a_strategy_a_failure_on_the_second_replica_applies_no_update(tmp_path):
    """Two replicas, an Inf only in the second one's half of the batch (issue 12).

    Before the replicas agreed on the status, the first replica's report won
    (ONLY_FIRST_REPLICA): the step updated and nothing was raised.
    """
    import json
    import subprocess
    import sys

    result = tmp_path / "gate.json"
    worker = os.path.join(os.path.dirname(__file__), "gate_worker.py")
    out = subprocess.run(
        [sys.executable, worker, str(result), "rknet", "odenet", "ffjord"], capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(result.read_text())
    for name, solver in (("rknet", "rk4"), ("odenet", "dopri5"), ("ffjord", "dopri5")):
        r = results[name]
        assert r["good"] == {"iterations": 1, "weights_moved": True}, (name, r)
        assert r["raised"] is not None and f"'{solver}' failed: status 2" in r["raised"], (name, r)
        assert r["iterations"] == 1 and r["weights_kept"] and r["optimizer_kept"], (name, r)
    # the flow records no time reached: its message says nothing rather than "t=nan after -1 steps"
    assert "time reached" not in results["ffjord"]["raised"], results["ffjord"]


@pytest.mark.parametrize("h", [float("inf"), float("nan"), 0.0, -1.0])
def test_a_network_blocks_step_size_h_must_be_finite_and_positive(h):
    with pytest.raises(ValueError, match=r"Received: h=(inf|nan|0\.0|-1\.0)\. Allowed: a finite positive float"):
        odezoo.build("resnet", depth=8, input_shape=(8, 8, 1), num_classes=10, h=h)
