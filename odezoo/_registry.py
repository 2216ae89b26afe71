"""Scheme and model registries, and plugin discovery.

Every scheme and model family odezoo knows comes from a plugin: a module that
calls :func:`register_scheme` / :func:`register_model` when imported. Plugins
are found through the ``odezoo.plugins`` entry-point group of installed
distributions (odezoo's own built-ins included) and as ``.py`` files in the
folders of ``ODEZOO_PLUGIN_PATH``. Discovery runs once, lazily, on first access
to a registry, under a lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import threading
import traceback
import warnings
from typing import Any, Callable

from odezoo._errors import PluginError, UnknownNameError

ENTRY_POINT_GROUP = "odezoo.plugins"
PLUGIN_PATH_ENV = "ODEZOO_PLUGIN_PATH"
SUPPORTED_PLUGIN_APIS = (1,)
MODEL_KINDS = ("classifier", "flow")


@dataclasses.dataclass
class ModelSpec:
    """What :func:`register_model` records about one model family."""

    name: str
    builder: Callable[..., Any]
    kind: str
    family: str
    paper: str
    ode_reading: str
    aliases: dict
    plugin: str


@dataclasses.dataclass
class PluginRecord:
    name: str
    source: str
    api: int | None = None
    schemes: list = dataclasses.field(default_factory=list)
    models: list = dataclasses.field(default_factory=list)


_lock = threading.RLock()
_state = threading.local()
_discovered = False
_discovering_thread: int | None = None
_schemes: dict[str, tuple[type, str]] = {}
_models: dict[str, ModelSpec] = {}
_aliases: dict[str, tuple[str, dict]] = {}
_loaded: list[PluginRecord] = []
_failures: list[dict] = []


def _current_plugin() -> PluginRecord | None:
    return getattr(_state, "plugin", None)


def _owner_of(obj) -> str:
    plugin = _current_plugin()
    if plugin is not None:
        return plugin.name
    return f"module {getattr(obj, '__module__', '?')}"


def _describe_owner(plugin_name: str) -> str:
    current = _current_plugin()
    for rec in _loaded + ([current] if current is not None else []):
        if rec.name == plugin_name:
            return f"plugin {rec.name!r} ({rec.source})"
    return f"{plugin_name!r}" if not plugin_name.startswith("module ") else plugin_name


# --------------------------------------------------------------------------- registration
def register_scheme(name: str):
    """Class decorator registering a :class:`odezoo.Scheme` subclass under ``name``.

    Registering the same class again is a no-op; registering another object under
    a taken name raises :class:`odezoo.PluginError` naming both owners.
    """
    _check_name("scheme", name)

    def decorator(cls):
        from odezoo._scheme import Scheme

        if not (isinstance(cls, type) and issubclass(cls, Scheme)):
            raise TypeError(
                f"register_scheme({name!r}) decorates a subclass of odezoo.Scheme. Received: {cls!r}."
            )
        for attr in ("order", "num_fields"):
            value = getattr(cls, attr, None)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PluginError(
                    f"Scheme {name!r} ({cls.__module__}.{cls.__qualname__}) must declare `{attr}` "
                    f"as a positive int. Received: {attr}={value!r}."
                )
        if getattr(cls, "state_size", 1) not in (1, 2):
            raise PluginError(
                f"Scheme {name!r}: state_size must be 1 or 2. Received: state_size={cls.state_size!r}."
            )
        with _lock:
            existing = _schemes.get(name)
            if existing is not None:
                if existing[0] is cls:
                    return cls
                raise PluginError(
                    f"Scheme name {name!r} is already registered by {_describe_owner(existing[1])} "
                    f"({existing[0].__module__}.{existing[0].__qualname__}); "
                    f"{_describe_owner(_owner_of(cls))} tried to register "
                    f"{cls.__module__}.{cls.__qualname__} under it."
                )
            own = cls.__dict__.get("name")
            if own is not None and own in _schemes and _schemes[own][0] is cls:
                raise PluginError(
                    f"{cls.__module__}.{cls.__qualname__} is already registered as {own!r}; a class has one "
                    f"name (saved models record it). Register a subclass under {name!r} instead."
                )
            _schemes[name] = (cls, _owner_of(cls))
            cls.name = name
            plugin = _current_plugin()
            if plugin is not None:
                plugin.schemes.append(name)
        return cls

    return decorator


def register_model(
    name: str,
    *,
    kind: str,
    family: str,
    paper: str,
    ode_reading: str,
    aliases: dict | None = None,
):
    """Decorator registering a model builder under ``name``.

    Args:
        name: the model's registered name (``"resnet"``).
        kind: ``"classifier"`` or ``"flow"``.
        family: the family it belongs to (usually ``name``).
        paper: citation of the paper the model comes from.
        ode_reading: one sentence: which differential equation and discretisation it is.
        aliases: optional ``{alias: config}``, e.g. ``{"resnet20": {"depth": 20}}``;
            ``build(alias)`` builds ``name`` with that config as defaults.

    The builder takes its configuration as keyword arguments and returns a
    ``keras.Model``; its keyword defaults are what ``describe(name)["defaults"]`` shows.
    """
    _check_name("model", name)
    if kind not in MODEL_KINDS:
        raise ValueError(f"Invalid value for `kind`. Received: kind={kind!r}. Allowed: {MODEL_KINDS}.")
    aliases = dict(aliases or {})
    for alias in aliases:
        _check_name("model alias", alias)

    def decorator(builder):
        with _lock:
            existing = _models.get(name)
            if existing is not None:
                if existing.builder is builder:
                    return builder
                raise PluginError(
                    f"Model name {name!r} is already registered by {_describe_owner(existing.plugin)} "
                    f"({existing.builder.__module__}.{existing.builder.__qualname__}); "
                    f"{_describe_owner(_owner_of(builder))} tried to register "
                    f"{builder.__module__}.{builder.__qualname__}."
                )
            for alias in aliases:
                taken = _aliases.get(alias)
                if alias in _models or (taken is not None and taken[0] != name):
                    raise PluginError(f"Model alias {alias!r} of {name!r} is already a registered model name.")
            _models[name] = ModelSpec(name, builder, kind, family, paper, ode_reading, aliases, _owner_of(builder))
            for alias, cfg in aliases.items():
                _aliases[alias] = (name, dict(cfg))
            plugin = _current_plugin()
            if plugin is not None:
                plugin.models.append(name)
        return builder

    return decorator


def _check_name(what: str, name) -> None:
    if not isinstance(name, str) or not name or not name.replace("_", "").isalnum() or name != name.lower():
        raise ValueError(
            f"Invalid {what} name. Received: name={name!r}. Allowed: a lower-case snake_case string."
        )


def _unregister(record: PluginRecord) -> None:
    for name in record.schemes:
        _schemes.pop(name, None)
    for name in record.models:
        spec = _models.pop(name, None)
        if spec is not None:
            for alias in spec.aliases:
                _aliases.pop(alias, None)


# --------------------------------------------------------------------------- discovery
@contextlib.contextmanager
def _loading(record: PluginRecord):
    previous = _current_plugin()
    _state.plugin = record
    try:
        yield
    finally:
        _state.plugin = previous


def _load_one(name: str, source: str, importer: Callable[[], Any]) -> None:
    record = PluginRecord(name=name, source=source)
    try:
        with _loading(record):
            module = importer()
            api = getattr(module, "ODEZOO_PLUGIN_API", None)
            record.api = api
            if api is not None and api not in SUPPORTED_PLUGIN_APIS:
                raise PluginError(
                    f"declares ODEZOO_PLUGIN_API = {api!r}; this odezoo supports "
                    f"{', '.join(map(str, SUPPORTED_PLUGIN_APIS))}"
                )
    except KeyboardInterrupt:
        _unregister(record)
        raise
    except BaseException as exc:  # a broken plugin (even one calling sys.exit) must not break the others
        _unregister(record)
        message = f"{type(exc).__name__}: {exc}"
        _failures.append(
            {"name": name, "source": source, "error": message, "traceback": traceback.format_exc()}
        )
        warnings.warn(f"odezoo plugin {name!r} ({source}) was skipped: {message}", stacklevel=3)
        return
    _loaded.append(record)


def _entry_point_plugins():
    eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    seen = set()
    for ep in sorted(eps, key=lambda e: (e.dist.name if e.dist else "", e.name)):
        key = (ep.name, ep.value)
        if key in seen:
            continue
        seen.add(key)
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "?"
        yield ep.name, f"entry point {ep.value} ({dist})", ep.load


def _path_plugins():
    raw = os.environ.get(PLUGIN_PATH_ENV, "")
    for folder in [p for p in raw.split(os.pathsep) if p]:
        if not os.path.isdir(folder):
            warnings.warn(f"{PLUGIN_PATH_ENV} lists {folder!r}, which is not a folder; ignored.", stacklevel=3)
            continue
        for fname in sorted(os.listdir(folder)):
            if not fname.endswith(".py") or fname.startswith((".", "_")):
                continue
            path = os.path.abspath(os.path.join(folder, fname))
            stem = fname[:-3]
            digest = hashlib.sha1(path.encode()).hexdigest()[:10]
            modname = f"odezoo_path_plugins.{stem}_{digest}"

            def importer(path=path, modname=modname):
                if modname in sys.modules:
                    return sys.modules[modname]
                spec = importlib.util.spec_from_file_location(modname, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[modname] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(modname, None)
                    raise
                return module

            yield stem, path, importer


def ensure_discovered() -> None:
    """Load every plugin once (thread-safe, re-entrant for plugins that query the registry)."""
    global _discovered, _discovering_thread
    if _discovered:
        return
    with _lock:
        if _discovered or _discovering_thread == threading.get_ident():
            return
        _discovering_thread = threading.get_ident()
        try:
            for name, source, importer in list(_entry_point_plugins()) + list(_path_plugins()):
                _load_one(name, source, importer)
            _discovered = True
        finally:
            _discovering_thread = None


def plugin_report() -> dict:
    """What discovery found.

    Returns:
        ``{"loaded": [{"name", "source", "api", "schemes", "models"}, ...],
        "failures": [{"name", "source", "error"}, ...]}``; registrations made
        outside any plugin (in a user's own script) appear under ``"runtime"``.
    """
    ensure_discovered()
    with _lock:
        loaded = [dataclasses.asdict(r) for r in _loaded]
        in_plugins = {n for r in _loaded for n in r.schemes} | {n for r in _loaded for n in r.models}
        runtime = {
            "schemes": sorted(n for n in _schemes if n not in in_plugins),
            "models": sorted(n for n in _models if n not in in_plugins),
        }
        failures = [{k: f[k] for k in ("name", "source", "error")} for f in _failures]
    return {"loaded": loaded, "failures": failures, "runtime": runtime}


# --------------------------------------------------------------------------- lookup
def list_schemes() -> list[str]:
    """Sorted names of the registered schemes."""
    ensure_discovered()
    return sorted(_schemes)


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of registered models (aliases included) matching an fnmatch ``pattern``."""
    ensure_discovered()
    names = set(_models) | set(_aliases)
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


def get_scheme(name: str) -> type:
    """The registered :class:`odezoo.Scheme` subclass called ``name``."""
    ensure_discovered()
    try:
        return _schemes[name][0]
    except (KeyError, TypeError):
        raise UnknownNameError("scheme", name, _schemes) from None


def resolve_model(name: str) -> tuple[ModelSpec, dict]:
    """The :class:`ModelSpec` for a name or alias, and the alias's preset config."""
    ensure_discovered()
    if isinstance(name, str) and name in _models:
        return _models[name], {}
    if isinstance(name, str) and name in _aliases:
        target, preset = _aliases[name]
        return _models[target], dict(preset)
    raise UnknownNameError("model", name, set(_models) | set(_aliases))
