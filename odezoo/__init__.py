"""odezoo: a plugin-based Keras model zoo of neural networks read as differential equations.

The public API is re-exported here explicitly. Names that need Keras or
TensorFlow (the layers, ``odeint``) are resolved lazily, so ``import odezoo``
and the registry stay light.
"""

from odezoo._builder import build, describe
from odezoo._errors import (
    OdezooError,
    PluginError,
    SolverError,
    UnknownNameError,
    WeightsIntegrityError,
)
from odezoo._registry import (
    get_scheme,
    list_models,
    list_schemes,
    plugin_report,
    register_model,
    register_scheme,
)
from odezoo._scheme import BlockContext, ExplicitRungeKutta, Scheme

__version__ = "0.1.0"

# The serializable layers register themselves with Keras on import, so that
# keras.models.load_model in a fresh process needs only `import odezoo`.
from odezoo import _layers  # noqa: E402,F401
from odezoo._layers import SchemeBlock  # noqa: E402


def _register_tf_layers():
    """Register the TensorFlow-only layers (ODE block, flow) when Keras runs on TensorFlow."""
    import importlib
    import importlib.util

    import keras

    if keras.backend.backend() != "tensorflow":
        return  # imported on first use instead (odezoo.ODEBlock)
    for module in ("odezoo._odeblock", "odezoo._flow"):
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


_register_tf_layers()

_LAZY = {
    "ODEBlock": ("odezoo._odeblock", "ODEBlock"),
    "odeint": ("odezoo._odeblock", "odeint"),
}
_LAZY_MODULES = ("data", "layers", "nets", "plotting", "testing")

__all__ = [
    "build", "describe", "list_models", "list_schemes", "get_scheme", "register_scheme",
    "register_model", "plugin_report", "Scheme", "ExplicitRungeKutta", "BlockContext",
    "SchemeBlock", "ODEBlock", "odeint",
    "OdezooError", "UnknownNameError", "SolverError", "WeightsIntegrityError", "PluginError",
    "__version__",
]


def __getattr__(name):
    import importlib

    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name in _LAZY_MODULES:
        return importlib.import_module(f"odezoo.{name}")
    raise AttributeError(f"module 'odezoo' has no attribute {name!r}")


def __dir__():
    return sorted(set(__all__) | set(_LAZY_MODULES))
