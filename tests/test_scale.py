"""Issue 7: tf.distribute strategies, XLA for every model's train step, mixed precision."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import odezoo
from odezoo import _distribute, _registry, _train

WORKER = os.path.join(os.path.dirname(__file__), "scale_worker.py")


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.update(extra)
    return env


def _initial_weights(name, config, seed):
    import keras

    spec, _ = _registry.resolve_model(name)
    keras.utils.set_random_seed(seed)
    return odezoo.build(name, **_train.full_config(spec, name, "digits", config)).get_weights()


def _weights(npz, prefix):
    n = len([k for k in npz.files if k.startswith(prefix) and k[len(prefix) :].isdigit()])
    return [npz[f"{prefix}{i}"] for i in range(n)]


@pytest.mark.slow
def test_mirrored_training_equals_single_device(tmp_path):
    # Two logical CPUs; the same global batch of 256 trained one epoch by SGD, once on one
    # device and once mirrored. The replicas' per-replica mean losses differ from the global
    # mean only through odd batch splits (1437 = 5×256 + 157): a few 1e-3 of each update.
    result = tmp_path / "mirrored.npz"
    proc = subprocess.run(
        [sys.executable, WORKER, "mirrored", str(tmp_path), str(result)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    npz = np.load(result)
    single, mirrored = _weights(npz, "default_"), _weights(npz, "mirrored_")
    w0 = _initial_weights("resnet", {"depth": 8}, seed=3)
    assert len(single) == len(mirrored) == len(w0)
    checked = 0
    for a, b, w in zip(single, mirrored, w0):
        change = np.linalg.norm(a - w)
        if change < 1e-4:
            continue
        assert np.linalg.norm(a - b) < 0.02 * change, (np.linalg.norm(a - b), change)
        checked += 1
    assert checked > 30
    assert abs(float(npz["default_accuracy"]) - float(npz["mirrored_accuracy"])) <= 2 / 360
    manifest = json.loads((tmp_path / "mirrored" / "manifest.json").read_text())
    entry = manifest["entries"]["resnet.digits"]
    assert entry["strategy"] == "mirrored (2 replicas)"
    assert entry["config"]["synchronized_bn"] is True
    assert "--strategy mirrored" in entry["command"]


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.mark.slow
def test_multiworker_training_two_processes(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    try:
        for i in range(2):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
            procs.append(
                subprocess.Popen(
                    [sys.executable, WORKER, "multiworker", str(tmp_path / f"out{i}"), str(tmp_path / f"w{i}.npz")],
                    env=_env(TF_CONFIG=tf_config),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        outputs = [p.communicate(timeout=540)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    w0, w1 = (_weights(np.load(tmp_path / f"w{i}.npz"), "w_") for i in range(2))
    assert len(w0) == len(w1) > 30
    for a, b in zip(w0, w1):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # the chief (worker 0) alone wrote weights and manifest; its checkpoint was removed at the end
    entry = json.loads((tmp_path / "out0" / "manifest.json").read_text())["entries"]["resnet.digits"]
    chief = sorted(f for f in os.listdir(tmp_path / "out0") if not f.startswith("."))  # lock files are hidden
    assert chief == ["manifest.json", entry["file"]], chief
    assert not (tmp_path / "out1").exists()
    assert entry["strategy"] == "multiworker (2 replicas)"
    init = _initial_weights("resnet", {"depth": 8}, seed=3)
    assert sum(np.linalg.norm(a - w) > 1e-3 for a, w in zip(w0, init)) > 20  # it trained


def test_bad_strategy_precision_and_optimizer_are_clear_errors(tmp_path):
    for kwargs, word in (
        ({"strategy": "horovod"}, "mirrored"),
        ({"precision": "float16"}, "mixed_bfloat16"),
        ({"optimizer": "rmsprop"}, "sgd"),
    ):
        with pytest.raises(ValueError, match=word):
            _train.train("resnet", dataset="digits", epochs=1, out=str(tmp_path / "x"), **kwargs)
    with pytest.raises(ValueError, match="float32"):
        _train.train("ffjord", dataset="8gaussians", epochs=1, out=str(tmp_path / "x"), precision="mixed_float16")
    assert not (tmp_path / "x").exists()  # nothing written


def test_multiworker_without_tf_config_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(odezoo.OdezooError, match="TF_CONFIG"):
        _distribute.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(odezoo.OdezooError, match="TF_CONFIG is not valid"):
        _distribute.make_strategy("multiworker")


def test_chief_rules():
    class Resolver:
        def __init__(self, task_type, task_id, cluster):
            self.task_type, self.task_id, self._cluster = task_type, task_id, cluster

        def cluster_spec(self):
            return type("Spec", (), {"as_dict": lambda s: self._cluster})()

    class Strategy:
        def __init__(self, resolver):
            self.cluster_resolver = resolver

    workers = {"worker": ["a:1", "b:1"]}
    with_chief = {"chief": ["c:1"], "worker": ["a:1", "b:1"]}
    assert _distribute.is_chief(Strategy(Resolver("worker", 0, workers)))
    assert not _distribute.is_chief(Strategy(Resolver("worker", 1, workers)))
    assert not _distribute.is_chief(Strategy(Resolver("worker", 0, with_chief)))
    assert _distribute.is_chief(Strategy(Resolver("chief", 0, with_chief)))
    assert _distribute.is_chief(Strategy(None))


# --- XLA: every registered model's train step -------------------------------------------------

_SMALL = {
    "odenet": {"channels": 32},
    "rknet": {"channels": 32, "num_steps": 2},
    "ffjord": {"hidden": [16, 16], "rtol": 1e-3, "atol": 1e-3},
}


def _canonical_models():
    names = {}
    for name in odezoo.list_models():
        spec, _ = _registry.resolve_model(name)
        names.setdefault(spec.name, spec)
    return sorted(names.items())


# slow: about 10 s of XLA compilation per model; the default suite compiles each built-in's train
# step under XLA too (tests/test_families.py, test_odenet.py, test_flow.py)
@pytest.mark.slow
@pytest.mark.parametrize("name,spec", _canonical_models(), ids=[n for n, _ in _canonical_models()])
def test_every_registered_model_train_step_compiles_with_xla(name, spec):
    import keras

    from odezoo import _builder

    defaults = _builder.defaults_of(spec)
    config = dict(_SMALL.get(name, {}))
    if "compile" in defaults:
        # convolution fields solve under TensorFlow's graph executor on CPU by default
        # (docs/ode.md, "Compilation"); this test is about the XLA path, so it asks for it
        config.setdefault("compile", "xla")
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    if spec.kind.startswith("series_"):
        # the time-series families stay out of XLA on purpose (XLA's backprop through their loop over
        # observations preallocates every inner solve's max_steps stages: plugins/timeseries/model.py);
        # Keras must see that, and their train step must still run compiled, in TensorFlow's graph
        small = dict(input_channels=2, units=4, field_units=4)
        model = odezoo.build(name, **small, **({"latent_dim": 2} if spec.kind == "series_generative" else {}))
        x = {"values": rng.normal(size=(8, 5, 2)), "times": np.tile(np.arange(5.0), (8, 1)), "mask": np.ones((8, 5, 2))}
        if spec.kind == "series_classifier":
            model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
            batches = [(x, np.arange(8) % 9)]
        else:
            model.compile(optimizer="adam")
            batches = [(x,)]
        assert model.jit_compile is False
    elif spec.kind == "classifier":
        config.setdefault("input_shape", (8, 8, 1))
        if "depth" in defaults:
            config.setdefault("depth", 8)
        model = odezoo.build(name, **config)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=True)
        x = rng.integers(0, 17, (32, 8, 8, 1)).astype("float32")
        batches = [(x, np.arange(32) % 10)]
    else:
        config.setdefault("data_dim", 2)
        model = odezoo.build(name, **config)
        model.compile(optimizer="adam", jit_compile=True)
        batches = [(rng.normal(size=(32, 2)).astype("float32"),)]
    assert model.jit_compile is (
        not spec.kind.startswith("series_")
    )  # Keras falls back silently when it thinks XLA cannot run
    before = [np.array(w) for w in model.trainable_weights]
    losses = [
        float(np.ravel(list(model.train_on_batch(*batches[0], return_dict=True).values())[0])[0]) for _ in range(2)
    ]
    assert all(np.isfinite(losses)), losses
    changed = sum(not np.array_equal(a, np.array(b)) for a, b in zip(before, model.trainable_weights))
    assert changed == len(before)


# --- mixed precision -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,precision",
    [
        pytest.param("revnet", "mixed_float16", marks=pytest.mark.slow),
        pytest.param("odenet", "mixed_float16", marks=pytest.mark.slow),
        pytest.param("revnet", "mixed_bfloat16", marks=pytest.mark.slow),
        pytest.param("odenet", "mixed_bfloat16", marks=pytest.mark.slow),
    ],
)
def test_mixed_precision_trains_without_nan_and_solves_in_float32(name, precision):
    import keras

    config = {"depth": 8} if name == "revnet" else {"channels": 32}
    with _distribute.precision_policy(precision):
        keras.utils.set_random_seed(0)
        model = odezoo.build(name, input_shape=(8, 8, 1), **config)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=True)
    assert keras.config.dtype_policy().name == "float32"  # restored
    compute = {layer.name: layer.compute_dtype for layer in model._flatten_layers(include_self=False)}
    half = precision.split("_")[1]
    assert compute["stem_conv" if name == "revnet" else "stem_conv1"] == half
    if name == "odenet":
        block = model.get_layer("ode_block")
        assert block.compute_dtype == "float32"
        assert {sub.compute_dtype for sub in block.field._flatten_layers(include_self=True)} == {"float32"}
    if precision == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.output.dtype == "float32"
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 17, (64, 8, 8, 1)).astype("float32"), np.arange(64) % 10
    before = [np.array(w) for w in model.trainable_weights]
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    after = [np.array(w) for w in model.trainable_weights]
    assert all(w.dtype == np.float32 and np.all(np.isfinite(w)) for w in after)
    assert sum(not np.array_equal(a, b) for a, b in zip(before, after)) == len(before)


def test_mixed_precision_overflow_is_a_solver_error_not_a_hang():
    import keras

    with _distribute.precision_policy("mixed_float16"):
        keras.utils.set_random_seed(0)
        model = odezoo.build("odenet", input_shape=(8, 8, 1), channels=32)
    x = np.full((4, 8, 8, 1), 1e6, np.float32)  # beyond float16's largest value, 65504: inf in the stem
    with pytest.raises(odezoo.SolverError, match="NaN or Inf"):
        model.predict(x, verbose=0)


@pytest.mark.slow  # default suite under 10 min on 2 cores
def test_train_records_precision_and_optimizer(tmp_path):
    entry = _train.train(
        "resnet",
        dataset="digits",
        epochs=1,
        batch_size=256,
        lr=0.05,
        optimizer="sgd",
        precision="mixed_bfloat16",
        seed=0,
        out=str(tmp_path),
        config={"depth": 8},
        verbose=0,
    )
    assert entry["precision"] == "mixed_bfloat16" and entry["optimizer"] == "sgd"
    assert "--optimizer sgd" in entry["command"] and "--precision mixed_bfloat16" in entry["command"]
    assert entry["metrics"]["accuracy"] > 0.2  # chance is 0.1
    saved = json.loads((tmp_path / "manifest.json").read_text())["entries"]["resnet.digits"]
    assert saved["precision"] == "mixed_bfloat16"
