"""The import structure of docs/architecture.md holds (issue 13).

The layer table in docs/architecture.md is parsed here, so the document and the
code cannot drift apart: every module of ``odezoo/`` and ``plugins/`` must be in
exactly one layer; a module may import only modules of its own layer or below
(function-level imports count: a cycle hidden inside a function is still a
cycle); there must be no import cycle at all; and plugins import only odezoo's
public modules (no name with a leading underscore), never another plugin.
"""

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "architecture.md")


def _module_files():
    """{dotted name: path} for odezoo/ and plugins/ (plugins/ installs as odezoo.plugins)."""
    found = {}
    for top, prefix in (("odezoo", "odezoo"), ("plugins", "odezoo.plugins")):
        base = os.path.join(ROOT, top)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d != "__pycache__" and not os.path.islink(os.path.join(dirpath, d))]
            for f in filenames:
                if not f.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, f), base)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                found[".".join([prefix] + rel)] = os.path.join(dirpath, f)
    return found


MODULES = _module_files()


def _resolve(name):
    """The module a dotted import name lands on: itself, or its closest known parent."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module, path):
    """Every odezoo module ``module`` imports, at any depth of its code (with line numbers)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # "from odezoo import _registry" imports the submodule; "from odezoo import build" the package
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name) if name.split(".")[0] == "odezoo" else None
            if target and target != module:
                out.append((target, node.lineno))
    return out


def _layers():
    """Parse the table of docs/architecture.md: | layer | modules |, lowest layer first."""
    rows = []
    in_table = False
    for line in open(DOC, encoding="utf-8"):
        if line.startswith("| layer |"):
            in_table = True
            continue
        if in_table:
            if not line.startswith("|"):
                break
            if set(line.strip()) <= set("|-: "):
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows.append((cells[0], re.findall(r"`([^`]+)`", cells[1])))
    return rows


def _layer_of():
    """{module: layer index}, each pattern a module or ``pkg.*`` (the package and all under it)."""
    layers = _layers()
    index = {}
    for i, (_, patterns) in enumerate(layers):
        for module in MODULES:
            for pat in patterns:
                if module == pat or (pat.endswith(".*") and (module == pat[:-2] or module.startswith(pat[:-1]))):
                    index.setdefault(module, []).append(i)
    return layers, index


def test_every_module_is_in_exactly_one_layer():
    layers, index = _layer_of()
    assert len(layers) >= 4, "docs/architecture.md has lost its layer table"
    missing = sorted(set(MODULES) - set(index))
    doubled = {m: [layers[i][0] for i in ix] for m, ix in index.items() if len(ix) > 1}
    assert not missing, f"modules in no layer of docs/architecture.md: {missing}"
    assert not doubled, f"modules in more than one layer: {doubled}"


def test_no_module_imports_a_higher_layer():
    layers, index = _layer_of()
    upward = []
    for module, path in MODULES.items():
        mine = index[module][0]
        for target, line in _imports(module, path):
            if index[target][0] > mine:
                upward.append(f"{module}:{line} ({layers[mine][0]}) imports {target} ({layers[index[target][0]][0]})")
    assert not upward, "\n".join(upward)


def test_there_is_no_import_cycle():
    graph = {m: {t for t, _ in _imports(m, p)} for m, p in MODULES.items()}
    # a module's package __init__ runs first on import, but that is not an edge of the module's own
    cycles, stack, on_stack, low, number = [], [], set(), {}, {}

    def visit(v):  # Tarjan's strongly connected components
        number[v] = low[v] = len(number)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in number:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], number[w])
        if low[v] == number[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in number:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_plugins_use_only_the_public_api():
    bad = []
    for module, path in MODULES.items():
        if not module.startswith("odezoo.plugins"):
            continue
        own = module.split(".")[:3]  # odezoo.plugins.<plugin>
        for target, line in _imports(module, path):
            parts = target.split(".")
            if parts[:2] == ["odezoo", "plugins"]:
                # its own package, or a private helper module of the built-in plugins folder
                if len(parts) > 2 and parts[:3] != own and not parts[2].startswith("_"):
                    bad.append(f"{module}:{line} imports another plugin, {target}")
                continue
            if any(p.startswith("_") for p in parts):
                bad.append(f"{module}:{line} imports private {target}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from odezoo import _registry\n", ["odezoo._registry"]),
        ("import odezoo\n", ["odezoo"]),
        ("def f():\n    from odezoo.checks import positive\n", ["odezoo.checks"]),
    ],
)
def test_the_import_parser_sees_what_it_must(tmp_path, source, expected):
    """The checks above are only as good as the parser: module-level, from-imports and hidden ones."""
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert [t for t, _ in _imports("odezoo.probe", str(path))] == expected
