"""ODE-Net and RK-Net (plugins/ode/): shapes, parameters, compiled training, NFE logs, failures."""

import keras
import numpy as np
import pytest

import odezoo


def _data(shape, n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 17, size=(n,) + shape).astype("float32"), rng.integers(0, 10, size=n)


def test_registered_and_described():
    assert {"odenet", "rknet"} <= set(odezoo.list_models())
    d = odezoo.describe("odenet")
    assert d["kind"] == "classifier" and d["scheme"] == "dopri5" and d["order"] == 5
    assert odezoo.describe("rknet")["order"] == 4
    assert "Neural Ordinary Differential Equations" in d["paper"]


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3)])
def test_builds_at_shapes(shape):
    model = odezoo.build("odenet", input_shape=shape)
    assert model.output_shape == (None, 10)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    if shape == (28, 28, 1):
        assert 0.2e6 < trainable < 0.23e6  # the paper's ~0.22M
    with pytest.raises(ValueError, match="input_shape"):
        odezoo.build("odenet", input_shape=(8, 8))


def test_odenet_compiled_train_step_logs_nfe():
    x, y = _data((8, 8, 1))
    model = odezoo.build("odenet", input_shape=(8, 8, 1), channels=8)
    model.compile("adam", "sparse_categorical_crossentropy", jit_compile=True)
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    logs = history.history
    assert logs["nfe_forward"][0] > 0 and logs["nfe_backward"][0] > 0
    assert np.isfinite(logs["loss"][0])


@pytest.mark.slow
def test_fit_raises_solver_error_after_failed_batch():
    x, y = _data((8, 8, 1))
    model = odezoo.build("odenet", input_shape=(8, 8, 1), channels=8)
    block = model.get_layer("ode_block")
    block.max_steps = 1
    block.rtol = block.atol = 1e-9
    model.compile("adam", "sparse_categorical_crossentropy", jit_compile=True)
    with pytest.raises(odezoo.SolverError, match="max_steps=1"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)


def test_rknet_trains_with_backprop_nfe():
    x, y = _data((8, 8, 1))
    model = odezoo.build("rknet", input_shape=(8, 8, 1), channels=8, num_steps=2)
    assert model.get_layer("ode_block").solver == "rk4"
    model.compile("adam", "sparse_categorical_crossentropy", jit_compile=False)  # the solve is XLA anyway
    logs = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert logs["nfe_forward"][0] == 8 and logs["nfe_backward"][0] == 8  # backprop recomputes the solve
    # fit's validation pass hands evaluate() its CallbackList, which already holds the guard
    callbacks = keras.callbacks.CallbackList([])
    assert model._with_guard(callbacks) is callbacks


@pytest.mark.slow
def test_rknet_round_trips_with_validation(tmp_path):
    x, y = _data((8, 8, 1))
    model = odezoo.build("rknet", input_shape=(8, 8, 1), channels=8, num_steps=2)
    model.compile("adam", "sparse_categorical_crossentropy")
    logs = model.fit(x, y, batch_size=16, epochs=1, verbose=0, validation_data=(x, y)).history
    assert logs["val_nfe_forward"][0] == 8
    path = str(tmp_path / "rknet.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


_DISTRIBUTED = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np, odezoo
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = odezoo.build("odenet", input_shape=(8, 8, 1), channels=8)
    model.compile("adam", "sparse_categorical_crossentropy")
x = np.random.default_rng(0).integers(0, 17, (32, 8, 8, 1)).astype("float32")
logs = model.fit(x, np.arange(32) % 10, batch_size=16, epochs=1, verbose=0).history
block = model.get_layer("ode_block")
assert logs["nfe_forward"][0] == block.nfe_forward.numpy() > 0, logs
assert logs["nfe_backward"][0] == block.nfe_backward.numpy() > 0, logs
print("OK")
"""


@pytest.mark.slow
def test_nfe_counters_under_mirrored_strategy():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _DISTRIBUTED], capture_output=True, text=True, timeout=600)
    assert out.stdout.strip().endswith("OK"), out.stderr[-3000:]
