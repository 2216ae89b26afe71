"""Plugin discovery, each check in a fresh interpreter (discovery runs once per process).

One subprocess covers the ODEZOO_PLUGIN_PATH cases together (importing
TensorFlow costs seconds per process): a good plugin, one that raises, one
declaring a future API, two that clash, one reaching a built-in a second time,
and discovery started from several threads at once.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PLUGINS = {
    "good.py": """
        import os, time
        import odezoo

        ODEZOO_PLUGIN_API = 1
        with open(os.path.join(os.path.dirname(__file__), "imports.log"), "a") as fh:
            fh.write("good\\n")
        time.sleep(0.3)  # widen the window in which other threads could start discovery too

        @odezoo.register_scheme("test_good")
        class Good(odezoo.Scheme):
            order, num_fields = 1, 1
            def step(self, fields, t, y, h):
                return y + h * fields[0](t, y)
    """,
    "broken.py": """
        raise RuntimeError("boom from the broken plugin")
    """,
    "future.py": """
        import odezoo

        ODEZOO_PLUGIN_API = 99

        @odezoo.register_scheme("test_future")
        class Future(odezoo.Scheme):
            order, num_fields = 1, 1
            def step(self, fields, t, y, h):
                return y + h * fields[0](t, y)
    """,
    "clash_a.py": """
        import odezoo

        @odezoo.register_scheme("test_clash")
        class ClashA(odezoo.ExplicitRungeKutta):
            order, A, b = 1, [[]], [1.0]
    """,
    "clash_b.py": """
        import odezoo

        @odezoo.register_scheme("test_clash_b_first")
        class First(odezoo.ExplicitRungeKutta):
            order, A, b = 1, [[]], [1.0]

        @odezoo.register_scheme("test_clash")
        class ClashB(odezoo.ExplicitRungeKutta):
            order, A, b = 1, [[]], [1.0]
    """,
    "again.py": """
        import odezoo
        from odezoo.plugins.euler import Euler

        odezoo.register_scheme("euler")(Euler)  # the same object again: a no-op
    """,
    "_private.py": """
        raise RuntimeError("files starting with an underscore are not plugins")
    """,
}

SCRIPT = """
import io, json, sys, threading
from contextlib import redirect_stdout
import odezoo
import odezoo.cli

barrier = threading.Barrier(6)
results = [None] * 6

def work(i):
    barrier.wait()
    results[i] = odezoo.list_schemes()

threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
buf = io.StringIO()
with redirect_stdout(buf):
    status = odezoo.cli.main(["plugins"])
print(json.dumps({"results": results, "report": odezoo.plugin_report(), "cli": buf.getvalue(), "status": status}))
"""


def _run(args, env_extra=None, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env_extra or {}))
    env.pop("ODEZOO_DISABLE_PLUGIN_AUTOLOAD", None)  # these checks need third-party plugins to load
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def discovery(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugins")
    for name, source in PLUGINS.items():
        (folder / name).write_text(textwrap.dedent(source))
    (folder / "notes.txt").write_text("not a plugin")
    missing = folder / "does_not_exist"
    proc = _run([sys.executable, "-c", SCRIPT], {"ODEZOO_PLUGIN_PATH": os.pathsep.join([str(folder), str(missing)])})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["stderr"] = proc.stderr
    out["folder"] = folder
    out["failures"] = {f["name"]: f for f in out["report"]["failures"]}
    out["loaded"] = {r["name"]: r for r in out["report"]["loaded"]}
    return out


def test_a_good_path_plugin_is_loaded(discovery):
    schemes = discovery["results"][0]
    assert "test_good" in schemes and "euler" in schemes  # built-ins load by the same path
    good = discovery["loaded"]["good"]
    assert good["schemes"] == ["test_good"] and good["api"] == 1
    assert good["source"] == str(discovery["folder"] / "good.py")


def test_builtins_load_before_every_other_plugin(discovery):
    sources = [r["source"] for r in discovery["report"]["loaded"]]
    builtin = [s.startswith("entry point odezoo.plugins.") for s in sources]
    import importlib.metadata

    ours = [
        ep for ep in importlib.metadata.entry_points(group="odezoo.plugins") if ep.value.startswith("odezoo.plugins.")
    ]
    assert builtin == sorted(builtin, reverse=True) and sum(builtin) == len(ours) >= 10
    assert discovery["report"]["autoload"] is True and discovery["report"]["warnings"] == []


def test_a_plugin_that_raises_is_reported_and_the_rest_load(discovery):
    failure = discovery["failures"]["broken"]
    assert failure["error"] == "RuntimeError: boom from the broken plugin"
    assert failure["source"].endswith("broken.py")
    assert "odezoo plugin 'broken'" in discovery["stderr"] and "boom from the broken plugin" in discovery["stderr"]
    assert {"good", "clash_a", "again", "families"} <= set(discovery["loaded"])


def test_an_unsupported_api_version_is_skipped_and_rolled_back(discovery):
    failure = discovery["failures"]["future"]
    assert "ODEZOO_PLUGIN_API = 99" in failure["error"] and "supports 1" in failure["error"]
    assert "test_future" not in discovery["results"][0]
    assert "future" not in discovery["loaded"]


def test_a_name_clash_fails_the_second_plugin_naming_both(discovery):
    failure = discovery["failures"]["clash_b"]
    assert failure["error"].startswith("PluginError:")
    assert "'test_clash'" in failure["error"]
    assert "plugin 'clash_a'" in failure["error"] and "ClashB" in failure["error"]
    schemes = discovery["results"][0]
    assert "test_clash" in schemes
    assert "test_clash_b_first" not in schemes  # the failed plugin's earlier registrations are rolled back
    assert discovery["loaded"]["clash_a"]["schemes"] == ["test_clash"]


def test_reaching_a_registered_object_again_is_a_no_op(discovery):
    assert "again" in discovery["loaded"] and "again" not in discovery["failures"]
    assert discovery["results"][0].count("euler") == 1


def test_only_py_files_not_starting_with_underscore_are_plugins(discovery):
    names = set(discovery["loaded"]) | set(discovery["failures"])
    assert "_private" not in names and "notes" not in names
    assert "does_not_exist" in discovery["stderr"] and "not a folder" in discovery["stderr"]


def test_discovery_from_several_threads_runs_once(discovery):
    results = discovery["results"]
    assert all(r == results[0] for r in results)  # no thread saw a half-loaded registry
    assert (discovery["folder"] / "imports.log").read_text().split() == ["good"]
    assert len(discovery["report"]["failures"]) == 3


def test_cli_plugins_reports_failures_with_their_errors(discovery):
    assert discovery["status"] == 0
    cli = discovery["cli"]
    assert "failures (3):" in cli
    for name in ("broken", "future", "clash_b"):
        assert f"  {name}  [" in cli
    assert "RuntimeError: boom from the broken plugin" in cli
    assert "schemes: test_good" in cli


@pytest.mark.slow
@pytest.mark.parametrize("package,passed", [("odezoo-ssprk3", 2), ("odezoo-fehlberg45", 3)])
def test_example_plugin_package_installs_and_passes_its_own_test(tmp_path, package, passed):
    """pip-install an examples/ package into a --target folder; its entry point must be found."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "examples" / package, src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = tmp_path / "target"
    pip = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(src),
        ]
    )
    assert pip.returncode == 0, pip.stderr
    env = {"PYTHONPATH": os.pathsep.join(p for p in [str(target), os.environ.get("PYTHONPATH")] if p)}
    proc = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(src / "tests")], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{passed} passed" in proc.stdout
