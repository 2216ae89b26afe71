"""odezoo under Keras's JAX backend (issue 7, backend-neutral families).

Keras fixes its backend at import, so every check runs in a subprocess with
``KERAS_BACKEND=jax`` (tests/_jax_checks.py; this process stays on
TensorFlow). Every test here is marked ``jax`` and left out of the default
run (they cost minutes and run on their own: ``pytest -m jax``, as .ci/run does
after installing the jax extra); training under ``jit_compile=True`` and the
shipped weights are also ``slow``.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.jax
pytest.importorskip("jax", reason="JAX is not installed: pip install -e '.[jax]' to test the JAX backend")

SCRIPT = os.path.join(os.path.dirname(__file__), "_jax_checks.py")
CASES = [
    "resnet",
    "polynet{'variant': 'poly2'}",
    "polynet{'variant': 'mpoly2'}",
    "polynet{'variant': 'way2'}",
    "fractalnet",
    "revnet",
    "lm_resnet",
    "lm_resnet{'p_L': 0.8}",
    "resnet{'scheme': 'backward_euler', 'h': 0.2}",
]
STOCHASTIC = ["fractalnet", "lm_resnet{'p_L': 0.8}"]


def run_check(check, *, timeout, fast_compile=False, env=None):
    env = dict(os.environ, **(env or {}), KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    if fast_compile:
        # Tiny models: XLA's backend optimisation costs more than it saves here.
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    proc = subprocess.run([sys.executable, SCRIPT, check], env=env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"{check} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["backend"] == "jax"
    return result


def ok(part):
    assert "error" not in part, part["error"]
    return part


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    import odezoo  # this process runs Keras on TensorFlow

    saved = str(tmp_path_factory.mktemp("jax") / "rknet.keras")
    odezoo.build("rknet", input_shape=(8, 8, 1), channels=8, num_steps=1).save(saved)
    return run_check("default", timeout=900, fast_compile=True, env={"ODEZOO_TEST_SAVED_ODE_MODEL": saved})


def test_import_and_registry_do_not_import_tensorflow(default_run):
    info = ok(default_run["import"])
    assert info["tf_after_import"] is False
    assert info["tf_after_registry"] is False
    # Building, training and predicting leave TensorFlow alone too (Keras's own
    # .keras saving imports it when it is installed: checked before the first save).
    assert ok(default_run["families"]["resnet"])["tf_before_save"] is False


@pytest.mark.parametrize("what", ["build_odenet", "build_ffjord", "ODEBlock", "load_saved_rknet"])
def test_tensorflow_only_parts_name_the_backend_they_need(default_run, what):
    info = ok(default_run["import"])
    error = info["errors"][what]
    assert error is not None, f"{what} gave no error under JAX"
    assert error["type"] == "BackendError" and error["odezoo"]
    assert "TensorFlow backend" in error["message"] and "'jax'" in error["message"]
    assert info["tf_after_errors"] is False  # refused before TensorFlow was imported


@pytest.mark.parametrize("case", CASES)
def test_family_fits_predicts_and_round_trips(default_run, case):
    r = ok(default_run["families"][case])
    assert len(r["loss"]) == 2 and all(loss == loss and loss < 10 for loss in r["loss"]), r["loss"]
    assert r["weights_moved"] > 1e-4
    assert r["pred_shape"] == [8, 10] and r["pred_finite"]
    assert r["roundtrip_max_diff"] <= 1e-6


@pytest.mark.parametrize("case", STOCHASTIC)
def test_drop_path_and_stochastic_depth_draw_afresh(default_run, case):
    """The schemes' SeedGenerators are layer state: under JAX an untracked one is a traced constant."""
    r = ok(default_run["families"][case])
    assert r["seed_states"] >= 1
    assert r["seed_states_advanced"], "the random state did not advance in training"
    assert r["distinct_training_calls"] >= 2


def test_revnet_custom_vjp_equals_autodiff(default_run):
    r = ok(default_run["revnet_gradient"])
    assert r["gradients"] == r["expected_gradients"]  # every weight of every F and G, and both halves
    assert r["max_rel_grad_diff"] < 1e-5
    assert r["stats_moved"] > 0 and r["stats_diff"] == pytest.approx(0.0, abs=1e-6)
    assert r["inverse_max_err"] < 1e-4


def test_revnet_train_step_counts_batchnorm_once(default_run):
    r = ok(default_run["revnet_train_step"])
    assert r["max_weight_diff"] < 1e-6
    assert r["max_stat_diff"] < 1e-6  # the backward re-run does not update the moving statistics


@pytest.mark.slow
def test_families_under_jit_compile():
    result = run_check("jit", timeout=1800)
    for case in CASES:
        r = ok(result["families"][case])
        assert r["weights_moved"] > 1e-4 and r["pred_finite"], case
        assert r["roundtrip_max_diff"] <= 1e-6, case
    for case in STOCHASTIC:
        assert result["families"][case]["seed_states_advanced"], case
    g = ok(result["revnet_gradient"])
    assert g["max_rel_grad_diff"] < 1e-5 and g["stats_diff"] == pytest.approx(0.0, abs=1e-6)
    s = ok(result["revnet_train_step"])
    assert s["max_weight_diff"] < 1e-6 and s["max_stat_diff"] < 1e-6
    # The TensorFlow-only parts that work under JAX (docs/backends.md says which).
    tf_parts = ok(result["tensorflow_parts"])
    assert tf_parts["odeint"] == pytest.approx([1.0, float(np.exp(-1.0))], rel=1e-5)
    assert tf_parts["dataset_fit_loss"] == tf_parts["dataset_fit_loss"]  # tf.data fed a JAX fit: a number


@pytest.mark.slow
def test_shipped_digits_weights_evaluate_to_the_manifest():
    result = ok(run_check("pretrained", timeout=1800)["pretrained"])
    for name in ("resnet", "polynet", "fractalnet", "revnet", "lm_resnet"):
        r = result[name]
        assert r["accuracy"] == pytest.approx(r["manifest"], abs=0.005), (name, r)
    assert result["tf_imported"] is False
