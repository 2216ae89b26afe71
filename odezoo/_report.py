"""The tables odezoo prints: models, schemes, ``describe`` and the plugin report, as plain text.

Shared by the CLI (:mod:`odezoo.cli`) and the demo (:mod:`odezoo._demo`); reads the registry through
the public API and imports neither of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import odezoo


def format_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces, a rule under the header."""
    rows = [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in [list(header)] + rows) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def scheme_owners() -> dict:
    """``{scheme name: owning plugin}``; schemes registered outside a plugin map to "(runtime)"."""
    report = odezoo.plugin_report()
    owners = {name: rec["name"] for rec in report["loaded"] for name in rec["schemes"]}
    for name in report["runtime"]["schemes"]:
        owners[name] = "(runtime)"
    return owners


def schemes_table(measured: dict | None = None) -> str:
    """The registered schemes: name, order, num_fields, state_size, plugin.

    Args:
        measured: optional ``{name: slope}``, shown as a "measured" column.
    """
    owners = scheme_owners()
    header = ["scheme", "order", "num_fields", "state_size", "plugin"]
    if measured is not None:
        header.insert(2, "measured")
    rows = []
    for name in odezoo.list_schemes():
        cls = odezoo.get_scheme(name)
        row = [name, cls.order, cls.num_fields, cls.state_size, owners.get(name, "?")]
        if measured is not None:
            slope = measured.get(name)
            row.insert(2, "-" if slope is None else f"{slope:.2f}")
        rows.append(row)
    return format_table(header, rows)


def registered_models() -> list[str]:
    """Registered model names without their depth aliases."""
    report = odezoo.plugin_report()
    names = {n for rec in report["loaded"] for n in rec["models"]} | set(report["runtime"]["models"])
    return sorted(names)


def models_table() -> str:
    """One row per registered model: name, kind, scheme, order, aliases."""
    models = registered_models()
    aliases = {m: [] for m in models}
    for name in odezoo.list_models():
        if name not in aliases:
            family = odezoo.describe(name)["family"]
            aliases.setdefault(family, []).append(name)
    rows = []
    for name in models:
        info = odezoo.describe(name)
        rows.append([name, info["kind"], info["scheme"], info["order"], ", ".join(aliases.get(name, [])) or "-"])
    return format_table(["model", "kind", "scheme", "order", "aliases"], rows)


def format_describe(info: dict) -> str:
    """``describe()``'s dict as aligned ``key: value`` lines, defaults one per line."""
    width = max(len(k) for k in info)
    lines = []
    for key, value in info.items():
        if key == "defaults":
            lines.append(f"{key}:")
            lines.extend(f"  {k} = {v!r}" for k, v in value.items())
        elif key == "weights":
            lines.append(f"{key.ljust(width)}  {', '.join(value) if value else '(none)'}")
        else:
            lines.append(f"{key.ljust(width)}  {value}")
    return "\n".join(lines)


def format_plugins(report: dict) -> str:
    """``plugin_report()`` as text: loaded plugins and what each registered, then failures and warnings."""
    lines = [f"loaded ({len(report['loaded'])}):"]
    for rec in report["loaded"]:
        made = [f"schemes: {', '.join(rec['schemes'])}"] if rec["schemes"] else []
        made += [f"models: {', '.join(rec['models'])}"] if rec["models"] else []
        api = "" if rec.get("api") is None else f", API {rec['api']}"
        lines.append(f"  {rec['name']}  [{rec['source']}{api}]")
        lines.append(f"      {'; '.join(made) if made else '(registered nothing)'}")
    runtime = report.get("runtime", {})
    if runtime.get("schemes") or runtime.get("models"):
        lines.append("registered outside plugins:")
        for kind in ("schemes", "models"):
            if runtime.get(kind):
                lines.append(f"  {kind}: {', '.join(runtime[kind])}")
    lines.append(f"failures ({len(report['failures'])}):")
    for fail in report["failures"]:
        lines.append(f"  {fail['name']}  [{fail['source']}]")
        lines.append(f"      {fail['error']}")
    if report.get("autoload") is False:
        lines.insert(
            0,
            "autoload: off (ODEZOO_DISABLE_PLUGIN_AUTOLOAD): built-in plugins only; third-party "
            "entry points and ODEZOO_PLUGIN_PATH were not loaded",
        )
    lines.extend(f"warning: {w}" for w in report.get("warnings", []))
    return "\n".join(lines)
