"""Every shipped weight: its hash verifies and its manifest metric is re-measured."""

import math
import os

import pytest

import odezoo
from odezoo import _train, _weights

SHIPPED = _weights.read_manifest(_weights.shipped_dir())


def test_shipped_manifest_is_valid_and_complete():
    for key, entry in SHIPPED.items():
        path = _weights.resolve_file(key, entry["file"], _weights.shipped_dir())
        assert _weights.sha256_of(path) == entry["sha256"], key
        assert entry["command"].startswith(f"odezoo train {entry['model']} --dataset {entry['dataset']}")
        assert entry["split"] == "test" and entry["metrics"]
    defaults = {}
    for entry in SHIPPED.values():
        defaults.setdefault(entry["model"], []).append(entry["default"])
    assert all(sum(flags) == 1 for flags in defaults.values()), defaults  # one default tag per model
    files = {e["file"] for e in SHIPPED.values()}
    on_disk = {f for f in os.listdir(_weights.shipped_dir()) if f.endswith(".weights.h5")}
    assert on_disk == files  # no stray or missing weight files


# Slow, to keep the default suite under its 10 minutes: the 64-dimensional digits flows' exact trace
# (~40 s of CPU for the MLP field, more for the convolutional one), and every classifier (digits
# ODE-Net alone took 82 s here), which the default suite re-measures anyway through `odezoo demo`
# (tests/test_cli.py::test_demo_end_to_end checks every classifier row the demo prints against its
# manifest, within 0.005, and that none is missing).
# The latent ODE's re-measured training steps (20 s) likewise; the demo test re-measures its errors.
SLOW = {"ffjord.digits", "ffjord.digits_conv"}
SLOW |= {k for k, e in SHIPPED.items() if {"accuracy", "extrapolation_mse"} & set(e["metrics"])}


@pytest.mark.parametrize("key", [pytest.param(k, marks=pytest.mark.slow) if k in SLOW else k for k in sorted(SHIPPED)])
def test_shipped_metric_is_remeasured(key, monkeypatch):
    monkeypatch.delenv("ODEZOO_WEIGHTS_DIR", raising=False)
    entry = SHIPPED[key]
    if entry["dataset"] == "fashion_mnist" and not odezoo.data.fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    model = odezoo.build(entry["model"], pretrained=entry["tag"])
    kind = odezoo.describe(entry["model"])["kind"]
    measured = _train.evaluate(model, kind, entry["dataset"])
    if "accuracy" in entry["metrics"]:
        assert measured["accuracy"] == pytest.approx(entry["metrics"]["accuracy"], abs=0.005)
    if "nll" in entry["metrics"]:
        assert measured["nll"] == pytest.approx(entry["metrics"]["nll"], abs=0.05)
        assert math.isfinite(measured["bits_per_dim"])
    for name in ("interpolation_mse", "extrapolation_mse"):  # a generative series model (deterministic)
        if name in entry["metrics"]:
            assert measured[name] == pytest.approx(entry["metrics"][name], rel=1e-3), name
    if "nfe_forward_per_step" in entry["metrics"]:  # an ODE model's last training step, at its weights
        steps = _train.measure_step_nfe(model, entry["dataset"], entry["batch_size"])
        assert set(steps) == {k for k in entry["metrics"] if k.startswith("nfe_")}
        for name, value in steps.items():
            assert value == pytest.approx(entry["metrics"][name], rel=0.25), name
