"""odezoo: a plugin-based Keras model zoo of neural networks read as differential equations.

The public API is re-exported here explicitly. Names that need Keras or
TensorFlow (the layers, ``odeint``) are resolved lazily, so ``import odezoo``
and the registry stay light, and under Keras's JAX backend TensorFlow is
imported only when a TensorFlow-only part (``odeint``, ``odezoo.data.dataset``)
is used; ``ODEBlock`` there raises an error naming the backend it needs.
"""

from odezoo._builder import build, describe
from odezoo._errors import (
    CheckpointError,
    DataError,
    ManifestError,
    OdezooError,
    PluginError,
    SolverError,
    TrainingError,
    UnknownNameError,
    WeightsIntegrityError,
)
from odezoo._registry import (
    get_scheme,
    list_models,
    list_schemes,
    plugin_report,
    register_keras_objects,
    register_model,
    register_scheme,
    scoped_registry,
)
from odezoo._scheme import BlockContext, DiagonallyImplicitRungeKutta, ExplicitRungeKutta, Scheme

from odezoo._version import __version__

from odezoo import _keras_hook  # noqa: E402

_LAZY = {
    "SchemeBlock": ("odezoo._layers", "SchemeBlock"),
    "ODEBlock": ("odezoo.ode.block", "ODEBlock"),
    "odeint": ("odezoo.ode.dispatch", "odeint"),
    "odeint_event": ("odezoo.ode.events", "odeint_event"),
}
_LAZY_MODULES = ("data", "layers", "nets", "plotting", "testing")

__all__ = [
    "build",
    "describe",
    "list_models",
    "list_schemes",
    "get_scheme",
    "register_scheme",
    "register_model",
    "register_keras_objects",
    "scoped_registry",
    "plugin_report",
    "Scheme",
    "ExplicitRungeKutta",
    "DiagonallyImplicitRungeKutta",
    "BlockContext",
    "SchemeBlock",
    "ODEBlock",
    "odeint",
    "odeint_event",
    "OdezooError",
    "UnknownNameError",
    "SolverError",
    "WeightsIntegrityError",
    "PluginError",
    "ManifestError",
    "DataError",
    "TrainingError",
    "CheckpointError",
    "__version__",
]


def __getattr__(name):
    import importlib

    if name in _LAZY:
        module, attr = _LAZY[name]
        if attr in _keras_hook.TF_ONLY_LAYERS:
            _keras_hook.require_tensorflow(f"odezoo.{attr}")
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name in _LAZY_MODULES:
        return importlib.import_module(f"odezoo.{name}")
    raise AttributeError(f"module 'odezoo' has no attribute {name!r}")


def __dir__():
    return sorted(set(__all__) | set(_LAZY_MODULES))


# The serializable layers must be registered with Keras before a saved model is
# loaded, but `import odezoo` (the registry, odezoo.data) must not import Keras
# or TensorFlow. So they register as soon as Keras is imported, whichever
# comes first. Last, because with Keras imported already it discovers the
# plugins now, and they see this module whole.
_keras_hook.install()
