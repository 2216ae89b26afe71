"""Issue 12, item 6: built-ins own their names; hostile or broken plugins fail alone.

Two heavy subprocesses (discovery runs once per process and importing
TensorFlow costs seconds), run outside the repository so that the fake
distributions come before odezoo's own on sys.path. One with autoload on: a
folder on PYTHONPATH holding a distribution that sorts before odezoo, takes
``resnet``, names an entry point ``euler`` and lists the built-in families
module; four kinds of malformed metadata; a well-behaved plugin; and a
world-writable ODEZOO_PLUGIN_PATH folder. One with
``ODEZOO_DISABLE_PLUGIN_AUTOLOAD=1`` and a plugin that hangs at import. The
switch's parsing and the world-writable warning are checked in this process
(nothing is loaded), a bad switch value through the CLI (no TensorFlow).
"""

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from odezoo import _registry

REPO = Path(__file__).resolve().parents[1]

EVIL = """
    import bbb_good  # another plugin's module, reached before its own entry point loads
    import odezoo

    @odezoo.register_scheme("evil_first")
    class EvilFirst(odezoo.ExplicitRungeKutta):
        order, A, b = 1, [[]], [1.0]

    @odezoo.register_model("resnet", kind="classifier", family="resnet", paper="-", ode_reading="-")
    def evil_resnet(**config):
        raise RuntimeError("the third party's resnet builder ran")
"""
EVIL_EULER = """
    import odezoo

    @odezoo.register_scheme("euler")
    class EvilEuler(odezoo.ExplicitRungeKutta):
        order, A, b = 1, [[]], [1.0]
"""
GOOD = """
    import odezoo

    @odezoo.register_scheme("bbb_scheme")
    class BBB(odezoo.ExplicitRungeKutta):
        order, A, b = 1, [[]], [1.0]
"""
WORLD_WRITABLE = """
    import odezoo

    @odezoo.register_scheme("ww_scheme")
    class WW(odezoo.ExplicitRungeKutta):
        order, A, b = 1, [[]], [1.0]
"""
HANGS = """
    import time
    time.sleep(10 ** 6)
"""

# folder name -> (METADATA Name or None, entry_points.txt)
DISTS = {
    # also lists the built-in families module, hoping to move it behind its own "evil"
    "aaa_evil-1.0.dist-info": (
        "aaa-evil",
        "[odezoo.plugins]\nevil = aaa_evil\neuler = aaa_evil_euler\nfamilies = odezoo.plugins.families\n",
    ),
    "bbb_good-1.0.dist-info": ("bbb-good", "[odezoo.plugins]\ngood = bbb_good\n"),
    "fake-1.0.dist-info": ("fake", "[odezoo.plugins]\nthis line has no equals sign\n"),
    "fake_header-1.0.dist-info": ("fake-header", "[odezoo.plugins\nlost = fake_header\n"),
    "nameless-1.0.dist-info": (None, "[odezoo.plugins]\nnameless = nameless_mod\n"),
    "binary-1.0.dist-info": ("binary", b"[odezoo.plugins]\nbinary = \xff\xfe\n"),
}

ON_SCRIPT = """
import json, warnings
warnings.simplefilter("always")
import odezoo
from odezoo import _registry
odezoo.list_models()
spec, _ = _registry.resolve_model("resnet")
model = odezoo.build("resnet", depth=8, input_shape=(8, 8, 1), num_classes=3)
print(json.dumps({"models": odezoo.list_models(), "schemes": odezoo.list_schemes(),
                  "resnet_builder": spec.builder.__module__, "params": model.count_params(),
                  "euler": odezoo.get_scheme("euler").__module__, "report": odezoo.plugin_report()}))
"""

OFF_SCRIPT = """
import json, sys
import odezoo, odezoo.cli
status = odezoo.cli.main(["list"])
print("REPORT " + json.dumps({"status": status, "report": odezoo.plugin_report()}))
"""


def _write(path: Path, text: str) -> None:
    path.write_text(textwrap.dedent(text))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A folder that looks like site-packages with six third-party distributions."""
    root = tmp_path_factory.mktemp("site")
    for folder, (name, entry_points) in DISTS.items():
        info = root / folder
        info.mkdir()
        meta = "Metadata-Version: 2.1\n" + (f"Name: {name}\n" if name else "") + "Version: 1.0\n"
        (info / "METADATA").write_text(meta)
        if isinstance(entry_points, bytes):
            (info / "entry_points.txt").write_bytes(entry_points)
        else:
            (info / "entry_points.txt").write_text(entry_points)
    _write(root / "aaa_evil.py", EVIL)
    _write(root / "aaa_evil_euler.py", EVIL_EULER)
    _write(root / "bbb_good.py", GOOD)
    return root


def _run(script: str, env_extra: dict, timeout: float, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``script`` in ``cwd``: not the repository, whose odezoo.egg-info would come first on sys.path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ODEZOO_")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", **env_extra)
    try:
        return subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"discovery did not finish in {timeout} s; stderr: {exc.stderr}")


def _pythonpath(site: Path) -> str:
    return os.pathsep.join(p for p in [str(site), os.environ.get("PYTHONPATH")] if p)


@pytest.fixture(scope="module")
def autoload_on(site, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ww_plugins")
    _write(folder / "ww.py", WORLD_WRITABLE)
    folder.chmod(0o777)
    proc = _run(ON_SCRIPT, {"PYTHONPATH": _pythonpath(site), "ODEZOO_PLUGIN_PATH": str(folder)}, timeout=240, cwd=site)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["stderr"], out["folder"] = proc.stderr, folder
    out["loaded"] = {(r["name"], r["source"]): r for r in out["report"]["loaded"]}
    out["failures"] = out["report"]["failures"]
    return out


def _builtin_names() -> tuple[set, set]:
    """Schemes and models (aliases included) the built-in plugins register, from this process."""
    import odezoo

    report = odezoo.plugin_report()
    builtin = [r for r in report["loaded"] if r["source"].startswith("entry point odezoo.plugins.")]
    models = {m for r in builtin for m in r["models"]}
    aliases = {a for m in models for a in _registry.resolve_model(m)[0].aliases}
    return {s for r in builtin for s in r["schemes"]}, models | aliases


def _failure(out, needle: str) -> dict:
    found = [f for f in out["failures"] if needle in f["source"] or needle == f["name"]]
    assert len(found) == 1, (needle, out["failures"])
    return found[0]


# --------------------------------------------------------------------------- autoload on
def test_a_third_party_sorting_first_cannot_take_a_builtin_name(autoload_on):
    schemes, models = _builtin_names()
    assert len(models) >= 28 and len(schemes) >= 8
    assert models <= set(autoload_on["models"]) and schemes <= set(autoload_on["schemes"])
    assert autoload_on["resnet_builder"] == "odezoo.plugins.families"
    assert autoload_on["params"] > 0  # build("resnet") ran the built-in builder (the evil one raises)
    failure = _failure(autoload_on, "aaa_evil (aaa-evil 1.0)")
    assert failure["error"].startswith("PluginError: Model name 'resnet'")
    assert "plugin 'families' (entry point odezoo.plugins.families" in failure["error"]
    assert "plugin 'evil' (entry point aaa_evil (aaa-evil 1.0))" in failure["error"]
    assert "evil_first" not in autoload_on["schemes"]  # the failed plugin's own registrations go


def test_the_failed_plugin_never_rolls_back_another_plugins_names(autoload_on):
    # aaa_evil imported bbb_good before failing; bbb_good's scheme survives, owned by its own plugin
    assert "bbb_scheme" in autoload_on["schemes"]
    good = [r for (name, _), r in autoload_on["loaded"].items() if name == "good"]
    assert len(good) == 1 and good[0]["schemes"] == ["bbb_scheme"]


def test_an_entry_point_named_like_a_builtin_is_not_a_builtin(autoload_on):
    assert autoload_on["euler"] == "odezoo.plugins.euler"
    failure = _failure(autoload_on, "aaa_evil_euler")
    assert failure["name"] == "euler"
    assert (
        "Scheme name 'euler' is already registered by plugin 'euler' (entry point odezoo.plugins.euler"
        in failure["error"]
    )
    assert "plugin 'euler' (entry point aaa_evil_euler (aaa-evil 1.0)) tried" in failure["error"]


@pytest.mark.parametrize(
    "dist, why",
    [
        ("distribution fake 1.0", "TypeError"),  # a line without '='
        ("distribution fake-header 1.0", "declares no entry point"),  # a broken section header
        ("nameless-1.0.dist-info", "no Name"),
        ("distribution binary 1.0", "UnicodeDecodeError"),
    ],
)
def test_malformed_metadata_is_reported_and_skipped_alone(autoload_on, dist, why):
    failure = _failure(autoload_on, dist)
    assert why in failure["error"] and "malformed" in failure["error"]
    assert f"odezoo plugin {failure['name']!r}" in autoload_on["stderr"]


def test_every_plugin_is_accounted_for(autoload_on):
    builtin = [k for k in autoload_on["loaded"] if k[1].startswith("entry point odezoo.plugins.")]
    import importlib.metadata

    ours = [
        ep for ep in importlib.metadata.entry_points(group="odezoo.plugins") if ep.value.startswith("odezoo.plugins.")
    ]
    assert len(builtin) == len(ours) >= 10
    others = sorted(name for name, source in autoload_on["loaded"] if not source.startswith("entry point odezoo."))
    assert others == ["good", "ww"]
    assert len(autoload_on["failures"]) == 6
    assert autoload_on["report"]["autoload"] is True


def test_a_world_writable_plugin_folder_warns_and_still_loads(autoload_on):
    assert "ww_scheme" in autoload_on["schemes"]
    assert f"{str(autoload_on['folder'])!r} is writable by other users" in autoload_on["stderr"]
    assert any("writable by other users" in w for w in autoload_on["report"]["warnings"])


# --------------------------------------------------------------------------- autoload off
def test_disable_autoload_loads_builtins_only_and_skips_a_hanging_plugin(site, tmp_path):
    folder = tmp_path / "plugins"
    folder.mkdir()
    _write(folder / "hangs.py", HANGS)
    _write(folder / "ww.py", WORLD_WRITABLE)
    env = {"PYTHONPATH": _pythonpath(site), "ODEZOO_PLUGIN_PATH": str(folder), "ODEZOO_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = _run(OFF_SCRIPT, env, timeout=150, cwd=site)
    assert proc.returncode == 0, proc.stderr
    listed, _, report = proc.stdout.rpartition("REPORT ")
    out = json.loads(report)
    assert out["status"] == 0
    schemes, models = _builtin_names()
    assert set(listed.split()) == models
    report = out["report"]
    assert report["autoload"] is False and report["failures"] == []
    assert all(r["source"].startswith("entry point odezoo.plugins.") for r in report["loaded"])
    assert {s for r in report["loaded"] for s in r["schemes"]} == schemes


# --------------------------------------------------------------------------- in this process
@pytest.mark.parametrize("value", ["1", "true", "TRUE", " yes ", "on"])
def test_autoload_switch_values_that_disable(monkeypatch, value):
    monkeypatch.setenv(_registry.DISABLE_AUTOLOAD_ENV, value)
    assert _registry.autoload_enabled() is False


@pytest.mark.parametrize("value", [None, "", "0", "false", "No", "off"])
def test_autoload_switch_values_that_enable(monkeypatch, value):
    if value is None:
        monkeypatch.delenv(_registry.DISABLE_AUTOLOAD_ENV, raising=False)
    else:
        monkeypatch.setenv(_registry.DISABLE_AUTOLOAD_ENV, value)
    assert _registry.autoload_enabled() is True


def test_an_unrecognised_autoload_switch_value_is_an_error(monkeypatch):
    monkeypatch.setenv(_registry.DISABLE_AUTOLOAD_ENV, "please")
    with pytest.raises(ValueError) as info:
        _registry.autoload_enabled()
    message = str(info.value)
    assert "ODEZOO_DISABLE_PLUGIN_AUTOLOAD='please'" in message and "'1'" in message and "'0'" in message
    assert "\n" not in message


@pytest.mark.parametrize("where", ["folder", "file"])
def test_writable_by_others_warns_naming_the_path(monkeypatch, tmp_path, where):
    (tmp_path / "mine.py").write_text("")
    target = tmp_path if where == "folder" else tmp_path / "mine.py"
    target.chmod(target.stat().st_mode | stat.S_IWOTH)
    monkeypatch.setenv(_registry.PLUGIN_PATH_ENV, str(tmp_path))
    monkeypatch.setattr(_registry, "_warnings", [])
    with pytest.warns(UserWarning, match="writable by other users") as record:
        found = list(_registry._path_plugins())
    assert [name for name, _, _ in found] == ["mine"]  # still loaded
    assert len(record) == 1 and repr(str(target)) in str(record[0].message)


def test_a_private_plugin_folder_does_not_warn(monkeypatch, tmp_path, recwarn):
    (tmp_path / "mine.py").write_text("")
    tmp_path.chmod(0o755)
    (tmp_path / "mine.py").chmod(0o644)
    monkeypatch.setenv(_registry.PLUGIN_PATH_ENV, str(tmp_path))
    assert [name for name, _, _ in _registry._path_plugins()] == ["mine"]
    assert not [w for w in recwarn if "writable" in str(w.message)]


def test_the_cli_refuses_an_unrecognised_autoload_switch_before_any_plugin_runs(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ODEZOO_")}
    env["ODEZOO_DISABLE_PLUGIN_AUTOLOAD"] = "please"
    proc = subprocess.run(
        [sys.executable, "-m", "odezoo", "list"], capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path
    )
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("odezoo: error: Invalid value for `ODEZOO_DISABLE_PLUGIN_AUTOLOAD`")
    assert "'please'" in lines[0]
