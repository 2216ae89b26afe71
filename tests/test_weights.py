"""Manifests, integrity, pretrained loading, `odezoo train` checkpoints, resume and atomic writes."""

import json
import os

import numpy as np
import pytest

import odezoo
from odezoo import _train, _weights
from odezoo._weights import ManifestError

TINY = "test_tiny_classifier"
CALLS = []


def _register_tiny():
    if TINY in odezoo.list_models():
        return

    @odezoo.register_model(TINY, kind="classifier", family=TINY, paper="(test)", ode_reading="(test)")
    def tiny(*, input_shape=(8, 8, 1), num_classes=10, width=8):
        import keras

        CALLS.append(width)
        inputs = keras.Input(input_shape)
        x = odezoo.nets.normalization_layer("auto", input_shape)(inputs)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(width, activation="relu")(x)
        return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x), name=TINY)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A user zoo with one trained tiny model (digits, 2 epochs)."""
    _register_tiny()
    out = str(tmp_path_factory.mktemp("zoo"))
    entry = _train.train(
        TINY,
        dataset="digits",
        epochs=2,
        batch_size=128,
        lr=1e-2,
        seed=0,
        out=out,
        config={"width": 16},
        default=True,
        verbose=0,
    )
    return out, entry


@pytest.fixture
def use_zoo(zoo, monkeypatch):
    monkeypatch.setenv("ODEZOO_WEIGHTS_DIR", zoo[0])
    return zoo


def test_train_writes_weights_and_a_valid_manifest_entry(zoo):
    out, entry = zoo
    entries = _weights.read_manifest(out)
    assert list(entries) == [f"{TINY}.digits"]
    saved = entries[f"{TINY}.digits"]
    assert saved == entry
    assert saved["sha256"] == _weights.sha256_of(os.path.join(out, saved["file"]))
    assert saved["config"]["width"] == 16 and saved["config"]["input_shape"] == [8, 8, 1]
    assert 0.5 < saved["metrics"]["accuracy"] <= 1.0
    assert {"tensorflow", "keras", "tensorflow_probability"} <= set(saved["versions"])
    assert saved["command"].startswith(f"odezoo train {TINY} --dataset digits --epochs 2")
    assert not [f for f in os.listdir(out) if "ckpt" in f or f.startswith(".tmp")]  # no leftovers


@pytest.mark.slow  # 24 s; tests/test_zoo.py re-measures every shipped entry
def test_pretrained_loads_default_tag_and_remeasures_its_metric(use_zoo):
    _, entry = use_zoo
    model = odezoo.build(TINY, pretrained=True)
    assert model.zoo_entry["tag"] == "digits"
    x, y = odezoo.data.load("digits", "test")
    acc = float(np.mean(np.argmax(model.predict(x, verbose=0), 1) == y))  # raw pixels in
    assert acc == pytest.approx(entry["metrics"]["accuracy"], abs=1e-9)
    assert odezoo.describe(TINY)["weights"] == ["digits"]


def test_unknown_tag_lists_available_ones(use_zoo):
    with pytest.raises(odezoo.UnknownNameError, match=r"'digitz'.*Did you mean 'digits'.*digits"):
        odezoo.build(TINY, pretrained="digitz")


def test_conflicting_config_is_a_value_error_naming_it(use_zoo):
    with pytest.raises(ValueError, match="width=32 but the tag has width=16"):
        odezoo.build(TINY, pretrained="digits", width=32)
    assert odezoo.build(TINY, pretrained="digits", width=16).zoo_entry["config"]["width"] == 16


def test_hash_mismatch_raises_before_the_model_is_built(zoo, tmp_path, monkeypatch):
    out, entry = zoo
    bad = tmp_path / "bad"
    bad.mkdir()
    data = open(os.path.join(out, entry["file"]), "rb").read()
    (bad / entry["file"]).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    (bad / "manifest.json").write_text(open(os.path.join(out, "manifest.json")).read())
    monkeypatch.setenv("ODEZOO_WEIGHTS_DIR", str(bad))
    CALLS.clear()
    with pytest.raises(odezoo.WeightsIntegrityError) as err:
        odezoo.build(TINY, pretrained=True)
    assert entry["sha256"] in str(err.value) and entry["file"] in str(err.value)
    assert CALLS == []  # nothing was built, so nothing was touched


def _manifest_with(tmp_path, **changes):
    entry = {
        "model": TINY,
        "tag": "x",
        "file": "w.weights.h5",
        "sha256": "0" * 64,
        "dataset": "digits",
        "split": "test",
        "metrics": {"accuracy": 0.9},
        "config": {},
        "versions": {},
        "device": "cpu",
        "strategy": "default",
        "seed": 0,
        "date": "2026-01-01",
        "default": True,
        "command": "odezoo train",
    }
    entry.update(changes)
    doc = {"format": _weights.FORMAT, "version": 1, "entries": {f"{TINY}.x": entry}}
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    return str(tmp_path)


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.weights.h5", "a/../../b.h5"])
def test_path_escape_is_refused(tmp_path, path):
    with pytest.raises(ManifestError, match=r"'file'.*leaves its folder"):
        _weights.read_manifest(_manifest_with(tmp_path, file=path))


def test_symlink_pointing_outward_is_refused(tmp_path):
    outside = tmp_path / "outside.h5"
    outside.write_bytes(b"x")
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    os.symlink(outside, zoo / "link.weights.h5")
    with pytest.raises(ManifestError, match="resolves outside"):
        _weights.read_manifest(_manifest_with(zoo, file="link.weights.h5"))


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("sha256", "xyz", "'sha256' is not 64"),
        ("seed", "zero", "field 'seed' has the wrong type"),
        ("metrics", {"acc": 1.0}, "bad item 'acc'"),
        ("default", "yes", "field 'default' has the wrong type"),
    ],
)
def test_malformed_entry_names_entry_and_field(tmp_path, field, value, message):
    with pytest.raises(ManifestError, match=rf"entry '{TINY}\.x'.*{message}|{message}"):
        _weights.read_manifest(_manifest_with(tmp_path, **{field: value}))


def test_missing_field_is_named(tmp_path):
    folder = _manifest_with(tmp_path)
    doc = json.loads((tmp_path / "manifest.json").read_text())
    del doc["entries"][f"{TINY}.x"]["command"]
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match=rf"entry '{TINY}\.x' lacks the field 'command'"):
        _weights.read_manifest(folder)


def test_failed_manifest_write_leaves_the_old_one_intact(zoo, tmp_path, monkeypatch):
    out, entry = zoo
    folder = tmp_path / "z"
    folder.mkdir()
    (folder / entry["file"]).write_bytes(open(os.path.join(out, entry["file"]), "rb").read())
    (folder / "manifest.json").write_text(open(os.path.join(out, "manifest.json")).read())
    before = (folder / "manifest.json").read_text()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(_weights.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        _weights.add_entry(str(folder), dict(entry, tag="other", default=False))
    assert (folder / "manifest.json").read_text() == before
    assert [f for f in os.listdir(folder) if f.startswith(".tmp")] == []


def test_train_rejects_bad_input(tmp_path):
    _register_tiny()
    with pytest.raises(odezoo.UnknownNameError, match="'cifar100'"):
        _train.train(TINY, dataset="cifar100", epochs=1, out=str(tmp_path))
    with pytest.raises(ValueError, match="epochs=0"):
        _train.train(TINY, dataset="digits", epochs=0, out=str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_cosine_schedule_is_recorded_and_reproducible_from_the_command(tmp_path):
    _register_tiny()
    entry = _train.train(
        TINY,
        dataset="digits",
        epochs=1,
        batch_size=256,
        lr=1e-2,
        seed=2,
        out=str(tmp_path),
        lr_schedule="cosine",
        clipnorm=0.5,
        verbose=0,
    )
    assert entry["lr_schedule"] == "cosine" and "--lr-schedule cosine" in entry["command"]
    assert entry["clipnorm"] == 0.5 and "--clipnorm 0.5" in entry["command"]
    assert _weights.read_manifest(str(tmp_path))[f"{TINY}.digits"]["clipnorm"] == 0.5  # the schema accepts it
    with pytest.raises(ValueError, match="lr_schedule='step'"):
        _train.train(TINY, dataset="digits", epochs=1, out=str(tmp_path), lr_schedule="step")


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_clipnorm_scales_the_steps_gradients_to_that_global_norm(name):
    """One step on two variables whose gradients have global norm 5 (3, 4 over the pair): clipped
    to 0.5 they are (0.3, 0.4), and the first step is -lr times them (SGD) or, for Adam, whose
    first step is -lr * sign(g) whatever the scale, unchanged by clipping (so the clip is on the
    gradient, not on the step)."""
    import keras

    for clipnorm in (None, 0.5):
        a, b = keras.Variable([0.0]), keras.Variable([0.0])
        opt = _train._optimizer(name, 0.1, clipnorm)
        opt.apply_gradients([(np.array([3.0], np.float32), a), (np.array([4.0], np.float32), b)])
        scale = 0.1 if clipnorm is not None else 1.0
        want = (-0.1 * 3.0 * scale, -0.1 * 4.0 * scale) if name == "sgd" else (-0.1, -0.1)
        np.testing.assert_allclose([a.numpy()[0], b.numpy()[0]], want, rtol=1e-4)
        assert opt.global_clipnorm == clipnorm


@pytest.mark.slow  # 20 s: trains ODE-Net twice (the default suite keeps to 10 minutes)
def test_an_ode_models_entry_records_its_last_steps_nfe_and_it_is_remeasured(tmp_path, monkeypatch):
    """ODE-Net's manifest metrics carry the field evaluations of the last training step; the
    record survives a run killed between its last checkpoint and its commit (resumed with no epoch
    left), and measure_step_nfe re-measures it at the committed weights."""
    out = str(tmp_path / "zoo")
    kwargs = dict(dataset="digits", epochs=1, batch_size=64, lr=2e-3, out=out, config={"channels": 8}, verbose=0)

    def killed(*args, **kw):
        raise KeyboardInterrupt("killed before the commit")

    with monkeypatch.context() as m:
        m.setattr(_train, "_commit_weights", killed)
        with pytest.raises(KeyboardInterrupt):
            _train.train("odenet", **kwargs)
    assert os.path.isdir(os.path.join(out, "odenet.digits.ckpt"))  # the last epoch's checkpoint is kept
    entry, model = _train.train("odenet", resume=True, return_model=True, **kwargs)
    metrics = _weights.read_manifest(out)["odenet.digits"]["metrics"]
    assert metrics == entry["metrics"]
    fwd, bwd = metrics["nfe_forward_per_step"], metrics["nfe_backward_per_step"]
    # dopri5 (FSAL): 6 evaluations per step plus 2 for the first step's size, forward and backward
    assert fwd >= 8 and bwd >= 8 and (fwd - 2) % 6 == 0 and (bwd - 2) % 6 == 0
    measured = _train.measure_step_nfe(model, "digits", 64, steps=4)
    assert measured["nfe_forward_per_step"] == pytest.approx(fwd, rel=0.35)
    assert measured["nfe_backward_per_step"] == pytest.approx(bwd, rel=0.35)


def test_manifest_refuses_a_negative_nfe_metric(tmp_path):
    entry = {"metrics": {"accuracy": 0.9, "nfe_forward_per_step": -6}}
    with pytest.raises(ManifestError, match="nfe_forward_per_step=-6 is negative"):
        _weights._check_metrics("odenet.x", entry["metrics"], "manifest.json")


def test_a_resumed_finished_run_reads_only_numbers_from_its_checkpoints_logs():
    """A checkpoint's state is untrusted input: a non-number where an evaluation count should be is dropped."""
    import types

    class Checkpoints:
        def latest(self, run):
            logs = {"nfe_forward_per_step": "20", "nfe_backward_per_step": 14, "loss": 0.1}
            return "epoch-000001", {"logs": logs}

    plan = types.SimpleNamespace(args={"epochs": 1}, fingerprint={})
    got = _train._fit(plan, None, Checkpoints(), None, initial_epoch=1, chief=True, verbose=0)
    assert got == {"nfe_backward_per_step": 14.0}


@pytest.mark.slow  # trains a small flow on the digits
def test_a_flows_entry_records_its_last_steps_nfe_and_measure_step_nfe_uses_the_flows_data(tmp_path):
    """A flow's step counts are re-measured on its own training data (the digits dequantised and
    flattened, no labels), not on the digits images a classifier would get."""
    config = {"hidden": [16], "rtol": 1e-3, "atol": 1e-3}
    entry, model = _train.train(
        "ffjord", dataset="digits", epochs=1, batch_size=256, out=str(tmp_path), config=config, verbose=0,
        return_model=True,
    )  # fmt: skip
    fwd, bwd = entry["metrics"]["nfe_forward_per_step"], entry["metrics"]["nfe_backward_per_step"]
    assert fwd >= 8 and bwd >= 8 and (fwd - 2) % 6 == 0 and (bwd - 2) % 6 == 0  # dopri5 with FSAL
    measured = _train.measure_step_nfe(model, "digits", 256, steps=2)
    assert set(measured) == {"nfe_forward_per_step", "nfe_backward_per_step"}
    assert measured["nfe_forward_per_step"] == pytest.approx(fwd, rel=0.35)
    assert measured["nfe_backward_per_step"] == pytest.approx(bwd, rel=0.35)
