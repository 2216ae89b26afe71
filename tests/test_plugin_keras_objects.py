"""Plugins declare their Keras classes (odezoo.register_keras_objects); load_model then needs only import odezoo.

The subprocess checks use a tiny third-party plugin on ODEZOO_PLUGIN_PATH whose
layer lives in a package of its own (on PYTHONPATH): one process saves a model
holding the layer, a fresh one loads it after nothing but ``import odezoo``.
Bad declarations in other plugin files of the same folder are each that
plugin's failure, reported by ``odezoo plugins``, while the rest load.
"""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

import odezoo

REPO = Path(__file__).resolve().parents[1]

PACKAGE = {
    "scalerpkg/__init__.py": "",
    "scalerpkg/layers.py": """
        import keras

        @keras.saving.register_keras_serializable(package="scalerpkg")
        class Scale(keras.layers.Layer):
            def __init__(self, factor=2.0, **kwargs):
                super().__init__(**kwargs)
                self.factor = factor

            def build(self, input_shape):
                self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="w")

            def call(self, x):
                return x * self.w * self.factor

            def get_config(self):
                return {**super().get_config(), "factor": self.factor}

        class Plain(keras.layers.Layer):
            pass
    """,
    "scalerpkg/jax_layers.py": """
        raise ImportError("a module declared for the JAX backend is not imported under TensorFlow")
    """,
}

PLUGINS = {
    # the good one: declaring imports nothing (scalerpkg.layers is imported by odezoo, with Keras)
    "scaler.py": """
        import sys
        import odezoo

        ODEZOO_PLUGIN_API = 1
        assert "scalerpkg.layers" not in sys.modules
        odezoo.register_keras_objects("scalerpkg.layers:Scale", package="scalerpkg")
        odezoo.register_keras_objects("scalerpkg.jax_layers:JaxOnly", package="scalerpkg", backend="jax")
    """,
    "bad_string.py": """
        import odezoo
        odezoo.register_keras_objects("scalerpkg/layers.Scale", package="scalerpkg")
    """,
    "bad_backend.py": """
        import odezoo
        odezoo.register_keras_objects("scalerpkg.layers:Scale", package="scalerpkg", backend="theano")
    """,
    "missing.py": """
        import odezoo

        @odezoo.register_scheme("test_km_rolled_back")
        class Rolled(odezoo.ExplicitRungeKutta):
            order, A, b = 1, [[]], [1.0]

        odezoo.register_keras_objects("no_such_module_km:Thing", package="km")
    """,
    "unregistered.py": """
        import odezoo
        odezoo.register_keras_objects("scalerpkg.layers:Plain", package="scalerpkg")
    """,
    "clash.py": """
        import odezoo
        odezoo.register_keras_objects("scalerpkg.layers:ODEBlock", package="odezoo")
    """,
}

SAVE = """
import json, sys
import keras
import numpy as np
import odezoo
from scalerpkg.layers import Scale

inputs = keras.Input((3,))
model = keras.Model(inputs, keras.layers.Dense(2, name="head")(Scale(3.0, name="scale")(inputs)))
x = np.arange(12, dtype="float32").reshape(4, 3)
model.save(sys.argv[1])
print(json.dumps({"y": model.predict(x, verbose=0).tolist()}))
"""

LOAD = """
import io, json, sys
from contextlib import redirect_stdout
import odezoo

declared_before_keras = "keras" in sys.modules
import keras
import numpy as np
import odezoo.cli

model = keras.models.load_model(sys.argv[1])
x = np.arange(12, dtype="float32").reshape(4, 3)
placeholder = keras.saving.get_registered_object("scalerpkg>JaxOnly")
try:
    placeholder.from_config({})
    jax_error = None
except Exception as exc:
    jax_error = {"type": type(exc).__name__, "message": str(exc), "odezoo": isinstance(exc, odezoo.OdezooError)}
buf = io.StringIO()
with redirect_stdout(buf):
    status = odezoo.cli.main(["plugins"])
print(json.dumps({"y": model.predict(x, verbose=0).tolist(), "cls": type(model.get_layer("scale")).__module__,
                  "keras_before": declared_before_keras, "jax_error": jax_error,
                  "report": odezoo.plugin_report(), "schemes": odezoo.list_schemes(),
                  "cli": buf.getvalue(), "status": status}))
"""


def _run(code, args, env_extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **env_extra)
    env.pop("ODEZOO_DISABLE_PLUGIN_AUTOLOAD", None)
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    root = tmp_path_factory.mktemp("keras_objects")
    for rel, source in PACKAGE.items():
        (root / "site" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "site" / rel).write_text(textwrap.dedent(source))
    (root / "plugins").mkdir()
    for name, source in PLUGINS.items():
        (root / "plugins" / name).write_text(textwrap.dedent(source))
    pythonpath = os.pathsep.join(p for p in [str(root / "site"), os.environ.get("PYTHONPATH")] if p)
    saved = str(root / "scaled.keras")
    # the saving process sees only the good plugin; the loading one the whole folder
    good = root / "good"
    good.mkdir()
    (good / "scaler.py").write_text(textwrap.dedent(PLUGINS["scaler.py"]))
    before = _run(SAVE, [saved], {"PYTHONPATH": pythonpath, "ODEZOO_PLUGIN_PATH": str(good)})
    after = _run(LOAD, [saved], {"PYTHONPATH": pythonpath, "ODEZOO_PLUGIN_PATH": str(root / "plugins")})
    after["failures"] = {f["name"]: f["error"] for f in after["report"]["failures"]}
    after["loaded"] = {r["name"]: r for r in after["report"]["loaded"]}
    return before, after


def test_a_plugins_layer_loads_in_a_fresh_process_after_only_import_odezoo(round_trip):
    before, after = round_trip
    assert after["keras_before"] is False  # import odezoo did not import Keras
    assert after["cls"] == "scalerpkg.layers"  # odezoo imported the plugin's module for Keras
    np.testing.assert_allclose(after["y"], before["y"], rtol=1e-6)
    assert after["loaded"]["scaler"]["keras_objects"] == ["scalerpkg>Scale", "scalerpkg>JaxOnly"]


def test_a_class_for_another_backend_is_a_placeholder_naming_it(round_trip):
    error = round_trip[1]["jax_error"]
    assert error["type"] == "BackendError" and error["odezoo"]
    assert "'jax' backend" in error["message"] and "'tensorflow'" in error["message"]


@pytest.mark.parametrize(
    "plugin, words",
    [
        ("bad_string", ["PluginError", "Invalid value for `target`", "'scalerpkg/layers.Scale'", "module:ClassName"]),
        ("bad_backend", ["PluginError", "Invalid value for `backend`", "'theano'"]),
        (
            "missing",
            ["PluginError", "'km>Thing' cannot be imported from no_such_module_km:Thing", "ModuleNotFoundError"],
        ),
        ("unregistered", ["PluginError", "scalerpkg.layers:Plain", "register_keras_serializable(package='scalerpkg')"]),
        ("clash", ["PluginError", "'odezoo>ODEBlock' is already declared by odezoo core"]),
    ],
)
def test_a_bad_declaration_fails_its_plugin_alone(round_trip, plugin, words):
    after = round_trip[1]
    error = after["failures"][plugin]
    for word in words:
        assert word in error
    assert plugin not in after["loaded"] and "scaler" in after["loaded"]
    assert f"  {plugin}  [" in after["cli"] and after["status"] == 0


def test_a_failed_declaration_rolls_its_plugin_back(round_trip):
    assert "test_km_rolled_back" not in round_trip[1]["schemes"]


# --------------------------------------------------------------------------- in this process
def test_declarations_outside_plugins_are_checked_at_once():
    with odezoo.scoped_registry():
        with pytest.raises(odezoo.PluginError, match="Invalid value for `package`"):
            odezoo.register_keras_objects("odezoo._layers:SchemeBlock", package="a>b")
        with pytest.raises(odezoo.PluginError, match="at least one"):
            odezoo.register_keras_objects(package="odezoo")
        with pytest.raises(odezoo.PluginError, match="cannot be imported"):
            odezoo.register_keras_objects("odezoo._layers:NoSuchLayer", package="test_km")


def test_declaring_the_same_target_again_is_a_no_op_and_the_scope_forgets_it():
    import keras

    @keras.saving.register_keras_serializable(package="test_km")
    class Scoped(keras.layers.Layer):
        pass

    module = sys.modules[__name__]
    module.Scoped = Scoped
    try:
        with odezoo.scoped_registry():
            target = f"{__name__}:Scoped"
            odezoo.register_keras_objects(target, package="test_km")
            odezoo.register_keras_objects(target, package="test_km")
            assert odezoo.plugin_report()["runtime"]["keras_objects"] == ["test_km>Scoped"]
        assert odezoo.plugin_report()["runtime"]["keras_objects"] == []
    finally:
        del module.Scoped


# --------------------------------------------------------------------------- Keras imported mid-import
FIRST_IMPORT = """
import json, sys
import importlib
importlib.import_module(sys.argv[1])  # the first thing that imports Keras, before anything else of odezoo's
import keras
model = keras.models.load_model(sys.argv[2])  # no registry call before it
import odezoo
print(json.dumps({"cls": type(model).__module__ + "." + type(model).__name__,
                  "failures": odezoo.plugin_report()["failures"], "models": odezoo.list_models()}))
"""


@pytest.mark.parametrize(
    "first",
    [
        "odezoo.layers",
        pytest.param("odezoo.ode.block", marks=pytest.mark.slow),
        pytest.param("odezoo.plugins.ode.model", marks=pytest.mark.slow),
    ],
)
def test_a_module_of_odezoo_that_imports_keras_first_does_not_break_the_plugins(first):
    # Keras's import used to discover the plugins while `first` was half-built: the plugins that import
    # it were skipped (families, ode) and a saved ODE-Net did not load.
    saved = str(REPO / "tests" / "fixtures" / "pre_move" / "odenet.keras")
    out = _run(FIRST_IMPORT, [first, saved], {})
    assert out["cls"] == "odezoo.plugins.ode.model.ODEClassifier"
    assert out["failures"] == []
    assert out["models"] == odezoo.list_models()


def test_a_third_party_module_that_imports_keras_then_odezoo_layers_loads_the_plugins(tmp_path):
    # a plugin author's own module (not odezoo's) is half-built when Keras arrives: the registration waits
    # for the next import (here one the script makes; a registry call would do too)
    (tmp_path / "authorpkg.py").write_text("import keras\nimport odezoo.layers\nfrom odezoo.layers import ConvField\n")
    (tmp_path / "authornext.py").write_text("")
    code = FIRST_IMPORT.replace(
        "import keras\nmodel", "import authornext  # noqa: F401  (a module not imported yet)\nimport keras\nmodel"
    )
    out = _run(
        code,
        ["authorpkg", str(REPO / "tests" / "fixtures" / "pre_move" / "odenet.keras")],
        {"PYTHONPATH": os.pathsep.join(p for p in [str(tmp_path), os.environ.get("PYTHONPATH")] if p)},
    )
    assert out["cls"] == "odezoo.plugins.ode.model.ODEClassifier"
    assert out["failures"] == [] and out["models"] == odezoo.list_models()


def test_a_users_module_that_imports_keras_and_odezoo_loads_at_once():
    # pytest imports a test module that starts with `import keras; import odezoo` and then calls
    # load_model in a test function, with no import or registry call between: the registration waited
    # for the half-built test module and the load failed ("Could not locate class 'Normalize'").
    code = FIRST_IMPORT.replace("import keras\nmodel", "import keras  # noqa\nmodel")
    module = "import keras\nimport odezoo\n"
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "usermodule.py").write_text(module)
        out = _run(
            code,
            ["usermodule", str(REPO / "tests" / "fixtures" / "pre_move" / "odenet.keras")],
            {"PYTHONPATH": os.pathsep.join(p for p in [tmp, os.environ.get("PYTHONPATH")] if p)},
        )
    assert out["cls"] == "odezoo.plugins.ode.model.ODEClassifier"
    assert out["failures"] == [] and out["models"] == odezoo.list_models()


HALF_BUILT_PLUGIN = {
    "authorplug-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: authorplug\nVersion: 0.1\n",
    "authorplug-0.1.dist-info/entry_points.txt": "[odezoo.plugins]\nauthorplug = authorplug.plugin\n",
    "authorplug/__init__.py": "import keras\nimport odezoo\n\nREADY = True  # the plugin needs its package complete\n",
    "authorplug/plugin.py": """
        import odezoo
        from authorplug import READY  # noqa: F401  (fails on a half-built package)

        @odezoo.register_scheme("test_half_built_euler")
        class HalfBuiltEuler(odezoo.Scheme):
            order, num_fields = 1, 1

            def step(self, fields, t, y, h):
                return y + h * fields[0](t, y)
    """,
}


def test_a_plugin_whose_own_package_is_half_built_waits_and_the_built_ins_do_not(tmp_path):
    for rel, source in HALF_BUILT_PLUGIN.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(textwrap.dedent(source))
    code = """
import json, sys
import authorplug  # imports Keras and odezoo while it is half-built
from odezoo import _registry
waited = "test_half_built_euler" not in _registry._schemes  # the third party's plugin: not yet
builtins = "odenet" in _registry._models and "dopri5" in _registry._schemes  # the built-ins: already
import keras
model = keras.models.load_model(sys.argv[1])
import odezoo
print(json.dumps({"cls": type(model).__name__, "waited": waited, "builtins": builtins, "schemes": odezoo.list_schemes(),
                  "failures": odezoo.plugin_report()["failures"]}))
"""
    out = _run(
        code,
        [str(REPO / "tests" / "fixtures" / "pre_move" / "odenet.keras")],
        {"PYTHONPATH": os.pathsep.join(p for p in [str(tmp_path), os.environ.get("PYTHONPATH")] if p)},
    )
    assert out["cls"] == "ODEClassifier"
    assert out["waited"] is True and out["builtins"] is True
    assert "test_half_built_euler" in out["schemes"] and out["failures"] == []
