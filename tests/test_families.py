"""The discretisation families: shapes, parameter counts, training, XLA, save/load, bad input."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import odezoo  # noqa: E402

FAMILIES = ["resnet", "polynet", "fractalnet", "revnet", "lm_resnet"]


def _batch(shape=(8, 8, 1), n=32, high=16.0, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, high, (n,) + shape).astype("float32"), rng.integers(0, 10, n)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", [(8, 8, 1), (32, 32, 3)])
def test_family_builds_with_right_output_shape(family, shape):
    model = odezoo.build(family, depth=8, input_shape=shape, num_classes=7)
    out = np.asarray(model(np.zeros((2,) + shape, "float32"), training=False))
    assert out.shape == (2, 7)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)  # softmax head


def test_family_works_at_fashion_mnist_size():
    model = odezoo.build("lm_resnet", depth=8, input_shape=(28, 28, 1))
    assert model(np.zeros((1, 28, 28, 1), "float32")).shape == (1, 10)


@pytest.mark.parametrize("depth,params", [(20, 0.27e6), (56, 0.85e6), (110, 1.7e6)])
def test_resnet_parameter_counts_match_the_paper(depth, params):
    resnet = odezoo.build("resnet", depth=depth).count_params()
    assert abs(resnet - params) / params < 0.04, resnet
    lm = odezoo.build("lm_resnet", depth=depth).count_params()
    n = (depth - 2) // 6
    assert lm - resnet == 3 * n - 2 - 3  # one k_n per scheme block after each stage's first


@pytest.mark.parametrize(
    "family", [f if f in ("resnet", "lm_resnet") else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES]
)
def test_training_lowers_loss_and_compiles_with_xla(family, tmp_path):
    model = odezoo.build(family, depth=8, input_shape=(8, 8, 1), seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy", jit_compile=True)
    x, y = _batch()
    losses = model.fit(x, y, epochs=6, batch_size=32, verbose=0).history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses
    # save -> load in this process, no custom_objects: identical outputs
    path = str(tmp_path / f"{family}.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(np.asarray(model.predict(x, verbose=0)), np.asarray(loaded.predict(x, verbose=0)))


@pytest.mark.slow  # default suite under 10 min on 2 cores
def test_saved_models_load_in_a_fresh_process_after_import_odezoo(tmp_path):
    x, _ = _batch(n=4)
    np.save(tmp_path / "x.npy", x)
    for family in FAMILIES:
        model = odezoo.build(family, depth=8, input_shape=(8, 8, 1), seed=1)
        model.save(str(tmp_path / f"{family}.keras"))
        np.save(tmp_path / f"{family}.npy", np.asarray(model.predict(x, verbose=0)))
    script = textwrap.dedent(f"""
        import numpy as np
        import odezoo  # before keras: the layers register when keras is imported
        import keras
        x = np.load({str(tmp_path / 'x.npy')!r})
        for family in {FAMILIES!r}:
            model = keras.models.load_model({str(tmp_path)!r} + "/" + family + ".keras")
            want = np.load({str(tmp_path)!r} + "/" + family + ".npy")
            np.testing.assert_array_equal(model.predict(x, verbose=0), want)
        print("LOADED-OK")
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert "LOADED-OK" in proc.stdout, proc.stderr[-3000:]


def test_import_odezoo_does_not_import_keras_or_tensorflow():
    script = "import sys, odezoo; print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-2000:]


def test_any_registered_scheme_drives_a_family():
    model = odezoo.build("resnet", depth=8, input_shape=(8, 8, 1), scheme="rk4")
    blocks = [layer for layer in model.layers if layer.name.startswith("stage1")][0].blocks
    assert blocks[0].scheme_name == "rk4" and len(blocks[0].fields) == 4
    assert model(np.zeros((1, 8, 8, 1), "float32")).shape == (1, 10)


def test_third_party_scheme_drives_a_family():
    name = "test_ssprk3_family"
    if name not in odezoo.list_schemes():

        @odezoo.register_scheme(name)
        class SSPRK3(odezoo.ExplicitRungeKutta):
            order = 3
            A = [[], [1.0], [0.25, 0.25]]
            b = [1 / 6, 1 / 6, 2 / 3]

    model = odezoo.build("resnet", depth=8, input_shape=(8, 8, 1), scheme=name)
    assert model(np.zeros((1, 8, 8, 1), "float32")).shape == (1, 10)


def test_scheme_options_pass_through_the_family():
    model = odezoo.build("polynet", depth=8, input_shape=(8, 8, 1), variant="way2")
    stage = [layer for layer in model.layers if layer.name == "stage1"][0]
    assert stage.blocks[0].scheme.variant == "way2"
    with pytest.raises(TypeError, match="varient.*Valid keys"):
        odezoo.build("polynet", depth=8, varient="way2")


@pytest.mark.parametrize("depth", [19, 7, 0, "20"])
def test_bad_depth_names_valid_depths(depth):
    with pytest.raises(ValueError, match=r"depth=.*6n\+2.*8, 14, 20"):
        odezoo.build("resnet", depth=depth)


def test_wrong_input_shape_names_expected_shape():
    model = odezoo.build("revnet", depth=8, input_shape=(8, 8, 1))
    with pytest.raises(ValueError, match=r"expected shape=\(None, 8, 8, 1\)"):
        model(np.zeros((2, 32, 32, 3), "float32"))
    with pytest.raises(ValueError, match="input_shape"):
        odezoo.build("resnet", input_shape=(8, 8))


def test_describe_names_paper_scheme_and_order():
    for family, scheme, order in [
        ("resnet", "euler", 1),
        ("polynet", "polyinception", 1),
        ("fractalnet", "fractal_rk", 2),
        ("revnet", "reversible", 1),
        ("lm_resnet", "linear_multistep", 1),
    ]:
        info = odezoo.describe(family)
        assert (info["scheme"], info["order"], info["kind"]) == (scheme, order, "classifier")
        assert info["paper"] and info["ode_reading"]
    assert odezoo.describe("lm_resnet56")["defaults"]["depth"] == 56
    assert odezoo.build.__name__ == "build"
