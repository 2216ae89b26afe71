"""``odezoo.build`` and ``odezoo.describe``: resolve a name, check the config, call the builder.

The pretrained path runs here too: :mod:`odezoo._weights` finds and verifies a tag's entry and file
(it imports no builder); this module builds the model and loads the verified bytes into it.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from typing import TYPE_CHECKING, Any

from odezoo import _registry, _weights
from odezoo._errors import ManifestError, WeightsIntegrityError, check_keys
from odezoo.ode.options import SOLVERS as ADAPTIVE_SOLVERS

if TYPE_CHECKING:  # import odezoo does not import Keras
    import keras


def _builder_params(builder):
    sig = inspect.signature(builder)
    named = {}
    var_kw = False
    for p in sig.parameters.values():
        if p.kind == p.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
            named[p.name] = p.default
        else:
            raise TypeError(f"Model builder {builder.__qualname__} must take keyword arguments only.")
    return named, var_kw


def defaults_of(spec) -> dict:
    named, _ = _builder_params(spec.builder)
    return {k: v for k, v in named.items() if v is not inspect.Parameter.empty}


def valid_config_keys(spec, config: dict) -> list[str]:
    """Keys the builder accepts; with ``**scheme_options`` also the chosen scheme's options."""
    named, var_kw = _builder_params(spec.builder)
    keys = set(named)
    if var_kw:
        scheme_name = config.get("scheme", named.get("scheme"))
        if isinstance(scheme_name, str):
            keys |= set(_registry.get_scheme(scheme_name).option_names())
    return sorted(keys)


def build(name: str, *, pretrained: bool | str | None = False, **config: Any) -> keras.Model:
    """Build a registered model and return an ordinary ``keras.Model``.

    Args:
        name: a registered model name or alias (``odezoo.list_models()``).
        pretrained: False; True for the model's default weight tag; or a tag
            name (``"digits"``). The tag supplies the config.
        **config: the builder's keyword configuration (``odezoo.describe(name)["defaults"]``).

    Raises:
        UnknownNameError: unknown model, scheme or weight tag.
        TypeError: an unknown config key (the message lists the valid ones).
        ValueError: a value out of range, or one that conflicts with the tag's config.
    """
    spec, preset = _registry.resolve_model(name)
    config = {**preset, **config}
    if pretrained is not False and pretrained is not None:
        return build_pretrained(spec, name, pretrained, config)
    check_keys(f"build({name!r})", config, valid_config_keys(spec, config))
    return spec.builder(**config)


def describe(name: str) -> dict[str, Any]:
    """Metadata of a registered model.

    Returns:
        dict with keys ``name``, ``kind``, ``family``, ``scheme``, ``order``,
        ``paper``, ``ode_reading``, ``defaults`` (the build config defaults,
        an alias's preset applied) and ``weights`` (available weight tags).
    """
    spec, preset = _registry.resolve_model(name)
    defaults = {**defaults_of(spec), **preset}
    scheme = defaults.get("scheme", defaults.get("solver"))
    order = None
    if isinstance(scheme, str):
        if scheme in ADAPTIVE_SOLVERS:  # adaptive solvers are not Schemes; their order is in the solver table
            order = ADAPTIVE_SOLVERS[scheme].order
        else:
            order = _registry.get_scheme(scheme).order
    return {
        "name": name,
        "kind": spec.kind,
        "family": spec.family,
        "scheme": scheme,
        "order": order,
        "paper": spec.paper,
        "ode_reading": spec.ode_reading,
        "defaults": defaults,
        "weights": _weights.list_tags(spec.name),
    }


def _check_tag_keys(spec, key: str, tag_config: dict, where: str) -> None:
    try:
        check_keys(f"entry {key!r} config", tag_config, valid_config_keys(spec, tag_config))
    except (TypeError, LookupError) as exc:
        raise ManifestError(f"{where}: {_weights.first_line(exc)}") from exc


def build_pretrained(spec, name: str, pretrained: bool | str, config: dict) -> keras.Model:
    """Build ``spec``'s model with a tag's config and load its verified weights.

    Order: config checks (no allocation), one read of the file that hashes it into a private 0700 temp
    folder, the build, then the load of that private copy, so the bytes loaded are the bytes hashed.
    """
    entry = _weights.find_entry(spec.name, pretrained)
    key, where = f"{entry['model']}.{entry['tag']}", os.path.join(entry["_folder"], _weights.MANIFEST)
    tag_config = entry["config"]
    conflicts = _weights.config_conflicts(config, tag_config)
    if conflicts:
        detail = "; ".join(f"{k}={given!r} but the tag has {k}={tagged!r}" for k, (given, tagged) in conflicts.items())
        raise ValueError(
            f"build({name!r}, pretrained={entry['tag']!r}): the config conflicts with the weights: "
            f"{detail}. Drop these keys or use pretrained=False."
        )
    _check_tag_keys(spec, key, tag_config, where)
    with tempfile.TemporaryDirectory(prefix="odezoo-weights-") as private:
        copy = os.path.join(private, f"{key}.weights.h5")
        path = _weights.read_verified(entry, copy)  # before anything is built or touched
        try:
            model = build(spec.name, **{**tag_config, **config})
        except (ValueError, TypeError) as exc:
            if set(config) - set(tag_config):
                raise  # the caller's own keys may be at fault
            raise ManifestError(
                f"{where}: entry {key!r} field 'config' is refused by the builder: {_weights.first_line(exc)}"
            ) from exc
        try:
            model.load_weights(copy)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise WeightsIntegrityError(
                f"Weights {key}: {path} could not be loaded into {spec.name}: {_weights.first_line(exc)}"
            ) from exc
    model.zoo_entry = {k: v for k, v in entry.items() if not k.startswith("_")}
    return model
