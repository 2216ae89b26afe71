"""Scheme and model registries, and plugin discovery.

Every scheme and model family odezoo knows comes from a plugin: a module that
calls :func:`register_scheme` / :func:`register_model` when imported. Plugins
are found through the ``odezoo.plugins`` entry-point group of installed
distributions (odezoo's own built-ins included) and as ``.py`` files in the
folders of ``ODEZOO_PLUGIN_PATH``. Discovery runs once, lazily, on first access
to a registry, under a lock. Built-ins load first, so they own their names; each
third-party plugin or distribution that fails (a clash, an import error,
malformed metadata) fails alone. ``ODEZOO_DISABLE_PLUGIN_AUTOLOAD=1`` loads the
built-ins only.

A plugin that defines serializable Keras classes declares them with
:func:`register_keras_objects` as import strings, so declaring does not import
Keras; ``odezoo._keras_hook`` imports them once Keras is (placeholders stand in
under another backend than the one a class needs), so that
``keras.models.load_model`` works after ``import odezoo`` alone.
:func:`scoped_registry` removes what was registered inside it (for tests).
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
import re
import stat
import sys
import threading
import traceback
import warnings
from typing import Any, Callable

from odezoo._errors import PluginError, UnknownNameError, bad_value

ENTRY_POINT_GROUP = "odezoo.plugins"
PLUGIN_PATH_ENV = "ODEZOO_PLUGIN_PATH"
DISABLE_AUTOLOAD_ENV = "ODEZOO_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_DISTRIBUTION = "odezoo"
_BUILTIN_VALUE = re.compile(r"odezoo\.plugins\.[A-Za-z_][A-Za-z0-9_]*")
_AUTOLOAD_OFF = ("1", "true", "yes", "on")
_AUTOLOAD_ON = ("", "0", "false", "no", "off")
SUPPORTED_PLUGIN_APIS = (1,)
MODEL_KINDS = ("classifier", "flow", "series_classifier", "series_generative")
KERAS_BACKENDS = ("tensorflow", "jax", "torch")
_IMPORT_STRING = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
_KERAS_PACKAGE = re.compile(r"[A-Za-z_][\w.]*")
CORE_OWNER = "odezoo core"


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
    owner: Any = None  # the PluginRecord (or "module <name>") that registered it


@dataclasses.dataclass(frozen=True)
class KerasObject:
    """A serializable Keras class declared with :func:`register_keras_objects`.

    ``name`` is its Keras registered name (``"odezoo>FFJORDFlow"``), ``target``
    where it is defined (``"odezoo.plugins.ffjord.flow:FFJORDFlow"``), ``backend``
    the Keras backend it needs (None: any).
    """

    name: str
    target: str
    backend: str | None = None


@dataclasses.dataclass
class PluginRecord:
    name: str
    source: str
    api: int | None = None
    schemes: list = dataclasses.field(default_factory=list)
    models: list = dataclasses.field(default_factory=list)
    keras_objects: list = dataclasses.field(default_factory=list)  # registered Keras names


_lock = threading.RLock()
_state = threading.local()
_discovered = False
_discovering_thread: int | None = None
_schemes: dict[str, tuple[type, PluginRecord | str]] = {}
_models: dict[str, ModelSpec] = {}
_aliases: dict[str, tuple[str, dict]] = {}
_keras_objects: dict[str, tuple[KerasObject, PluginRecord | str]] = {}
_keras_pending: list[str] = []  # declared, not yet imported: Keras is not imported yet
# Set by odezoo._keras_hook once Keras is imported: imports one KerasObject (or stands a placeholder in)
_keras_loader: Callable[[KerasObject], None] | None = None
_loaded: list[PluginRecord] = []
_failures: list[dict] = []
_warnings: list[str] = []
_autoload = True
_attempted: set[str] = set()  # sources of the plugins discovery has loaded or failed (ensure_discovered's defer)


def _current_plugin() -> PluginRecord | None:
    return getattr(_state, "plugin", None)


def _owner_of(obj) -> PluginRecord | str:
    """The plugin loading now, else ``"module <name>"``: owners are compared by identity."""
    plugin = _current_plugin()
    if plugin is not None:
        return plugin
    return f"module {getattr(obj, '__module__', '?')}"


def _describe_owner(owner: PluginRecord | str) -> str:
    if isinstance(owner, PluginRecord):
        return f"plugin {owner.name!r} ({owner.source})"
    return owner


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
            raise TypeError(f"register_scheme({name!r}) decorates a subclass of odezoo.Scheme. Received: {cls!r}.")
        for attr in ("order", "num_fields"):
            value = getattr(cls, attr, None)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PluginError(
                    f"Scheme {name!r} ({cls.__module__}.{cls.__qualname__}) must declare `{attr}` "
                    f"as a positive int. Received: {attr}={value!r}."
                )
        if getattr(cls, "state_size", 1) not in (1, 2):
            raise PluginError(f"Scheme {name!r}: state_size must be 1 or 2. Received: state_size={cls.state_size!r}.")
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
                    f"Model name {name!r} is already registered by {_describe_owner(existing.owner)} "
                    f"({existing.builder.__module__}.{existing.builder.__qualname__}); "
                    f"{_describe_owner(_owner_of(builder))} tried to register "
                    f"{builder.__module__}.{builder.__qualname__}."
                )
            for alias in aliases:
                taken = _aliases.get(alias)
                if alias in _models or (taken is not None and taken[0] != name):
                    raise PluginError(f"Model alias {alias!r} of {name!r} is already a registered model name.")
            owner = _owner_of(builder)
            plugin_name = owner.name if isinstance(owner, PluginRecord) else owner
            _models[name] = ModelSpec(name, builder, kind, family, paper, ode_reading, aliases, plugin_name, owner)
            for alias, cfg in aliases.items():
                _aliases[alias] = (name, dict(cfg))
            plugin = _current_plugin()
            if plugin is not None:
                plugin.models.append(name)
        return builder

    return decorator


def register_keras_objects(*targets: str, package: str, backend: str | None = None) -> None:
    """Declare a plugin's serializable Keras classes, so that ``load_model`` needs only ``import odezoo``.

    Args:
        *targets: import strings ``"package.module:ClassName"`` of classes decorated
            with ``@keras.saving.register_keras_serializable(package=package)`` under
            their class name. Declaring imports nothing: odezoo imports each module
            once Keras is imported (at once, if it already is).
        package: the ``package`` they are registered under with Keras; the Keras
            registered name of ``ClassName`` is ``"package>ClassName"``.
        backend: the Keras backend the classes need (``"tensorflow"``), or None for
            any. Under another backend the module is not imported; a placeholder
            stands in whose loading raises an error naming the backend needed.

    Call it at import time of the plugin module (usually its ``__init__``). A bad
    declaration, a clash with another owner's class of the same registered name,
    or a target that cannot be imported or is not registered with Keras under
    that name raises :class:`odezoo.PluginError`: inside a plugin, that plugin
    fails as a whole (reported by ``odezoo plugins``). Declaring the same target
    again is a no-op.
    """
    declared = _keras_declarations(targets, package, backend)
    owner = _current_plugin() or f"module {declared[0].target.partition(':')[0]}"
    with _lock:
        for obj in declared:
            _declare_keras_object(obj, owner)
        # during discovery only these load now (a plugin's failure is its own); the rest when it ends
        _load_pending_keras_objects(raise_for=owner, only=None if _discovered else {o.name for o in declared})


def _keras_declarations(targets, package, backend) -> list[KerasObject]:
    if not targets:
        raise PluginError("register_keras_objects() needs at least one \"module:ClassName\" import string.")
    if not isinstance(package, str) or not _KERAS_PACKAGE.fullmatch(package):
        raise PluginError(str(bad_value("package", package, "a Keras package name (letters, digits, _ and .)")))
    if backend is not None and backend not in KERAS_BACKENDS:
        raise PluginError(str(bad_value("backend", backend, "None or one of " + ", ".join(map(repr, KERAS_BACKENDS)))))
    declared = []
    for target in targets:
        if not isinstance(target, str) or not _IMPORT_STRING.fullmatch(target):
            raise PluginError(str(bad_value("target", target, 'an import string "package.module:ClassName"')))
        declared.append(KerasObject(f"{package}>{target.rpartition(':')[2]}", target, backend))
    return declared


def _declare_keras_object(obj: KerasObject, owner: PluginRecord | str) -> None:
    existing = _keras_objects.get(obj.name)
    if existing is not None:
        if existing[0] == obj:
            return
        raise PluginError(
            f"Keras object {obj.name!r} is already declared by {_describe_owner(existing[1])} "
            f"({existing[0].target}); {_describe_owner(owner)} tried to declare {obj.target} under it."
        )
    _keras_objects[obj.name] = (obj, owner)
    _keras_pending.append(obj.name)
    if isinstance(owner, PluginRecord):
        owner.keras_objects.append(obj.name)


def _load_pending_keras_objects(raise_for: PluginRecord | str | None = None, only: set | None = None) -> None:
    """Import the declared Keras objects (those named in ``only``, if given) once Keras is imported.

    Call with ``_lock`` held. A failure of ``raise_for``'s own object is raised
    (inside a plugin's import: that plugin fails); one of an already loaded plugin
    fails that plugin after the fact (rolled back, reported); one of the core or
    of a script is a warning.
    """
    loader = _keras_loader
    if loader is None:
        return
    for name in [n for n in _keras_pending if only is None or n in only]:
        _keras_pending.remove(name)
        if name not in _keras_objects:
            continue
        obj, owner = _keras_objects[name]
        try:
            with _loading(owner if isinstance(owner, PluginRecord) else None):  # who registers what it defines
                loader(obj)
        except Exception as exc:
            if owner is raise_for:
                _keras_objects.pop(name, None)
                raise
            _keras_failed(obj, owner, exc)


def _keras_failed(obj: KerasObject, owner: PluginRecord | str, exc: Exception) -> None:
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(owner, PluginRecord) and owner in _loaded:
        _loaded.remove(owner)
        _unregister(owner)
        _fail(owner.name, owner.source, message, traceback.format_exc())
    else:
        _keras_objects.pop(obj.name, None)
        warnings.warn(
            f"odezoo: the Keras object {obj.name!r} of {_describe_owner(owner)} is not available "
            f"to load_model: {message}",
            stacklevel=4,
        )


def set_keras_loader(loader: Callable[[KerasObject], None]) -> None:
    """Called by ``odezoo._keras_hook`` when Keras is imported: import what is declared, now and from now on.

    Before discovery has finished, nothing is imported here: discovery imports
    the pending objects when it ends, so that a class in a plugin's package is
    first imported by that plugin's own entry point, not on behalf of another
    owner. Runs inside Keras's import, so it never waits for the lock: if another
    thread holds it, that thread imports the pending objects when it is done.
    """
    global _keras_loader
    _keras_loader = loader
    if _discovered and _lock.acquire(blocking=False):
        try:
            _load_pending_keras_objects()
        finally:
            _lock.release()


def keras_object(name: str) -> KerasObject | None:
    """The declaration of the Keras registered name ``name`` (``"odezoo>FFJORDFlow"``), or None."""
    ensure_discovered()
    entry = _keras_objects.get(name)
    return entry[0] if entry is not None else None


def _declare_core(*targets: str, backend: str | None = None) -> None:
    """The core's own serializable classes, declared the same way (owned by the core)."""
    with _lock:
        for obj in _keras_declarations(targets, "odezoo", backend):
            _declare_keras_object(obj, CORE_OWNER)


def _check_name(what: str, name) -> None:
    if not isinstance(name, str) or not name or not name.replace("_", "").isalnum() or name != name.lower():
        raise ValueError(f"Invalid {what} name. Received: name={name!r}. Allowed: a lower-case snake_case string.")


def _unregister(record: PluginRecord, new_modules: frozenset = frozenset()) -> None:
    """Roll back what ``record`` itself registered, and nothing another plugin owns.

    A module in ``new_modules`` (first imported while ``record`` loaded: another
    plugin's module, say) that defined a rolled-back object is dropped from
    ``sys.modules``, so that its own entry point later imports it afresh instead
    of finding it cached and empty.
    """
    modules = set()
    for name in record.schemes:
        entry = _schemes.get(name)
        if entry is not None and entry[1] is record:
            del _schemes[name]
            modules.add(entry[0].__module__)
    for name in record.models:
        spec = _models.get(name)
        if spec is not None and spec.owner is record:
            del _models[name]
            modules.add(spec.builder.__module__)
            for alias in spec.aliases:
                _aliases.pop(alias, None)
    for name in record.keras_objects:
        entry = _keras_objects.get(name)
        if entry is not None and entry[1] is record:
            del _keras_objects[name]
    for module in modules & new_modules:
        sys.modules.pop(module, None)


@contextlib.contextmanager
def scoped_registry():
    """A context in which registrations are temporary: on exit, what was registered inside is removed.

    For tests, odezoo's and a plugin's own::

        with odezoo.scoped_registry():
            odezoo.register_scheme("my_test_scheme")(MyScheme)
            ...                                  # build, check, ...
        assert "my_test_scheme" not in odezoo.list_schemes()

    Plugins are discovered before the scope opens, so discovery is never undone.
    Schemes, models (with their aliases) and Keras-object declarations made
    inside are removed, and a removed scheme class's ``name`` is reset to None;
    what was registered before stays. Classes Keras itself registered stay
    registered with Keras. Scopes nest.
    """
    ensure_discovered()
    with _lock:
        before = (set(_schemes), set(_models), set(_aliases), set(_keras_objects))
        lists = {id(r): (r, len(r.schemes), len(r.models), len(r.keras_objects)) for r in _loaded}
    try:
        yield
    finally:
        with _lock:
            for name in set(_schemes) - before[0]:
                cls = _schemes.pop(name)[0]
                if cls.__dict__.get("name") == name:
                    cls.name = None
            for name in set(_models) - before[1]:
                del _models[name]
            for name in set(_aliases) - before[2]:
                del _aliases[name]
            for name in set(_keras_objects) - before[3]:
                del _keras_objects[name]
            for record, schemes, models, keras_objects in lists.values():
                del record.schemes[schemes:], record.models[models:], record.keras_objects[keras_objects:]


# --------------------------------------------------------------------------- discovery
@contextlib.contextmanager
def _loading(record: PluginRecord):
    previous = _current_plugin()
    _state.plugin = record
    try:
        yield
    finally:
        _state.plugin = previous


def _fail(name: str, source: str, message: str, tb: str = "") -> None:
    _failures.append({"name": name, "source": source, "error": message, "traceback": tb})
    warnings.warn(f"odezoo plugin {name!r} ({source}) was skipped: {message}", stacklevel=4)


def _load_one(name: str, source: str, importer: Callable[[], Any]) -> None:
    record = PluginRecord(name=name, source=source)
    before = set(sys.modules)
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
        _unregister(record, frozenset(set(sys.modules) - before))
        raise
    except BaseException as exc:  # a broken plugin (even one calling sys.exit) must not break the others
        _unregister(record, frozenset(set(sys.modules) - before))
        _fail(name, source, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        return
    _loaded.append(record)


def autoload_enabled() -> bool:
    """Whether third-party plugins load; ``ODEZOO_DISABLE_PLUGIN_AUTOLOAD=1`` keeps to the built-ins.

    1/true/yes/on disable autoload; unset, empty, 0/false/no/off leave it on
    (case and surrounding spaces ignored). Any other value is an error, not a
    guess: the switch exists to keep code from running, so a typo must not
    silently load it, nor silently drop plugins the user meant to keep.
    """
    raw = os.environ.get(DISABLE_AUTOLOAD_ENV, "")
    value = raw.strip().lower()
    if value in _AUTOLOAD_OFF:
        return False
    if value in _AUTOLOAD_ON:
        return True
    raise bad_value(
        DISABLE_AUTOLOAD_ENV,
        raw,
        "'1', 'true', 'yes' or 'on' (built-in plugins only); unset, '', '0', 'false', 'no' or 'off' (autoload)",
    )


def _declares_group(text: str | None) -> bool:
    return bool(text) and any(line.strip().startswith("[") and ENTRY_POINT_GROUP in line for line in text.splitlines())


def _unparsable_lines(text: str) -> list[str]:
    """Lines of an entry_points.txt that are neither headers, comments nor ``name = value``."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith(("[", "#", ";")) and "=" not in line]


def _group_entry_points(dist, text: str) -> list:
    """The ``odezoo.plugins`` entry points of one distribution; ``_Malformed`` says what is wrong."""
    if not dist.metadata["Name"]:
        raise _Malformed("its METADATA has no Name")
    try:
        eps = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
    except Exception as exc:
        bad = _unparsable_lines(text)
        where = f" (line {bad[0]!r} has no '=')" if bad else ""
        raise _Malformed(f"entry_points.txt cannot be parsed{where}: {type(exc).__name__}: {exc}") from None
    if not eps:
        raise _Malformed(
            f"entry_points.txt names {ENTRY_POINT_GROUP} but declares no entry point in that group "
            "(a broken section header?)"
        )
    return eps


class _Malformed(Exception):
    """A distribution's metadata that cannot be read (message says what is wrong)."""


def _distributions(autoload: bool) -> list:
    """Installed distributions, each name once (the first on sys.path wins, as importlib decides)."""
    if not autoload:
        try:
            return [importlib.metadata.distribution(BUILTIN_DISTRIBUTION)]
        except importlib.metadata.PackageNotFoundError:
            return []
    found, seen = [], set()
    for dist in importlib.metadata.distributions():
        try:  # importlib's own notion of "the same distribution" (a folder name for most)
            key = dist._normalized_name
        except Exception:
            key = None
        key = key or str(getattr(dist, "_path", id(dist)))
        if key in seen:
            continue
        seen.add(key)
        found.append(dist)
    return found


def _dist_identity(dist) -> tuple[str, str]:
    """A name and a source line for a distribution, even one whose METADATA is broken."""
    path = str(getattr(dist, "_path", dist))
    try:
        name, version = dist.metadata["Name"], dist.version
    except Exception:
        name = version = None
    if name:
        return name, f"distribution {name} {version}"
    return os.path.basename(path), f"distribution at {path}"


def _by_key(entries: list) -> list:
    return sorted(entries, key=lambda entry: entry[0])


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _entry_point_plugins(autoload: bool = True) -> list:
    """``(name, source, importer, module)`` of every entry point: odezoo's built-ins first, then third parties.

    A built-in is an entry point of the distribution named ``odezoo`` whose value is a
    module of ``odezoo.plugins``; no other distribution can claim that, whatever it
    names its entry points. A distribution whose metadata cannot be read is
    reported and skipped alone.
    """
    builtin, third_party = [], []
    for dist in _distributions(autoload):
        try:
            text = dist.read_text("entry_points.txt")
            if not _declares_group(text):
                continue
            eps = _group_entry_points(dist, text)
            dist_name, version = dist.metadata["Name"], dist.version
        except Exception as exc:
            name, source = _dist_identity(dist)
            detail = str(exc) if isinstance(exc, _Malformed) else f"{type(exc).__name__}: {exc}"
            _fail(name, source, f"malformed metadata: {detail}")
            continue
        for ep in eps:
            is_builtin = _normalize(dist_name) == BUILTIN_DISTRIBUTION and _BUILTIN_VALUE.fullmatch(ep.value)
            entry = (ep.name, ep.value, f"entry point {ep.value} ({dist_name} {version})", ep.load)
            (builtin if is_builtin else third_party).append(((_normalize(dist_name), ep.name), entry))
    plugins, seen = [], set()
    for _, (name, value, source, load) in _by_key(builtin) + (_by_key(third_party) if autoload else []):
        if value in seen:  # a module listed twice (or a built-in's listed by another distribution) loads once
            continue
        seen.add(value)
        plugins.append((name, source, load, value.partition(":")[0].strip()))
    return plugins


def _warn_if_writable_by_others(path: str, what: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & stat.S_IWOTH:
        message = (
            f"odezoo plugin {what} {path!r} is writable by other users (mode {stat.filemode(mode)}): "
            f"anyone on this machine can change code odezoo runs; loaded anyway, `chmod o-w` it."
        )
        _warnings.append(message)
        warnings.warn(message, stacklevel=4)


def _path_plugins():
    """``(name, path, importer)`` of the ``.py`` files in the folders of ``ODEZOO_PLUGIN_PATH``.

    A folder or file writable by other users is loaded, with a warning: refusing
    would break shared setups that are fine (a group's scratch folder), while
    the warning names the exact path to fix.
    """
    raw = os.environ.get(PLUGIN_PATH_ENV, "")
    for folder in [p for p in raw.split(os.pathsep) if p]:
        if not os.path.isdir(folder):
            warnings.warn(f"{PLUGIN_PATH_ENV} lists {folder!r}, which is not a folder; ignored.", stacklevel=3)
            continue
        _warn_if_writable_by_others(folder, "folder")
        for fname in sorted(os.listdir(folder)):
            if not fname.endswith(".py") or fname.startswith((".", "_")):
                continue
            path = os.path.abspath(os.path.join(folder, fname))
            _warn_if_writable_by_others(path, "file")
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


_pending_hook: Callable[[], object] | None = None


def set_pending_hook(hook: Callable[[], object] | None) -> None:
    """``odezoo._keras_hook``'s postponed registration, run by the next :func:`ensure_discovered` (None: none)."""
    global _pending_hook
    _pending_hook = hook


def ensure_discovered(defer: Callable[[str], bool] | None = None) -> None:
    """Load every plugin once (thread-safe, re-entrant for plugins that query the registry).

    Built-ins load first, then third-party entry points, then ``ODEZOO_PLUGIN_PATH``
    files; with ``ODEZOO_DISABLE_PLUGIN_AUTOLOAD=1`` only the built-ins.

    ``defer`` (for ``odezoo._keras_hook``): a predicate on an entry point's module
    name; the first plugin it holds back, and every plugin after it (so the order,
    and with it who owns a contested name, does not change), load at the next
    call. Those loaded so far are kept.
    """
    global _discovered, _discovering_thread, _autoload
    if _pending_hook is not None and defer is None:
        _pending_hook()  # Keras was imported by a module still importing then; register now if it is done
    if _discovered:
        return
    with _lock:
        if _discovered or _discovering_thread == threading.get_ident():
            return
        autoload = autoload_enabled()  # a bad value raises before any plugin runs
        _discovering_thread = threading.get_ident()
        try:
            _autoload = autoload
            held_back = False
            for name, source, importer, module in _entry_point_plugins(autoload):
                if source in _attempted:
                    continue
                if defer is not None and defer(module):
                    held_back = True
                    break
                _attempted.add(source)
                _load_one(name, source, importer)
            if not held_back:
                for name, source, importer in _path_plugins() if autoload else ():
                    _load_one(name, source, importer)
            _discovered = not held_back
            _load_pending_keras_objects()  # the core's, and those declared before Keras was imported
        finally:
            _discovering_thread = None


def plugin_report() -> dict:
    """What discovery found.

    Returns:
        ``{"loaded": [{"name", "source", "api", "schemes", "models", "keras_objects"}, ...],
        "failures": [{"name", "source", "error"}, ...], "runtime": {...},
        "autoload": bool, "warnings": [str, ...]}``. Registrations made outside
        any plugin (in a user's own script) appear under ``"runtime"``;
        ``"autoload"`` is False under ``ODEZOO_DISABLE_PLUGIN_AUTOLOAD=1``;
        ``"warnings"`` are the plugin paths writable by other users.
    """
    ensure_discovered()
    with _lock:
        loaded = [dataclasses.asdict(r) for r in _loaded]
        in_plugins = {n for r in _loaded for n in r.schemes} | {n for r in _loaded for n in r.models}
        runtime = {
            "schemes": sorted(n for n in _schemes if n not in in_plugins),
            "models": sorted(n for n in _models if n not in in_plugins),
            "keras_objects": sorted(
                n for n, (_, owner) in _keras_objects.items() if isinstance(owner, str) and owner != CORE_OWNER
            ),
        }
        failures = [{k: f[k] for k in ("name", "source", "error")} for f in _failures]
    return {
        "loaded": loaded,
        "failures": failures,
        "runtime": runtime,
        "autoload": _autoload,
        "warnings": list(_warnings),
    }


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
