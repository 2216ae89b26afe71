"""``odezoo.build`` and ``odezoo.describe``: resolve a name, check the config, call the builder."""

from __future__ import annotations

import inspect

from odezoo import _registry
from odezoo._errors import check_keys

# Adaptive solvers are not Schemes; describe() still reports their order.
ADAPTIVE_SOLVER_ORDERS = {"dopri5": 5, "tfp_dopri5": 5, "bdf": None}


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


def build(name: str, *, pretrained=False, **config):
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
        from odezoo import _weights

        return _weights.build_pretrained(spec, name, pretrained, config)
    check_keys(f"build({name!r})", config, valid_config_keys(spec, config))
    return spec.builder(**config)


def describe(name: str) -> dict:
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
        if scheme in ADAPTIVE_SOLVER_ORDERS:
            order = ADAPTIVE_SOLVER_ORDERS[scheme]
        else:
            order = _registry.get_scheme(scheme).order
    from odezoo import _weights

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
