"""Checks of odezoo under Keras's JAX backend, run by tests/test_jax_backend.py in a subprocess.

``python tests/_jax_checks.py CHECK [--out DIR]`` sets ``KERAS_BACKEND=jax``
itself, runs CHECK and prints one line ``RESULT <json>`` for the test to
assert on. Checks:

    default      TF-free import, backend errors, every backend-neutral family
                 (build, fit, predict, .keras round trip, drop-path state),
                 RevNet's custom VJP against plain autodiff (eager)
    jit          the same families trained with jit_compile=True, and RevNet's
                 custom VJP inside jax.jit and in a compiled train step
    pretrained   the shipped digits weights evaluated against the manifest
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback

os.environ["KERAS_BACKEND"] = "jax"

CASES = [
    ("resnet", {}),
    ("polynet", {"variant": "poly2"}),
    ("polynet", {"variant": "mpoly2"}),
    ("polynet", {"variant": "way2"}),
    ("fractalnet", {}),
    ("revnet", {}),
    ("lm_resnet", {}),
    ("lm_resnet", {"p_L": 0.8}),
    ("resnet", {"scheme": "backward_euler", "h": 0.2}),
]
FAMILIES = ("resnet", "polynet", "fractalnet", "revnet", "lm_resnet")


def _data(n=8, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.uniform(0, 16, (n, 8, 8, 1)).astype("float32"), rng.integers(0, 10, n)


def _seed_states(model):
    import numpy as np

    return [np.asarray(v.value).copy() for v in model.variables if "seed_generator_state" in v.path]


def _tf_imported():
    return "tensorflow" in sys.modules


def check_import_and_errors():
    import odezoo

    out = {"tf_after_import": _tf_imported()}
    odezoo.list_models()
    out["tf_after_registry"] = _tf_imported()
    errors = {}
    for what, ask in [
        ("build_odenet", lambda: odezoo.build("odenet", input_shape=(8, 8, 1))),
        ("build_ffjord", lambda: odezoo.build("ffjord")),
        ("ODEBlock", lambda: odezoo.ODEBlock),
    ]:
        try:
            ask()
            errors[what] = None
        except Exception as exc:  # noqa: BLE001 - reported to the test
            errors[what] = {
                "type": type(exc).__name__,
                "odezoo": isinstance(exc, odezoo.OdezooError),
                "message": str(exc),
            }
    saved = os.environ.get("ODEZOO_TEST_SAVED_ODE_MODEL")  # a .keras file holding an ODEBlock, saved under TF
    if saved:
        import keras

        try:
            keras.models.load_model(saved)
            errors["load_saved_rknet"] = None
        except Exception as exc:  # noqa: BLE001 - reported to the test
            errors["load_saved_rknet"] = {
                "type": type(exc).__name__,
                "odezoo": isinstance(exc, odezoo.OdezooError),
                "message": str(exc),
            }
    out["errors"] = errors
    out["tf_after_errors"] = _tf_imported()
    return out


def check_family(name, options, folder, *, jit_compile):
    import keras
    import numpy as np

    import odezoo

    x, y = _data()
    model = odezoo.build(name, depth=8, input_shape=(8, 8, 1), seed=1, **options)
    before = [np.asarray(v.value).copy() for v in model.trainable_variables]
    seeds_before = _seed_states(model)
    model.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy", jit_compile=jit_compile)
    history = model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    moved = max(float(np.max(np.abs(np.asarray(v.value) - b))) for v, b in zip(model.trainable_variables, before))
    seeds_after = _seed_states(model)
    pred = model.predict(x, verbose=0)
    result = {
        "loss": [float(v) for v in history.history["loss"]],
        "weights_moved": moved,
        "pred_shape": list(pred.shape),
        "pred_finite": bool(np.all(np.isfinite(pred))),
        "seed_states": len(seeds_after),
        "seed_states_advanced": all(not np.array_equal(a, b) for a, b in zip(seeds_before, seeds_after)),
        "tf_before_save": _tf_imported(),
    }
    path = os.path.join(folder, f"{name}_{'_'.join(map(str, options.values())) or 'default'}.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    result["roundtrip_max_diff"] = float(np.max(np.abs(loaded.predict(x, verbose=0) - pred)))
    if not jit_compile and result["seed_states"]:
        # The stochastic parts draw afresh on each training-mode call (seeded, so this is reproducible).
        calls = {np.asarray(model(x, training=True)).tobytes() for _ in range(6)}
        result["distinct_training_calls"] = len(calls)
    return result


def _revnet_stage(depth=14):
    import odezoo

    model = odezoo.build("revnet", depth=depth, input_shape=(8, 8, 1), seed=0, classifier_activation=None)
    return model, model.get_layer("stage1").blocks


def check_revnet_gradient(*, jit):
    """The custom-VJP stage against JAX's own gradient of the same stage, and the inverse."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from odezoo.plugins import _reversible_jax

    model, blocks = _revnet_stage()
    layers = [f for b in blocks for f in b.fields[:2]]
    weights = [[v.value for v in layer.trainable_variables] for layer in layers]
    stats = [[v.value for v in layer.non_trainable_variables] for layer in layers]
    rng = np.random.default_rng(0)
    shape = (4, 8, 8, 8)
    y1, y2, r1, r2 = (jnp.asarray(rng.normal(size=shape), "float32") for _ in range(4))

    def loss_of(stage):
        def loss(weights, y1, y2):
            (o1, o2), new_stats = stage(weights, stats, y1, y2)
            return jnp.sum(o1 * r1) + jnp.sum(jnp.tanh(o2) * r2), new_stats

        return jax.grad(loss, argnums=(0, 1, 2), has_aux=True)

    custom = loss_of(_reversible_jax.stage_function(blocks, True))
    plain = loss_of(_reversible_jax.stage_function(blocks, True, memory_saving=False))
    if jit:
        custom, plain = jax.jit(custom), jax.jit(plain)
    (gc, sc), (gp, sp) = custom(weights, y1, y2), plain(weights, y1, y2)
    leaves_c, leaves_p = jax.tree_util.tree_leaves(gc), jax.tree_util.tree_leaves(gp)
    rel = [float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in zip(leaves_c, leaves_p)]
    # The unrolled backward pass (stages whose blocks' fields differ) against the same reference.
    uniform = _reversible_jax._uniform
    _reversible_jax._uniform = lambda blocks: False
    try:
        unrolled = loss_of(_reversible_jax.stage_function(blocks, True))
        gu, _ = (jax.jit(unrolled) if jit else unrolled)(weights, y1, y2)
    finally:
        _reversible_jax._uniform = uniform
    rel += [
        float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in zip(jax.tree_util.tree_leaves(gu), leaves_p)
    ]
    stats_diff = max(
        float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(sc), jax.tree_util.tree_leaves(sp))
    )
    stats_moved = max(
        float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(sc), jax.tree_util.tree_leaves(stats))
    )
    # The exact inverse, block by block (inference mode: BatchNorm uses its moving statistics).
    state = (y1, y2)
    for b in blocks:
        state = b.scheme.step(b.fields_for_training(False), b.t, state, b.h)
    for b in reversed(blocks):
        state = b.scheme.inverse(b.fields_for_training(False), b.t, state, b.h)
    inverse_err = max(float(jnp.max(jnp.abs(state[0] - y1))), float(jnp.max(jnp.abs(state[1] - y2))))
    return {
        "gradients": len(leaves_c),
        "expected_gradients": sum(map(len, weights)) + 2,
        "max_rel_grad_diff": max(rel),
        "stats_diff": stats_diff,
        "stats_moved": stats_moved,
        "inverse_max_err": inverse_err,
    }


def check_revnet_train_step(*, jit_compile):
    """One SGD step of a whole RevNet: custom VJP vs plain autodiff give the same weights and BN statistics."""
    import keras
    import numpy as np

    import odezoo

    reversible = odezoo.get_scheme("reversible")
    x, y = _data()
    model, _ = _revnet_stage()
    initial = [np.asarray(v.value).copy() for v in model.variables]
    results = []
    own = reversible.run_stage
    for plain in (False, True):
        for v, value in zip(model.variables, initial):
            v.assign(value)
        if plain:
            reversible.run_stage = odezoo.Scheme.run_stage
        try:
            model.compile(
                keras.optimizers.SGD(0.1),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=jit_compile,
            )
            model.train_on_batch(x, y)
        finally:
            reversible.run_stage = own
        results.append(
            (
                [np.asarray(v.value) for v in model.trainable_variables],
                [np.asarray(v.value) for v in model.non_trainable_variables],
            )
        )
    (wc, sc), (wp, sp) = results
    return {
        "max_weight_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(wc, wp)),
        "max_stat_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(sc, sp)),
        "weights": len(wc),
    }


def check_tensorflow_parts():
    """The TensorFlow-only parts that do work under JAX: odeint, and tf.data feeding a Keras-JAX fit."""
    import numpy as np

    import odezoo

    y = odezoo.odeint(lambda t, y: -y, np.float32(1.0), np.array([0.0, 1.0], "float32"))
    model = odezoo.build("resnet", depth=8, input_shape=(8, 8, 1))
    model.compile("sgd", "sparse_categorical_crossentropy", jit_compile=False)
    history = model.fit(odezoo.data.dataset("digits", batch_size=32), epochs=1, steps_per_epoch=2, verbose=0)
    return {
        "odeint": [float(v) for v in np.asarray(y)],
        "odeint_type": type(y).__module__,
        "dataset_fit_loss": float(history.history["loss"][-1]),
    }


def check_pretrained():
    import numpy as np

    import odezoo
    from odezoo import data

    x, y = data.load("digits", "test")
    out = {}
    for name in FAMILIES:
        model = odezoo.build(name, pretrained=True)
        model.compile(jit_compile=False)
        pred = model.predict(x.astype("float32"), batch_size=360, verbose=0)
        out[name] = {
            "accuracy": float(np.mean(np.argmax(pred, -1) == y)),
            "manifest": model.zoo_entry["metrics"]["accuracy"],
            "tag": model.zoo_entry["tag"],
        }
    out["tf_imported"] = _tf_imported()
    return out


def _guard(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception:  # noqa: BLE001 - the test prints it
        return {"error": traceback.format_exc(limit=8)}


def main(argv):
    check = argv[0] if argv else "default"
    result = {}
    with tempfile.TemporaryDirectory() as folder:
        if check == "default":
            result["import"] = _guard(check_import_and_errors)
            result["families"] = {
                f"{n}{o or ''}": _guard(check_family, n, o, folder, jit_compile=False) for n, o in CASES
            }
            result["revnet_gradient"] = _guard(check_revnet_gradient, jit=False)
            result["revnet_train_step"] = _guard(check_revnet_train_step, jit_compile=False)
        elif check == "jit":
            result["families"] = {
                f"{n}{o or ''}": _guard(check_family, n, o, folder, jit_compile=True) for n, o in CASES
            }
            result["revnet_gradient"] = _guard(check_revnet_gradient, jit=True)
            result["revnet_train_step"] = _guard(check_revnet_train_step, jit_compile=True)
            result["tensorflow_parts"] = _guard(check_tensorflow_parts)
        elif check == "pretrained":
            result["pretrained"] = _guard(check_pretrained)
        else:
            raise SystemExit(f"unknown check {check!r}; valid: default, jit, pretrained")
    import keras

    result["backend"] = keras.backend.backend()
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
