"""Register odezoo's Keras serializables as soon as Keras is imported.

``keras.models.load_model`` in a fresh process must find ``odezoo>SchemeBlock``
and friends after nothing more than ``import odezoo``; yet ``import odezoo``
must stay free of Keras/TensorFlow (``odezoo.data.load`` returns numpy arrays
without importing TensorFlow). If Keras is already imported, the layer modules
are imported at once; otherwise a one-shot import hook runs them right after
Keras's own module has finished executing.

Under another Keras backend (JAX) only the backend-neutral layers register;
the TensorFlow-only layers (the ODE solvers' layers and the flow) are
stood in for by placeholders whose ``from_config`` raises :class:`BackendError`,
so loading a saved ODE-Net under JAX names the backend it needs.
:func:`require_tensorflow` is the same check for code that asks for one of
those layers by name.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

from odezoo._errors import OdezooError

# TensorFlow-only modules, registered only when Keras runs on TensorFlow.
_CORE = ("odezoo._layers",)
_TF_ONLY = ("odezoo.ode.block", "odezoo.plugins.ode.model", "odezoo._flow")
# The serializable layers those modules define: public name -> module.
TF_ONLY_LAYERS = {
    "ODEBlock": "odezoo.ode.block",
    "ODEConvField": "odezoo.plugins.ode.model",
    "ODEClassifier": "odezoo.plugins.ode.model",
    "FFJORDFlow": "odezoo._flow",
    "TimeMLPField": "odezoo._flow",
}


class BackendError(OdezooError, ImportError):
    """A TensorFlow-only part of odezoo asked for while Keras runs on another backend."""


def require_tensorflow(what: str) -> None:
    """Raise :class:`BackendError` unless Keras runs on TensorFlow; ``what`` names the part asked for."""
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise BackendError(
            f"{what} needs Keras's TensorFlow backend (odezoo's ODE solvers and the FFJORD flow are "
            f"written in TensorFlow and TensorFlow Probability), but Keras is running on {backend!r}. "
            "Set KERAS_BACKEND=tensorflow before Keras is imported. Under other backends the "
            "discretisation families (resnet, polynet, fractalnet, revnet, lm_resnet) work; "
            "see docs/backends.md."
        )


def _placeholder(name):
    def from_config(cls, config):
        require_tensorflow(f"Loading odezoo's {name} layer")

    return type(name, (), {"__doc__": f"Stands in for odezoo's TensorFlow-only {name} under other backends.",
                           "from_config": classmethod(from_config)})


def register_layers() -> None:
    for name in _CORE:
        importlib.import_module(name)
    import keras

    if keras.backend.backend() == "tensorflow":
        for name in _TF_ONLY:
            if importlib.util.find_spec(name) is not None:
                importlib.import_module(name)
    else:
        custom = keras.saving.get_custom_objects()
        for name in TF_ONLY_LAYERS:
            custom.setdefault(f"odezoo>{name}", _placeholder(name))


class _AfterExec(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        register_layers()


class _KerasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != "keras":
            return None
        uninstall()
        spec = importlib.util.find_spec("keras")
        if spec is not None and spec.loader is not None:
            spec.loader = _AfterExec(spec.loader)
        return spec


_finder = _KerasFinder()


def install() -> None:
    if "keras" in sys.modules:
        register_layers()
    elif _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def uninstall() -> None:
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
