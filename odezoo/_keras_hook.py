"""Register odezoo's and its plugins' Keras serializables as soon as Keras is imported.

``keras.models.load_model`` in a fresh process must find ``odezoo>SchemeBlock``,
``odezoo>ODEBlock`` and the classes plugins ship (FFJORD's flow, ...) after
nothing more than ``import odezoo``; yet ``import odezoo`` must stay free of
Keras/TensorFlow (``odezoo.data.load`` returns numpy arrays without importing
TensorFlow). If Keras is already imported, :func:`register_layers` runs at
once; otherwise a one-shot import hook runs it right after Keras's own module
has finished executing. It imports the core's layers, hands the registry the
loader of declared Keras objects (:func:`load_keras_object`) and runs plugin
discovery, so every class declared with ``odezoo.register_keras_objects`` (the
plugins' own, and the core's below, declared the same way) is imported.

A class declared for one backend (``backend="tensorflow"``: the ODE solvers'
layers and the flow) is not imported under another (JAX); a placeholder
stands in whose ``from_config`` raises :class:`BackendError`, so loading a
saved ODE-Net under JAX names the backend it needs.
:func:`require_tensorflow` is the same check for code that asks for one of
those layers by name.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

from odezoo import _registry
from odezoo._errors import OdezooError, PluginError

# Backend-neutral core modules, imported whenever Keras is.
_CORE = ("odezoo._layers",)
# The core's TensorFlow-only serializable classes ("module:ClassName", Keras package "odezoo").
_CORE_TF_OBJECTS = ("odezoo.ode.block:ODEBlock",)
# Public name -> module of those classes (odezoo.ODEBlock, odezoo.layers.* resolve them lazily).
TF_ONLY_LAYERS = {t.partition(":")[2]: t.partition(":")[0] for t in _CORE_TF_OBJECTS}


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


def require_backend(backend: str, what: str) -> None:
    """Raise :class:`BackendError` unless Keras runs on ``backend``; ``what`` names the part asked for."""
    if backend == "tensorflow":
        require_tensorflow(what)
        return
    import keras

    current = keras.backend.backend()
    if current != backend:
        raise BackendError(
            f"{what} needs Keras's {backend!r} backend, but Keras is running on {current!r}. "
            f"Set KERAS_BACKEND={backend} before Keras is imported; see docs/backends.md."
        )


def _placeholder(obj: _registry.KerasObject):
    cls_name = obj.target.partition(":")[2]

    def from_config(cls, config):
        require_backend(obj.backend, f"Loading {obj.name} ({obj.target})")

    return type(
        cls_name,
        (),
        {
            "__doc__": f"Stands in for {obj.target} under Keras backends other than {obj.backend!r}.",
            "from_config": classmethod(from_config),
        },
    )


def load_keras_object(obj: _registry.KerasObject) -> None:
    """Import one declared class, or stand a placeholder in for it under another backend.

    Raises :class:`odezoo.PluginError` when the target cannot be imported or is
    not registered with Keras under the declared name.
    """
    import keras

    if obj.backend is not None and obj.backend != keras.backend.backend():
        keras.saving.get_custom_objects().setdefault(obj.name, _placeholder(obj))
        return
    module, _, attr = obj.target.partition(":")
    try:
        value = getattr(importlib.import_module(module), attr)
    except Exception as exc:
        raise PluginError(
            f"the Keras object {obj.name!r} cannot be imported from {obj.target}: {type(exc).__name__}: {exc}"
        ) from exc
    if keras.saving.get_registered_object(obj.name) is not value:
        package = obj.name.partition(">")[0]
        raise PluginError(
            f"{obj.target} is declared as the Keras object {obj.name!r} but Keras has no such registered "
            f"object; decorate the class with @keras.saving.register_keras_serializable(package={package!r})."
        )


def register_layers(defer=None) -> None:
    """Import the core's layers, hand the registry the Keras loader and discover (``defer``: see ensure_discovered)."""
    for name in _CORE:
        importlib.import_module(name)
    _registry.set_keras_loader(load_keras_object)
    try:
        _registry.ensure_discovered(defer)  # the plugins' declarations (re-entrant: a no-op inside discovery)
    except Exception:  # noqa: BLE001 - e.g. a bad ODEZOO_DISABLE_PLUGIN_AUTOLOAD: the registry's next use says so
        pass


_registry._declare_core(*_CORE_TF_OBJECTS, backend="tensorflow")


class _Wrapped(importlib.abc.Loader):
    """A module's own loader, with ``before()`` and ``after(succeeded)`` around its execution."""

    def __init__(self, loader, before, after):
        self._loader, self._before, self._after = loader, before, after

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def __getattr__(self, name):  # get_code (runpy, python -m), get_resource_reader, is_package, ...
        return getattr(self._loader, name)

    def exec_module(self, module):
        self._before()
        ok = False
        try:
            self._loader.exec_module(module)
            ok = True
        finally:
            self._after(module.__name__, ok)


_depth = 0  # modules executing under a watching loader (_Wrapped with _enter/_leave)


def _enter():
    global _depth
    _depth += 1


def _leave(name, ok):
    global _depth
    _depth -= 1
    if _depth == 0 and _retry.blockers:
        _retry.run(finished=name)  # the outermost watched module is done: the registration can run now


def _watched_spec(fullname, path, target):
    """The spec the other finders give ``fullname``, its loader watched (None: none found)."""
    for finder in list(sys.meta_path):
        find = getattr(finder, "find_spec", None)
        if finder is _finder or finder is _retry or find is None:
            continue
        spec = find(fullname, path, target)
        if spec is not None:
            if spec.loader is not None:
                spec.loader = _Wrapped(spec.loader, _enter, _leave)
            return spec
    return None


def _is_odezoo(module: str) -> bool:
    """Whether ``module`` is odezoo's own (core, built-in plugin) or an ``ODEZOO_PLUGIN_PATH`` file."""
    return module == "odezoo" or module.startswith(("odezoo.", "odezoo_path_plugins."))


def _initializing() -> list[str]:
    """Modules whose import is still running (Keras's own aside), e.g. ``odezoo.layers`` importing Keras."""
    names = []
    for name, module in list(sys.modules.items()):
        spec = getattr(module, "__spec__", None)
        if getattr(spec, "_initializing", False) and name.partition(".")[0] != "keras":
            names.append(name)
    return names


def register_when_imported(finished: str | None = None) -> None:
    """:func:`register_layers` now, or once the modules still being imported have finished.

    Keras is often imported by a module of odezoo or of a plugin (``import odezoo.layers`` as a
    script's first line). Discovering the plugins then would import that half-built module and
    skip the plugins that need it, so discovery waits until those imports are done: until the
    next import anywhere, or the next use of the registry, whichever comes first.
    """
    blockers = [name for name in _initializing() if name != finished]
    if not blockers:
        register_layers()
        return
    if not any(_is_odezoo(name) for name in blockers):
        # Only modules of the user's are half-built (a test module or a package importing Keras and odezoo at
        # its top): the core and the built-ins never import them, so they register now, and so does every
        # third-party plugin up to the first whose own package is one of them. A load_model right after the
        # import, with no import or registry call between (a test function), then finds odezoo's classes.
        register_layers(defer=lambda module: any(module == b or module.startswith(b + ".") for b in blockers))
        if _registry._discovered:
            return
    _retry.blockers = blockers
    _registry.set_pending_hook(_retry.run)
    if _retry not in sys.meta_path:
        sys.meta_path.insert(0, _retry)


class _Retry(importlib.abc.MetaPathFinder):
    """Runs the postponed :func:`register_layers` after the first import that ends once its blockers are done.

    Nothing runs inside ``find_spec`` itself (importing there would load the module being looked
    up twice): the module found is watched, and the registration runs when it has executed.
    """

    blockers: list[str] = []

    def run(self, finished=None) -> bool:
        """Register if the blockers have finished (``finished``: one whose code has just run); True once done."""
        if _depth or any(
            getattr(getattr(sys.modules.get(n), "__spec__", None), "_initializing", False)
            for n in self.blockers
            if n != finished
        ):
            return False
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        self.blockers = []
        _registry.set_pending_hook(None)
        register_layers()
        return True

    def find_spec(self, fullname, path, target=None):
        return _watched_spec(fullname, path, target)


_retry = _Retry()


class _KerasFinder(importlib.abc.MetaPathFinder):
    """Until Keras is imported: runs the registration after Keras's import, and watches odezoo's modules.

    An odezoo module imported before Keras may import it; its loader is wrapped so that
    the registration Keras's import postpones (:func:`register_when_imported`) runs as soon
    as that module is complete.
    """

    def find_spec(self, fullname, path, target=None):
        if fullname == "keras":
            uninstall()
            spec = importlib.util.find_spec("keras")
            if spec is not None and spec.loader is not None:
                spec.loader = _Wrapped(
                    spec.loader, lambda: None, lambda name, ok: register_when_imported() if ok else None
                )
            return spec
        if not fullname.startswith("odezoo."):
            return None
        return _watched_spec(fullname, path, target)


_finder = _KerasFinder()


def install() -> None:
    if "keras" in sys.modules:
        register_when_imported(finished="odezoo")  # called last in odezoo/__init__.py: odezoo itself is done
    elif _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def uninstall() -> None:
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
