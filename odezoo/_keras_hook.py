"""Register odezoo's Keras serializables as soon as Keras is imported.

``keras.models.load_model`` in a fresh process must find ``odezoo>SchemeBlock``
and friends after nothing more than ``import odezoo``; yet ``import odezoo``
must stay free of Keras/TensorFlow (``odezoo.data.load`` returns numpy arrays
without importing TensorFlow). If Keras is already imported, the layer modules
are imported at once; otherwise a one-shot import hook runs them right after
Keras's own module has finished executing.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# TensorFlow-only modules, registered only when Keras runs on TensorFlow.
_CORE = ("odezoo._layers",)
_TF_ONLY = ("odezoo._odeblock", "odezoo._flow")


def register_layers() -> None:
    for name in _CORE:
        importlib.import_module(name)
    import keras

    if keras.backend.backend() == "tensorflow":
        for name in _TF_ONLY:
            if importlib.util.find_spec(name) is not None:
                importlib.import_module(name)


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
