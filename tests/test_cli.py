"""The ``odezoo`` command line, run in-process through ``main`` (the demo end to end once)."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

import odezoo
from odezoo import _demo, cli


def run(capsys, *argv):
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_list_prints_sorted_names_and_filters(capsys):
    status, out, err = run(capsys, "list")
    assert status == 0 and out.split() == odezoo.list_models()
    status, out, _ = run(capsys, "list", "revnet*")
    assert status == 0 and out.split() == odezoo.list_models("revnet*") and "resnet" not in out.split()


def test_list_with_a_pattern_matching_nothing_is_bad_input(capsys):
    status, out, err = run(capsys, "list", "zzz*")
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and "'zzz*'" in err


def test_schemes_shows_order_fields_state_and_owner(capsys):
    status, out, _ = run(capsys, "schemes")
    assert status == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert sorted(rows) == odezoo.list_schemes()
    assert rows["rk4"] == ["rk4", "4", "4", "1", "explicit_rk"]
    assert rows["reversible"][1:] == ["1", "2", "2", "reversible"]
    assert rows["linear_multistep"][3] == "2"


def test_describe_prints_every_key(capsys):
    status, out, _ = run(capsys, "describe", "resnet")
    assert status == 0
    for key in odezoo.describe("resnet"):
        assert key in out
    assert "euler" in out and "He, Zhang, Ren & Sun" in out and "depth = 20" in out


def test_describe_json_round_trips(capsys):
    status, out, _ = run(capsys, "describe", "lm_resnet56", "--json")
    info = json.loads(out)
    assert status == 0 and info["defaults"]["depth"] == 56 and info["scheme"] == "linear_multistep"


def test_plugins_lists_loaded_plugins_and_failures(capsys, monkeypatch):
    status, out, _ = run(capsys, "plugins")
    assert status == 0 and "families" in out and "schemes: heun, midpoint, rk4" in out
    report = odezoo.plugin_report()
    report["failures"] = [{"name": "shaky", "source": "/tmp/shaky.py", "error": "ImportError: no module named x"}]
    monkeypatch.setattr(odezoo, "plugin_report", lambda: report)
    status, out, _ = run(capsys, "plugins")
    assert "failures (1):" in out and "shaky  [/tmp/shaky.py]" in out and "ImportError: no module named x" in out
    report.update(autoload=False, warnings=["ODEZOO_PLUGIN_PATH folder /tmp/p is writable by other users"])
    status, out, _ = run(capsys, "plugins")
    assert out.startswith("autoload: off (ODEZOO_DISABLE_PLUGIN_AUTOLOAD)")
    assert "warning: ODEZOO_PLUGIN_PATH folder /tmp/p is writable by other users" in out


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["describe", "nope"], "'nope'"),
        (["describe", "resnte"], "Did you mean 'resnet'"),
        (["demo", "--model", "nope"], "'nope'"),
    ],
)
def test_bad_names_exit_2_with_one_line(capsys, argv, expected):
    status, out, err = run(capsys, *argv)
    assert status == 2 and out == ""
    assert err.startswith("odezoo: error: ") and err.count("\n") == 1
    assert expected in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["frobnicate"], [], ["describe"], ["list", "a", "b"], ["schemes", "--bogus"]])
def test_bad_arguments_exit_2_with_one_line(capsys, argv):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    _, err = capsys.readouterr()
    assert info.value.code == 2
    assert err.count("\n") == 1 and "error:" in err and "Traceback" not in err


def test_debug_flag_shows_the_exception(capsys):
    with pytest.raises(odezoo.UnknownNameError):
        cli.main(["--debug", "describe", "nope"])


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and odezoo.__version__ in capsys.readouterr().out


@pytest.mark.slow  # 56 s: the default suite keeps to 10 minutes on 2 cores; CI runs it after
def test_demo_end_to_end(tmp_path):
    """The README's main job, through the installed console script when there is one."""
    exe = shutil.which("odezoo")
    cmd = ([exe] if exe else [sys.executable, "-m", "odezoo"]) + ["demo", "--out", str(tmp_path)]
    env = dict(os.environ)
    env.pop("ODEZOO_WEIGHTS_DIR", None)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user runs it
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    # odezoo's output only: no TensorFlow start-up banner, no retracing warning between the tables
    for noise in ("absl::InitializeLog", "oneDNN", "cuda drivers", "cuInit", "cpu_feature_guard", "retracing"):
        assert noise not in proc.stderr and noise not in out, noise
    # the whole zoo is listed (names other tests registered in this process exist only here)
    for name in odezoo.list_models() + odezoo.list_schemes():
        assert name in out or name.startswith("test_")
    rk4 = next(line for line in out.splitlines() if line.startswith("rk4 "))
    assert abs(float(rk4.split()[2]) - 4.0) < 0.3  # measured order beside the declared one
    assert "== Pretrained lm_resnet" in out and "linear_multistep (order 1)" in out
    # every shipped classifier whose data is at hand is re-measured and matches its manifest
    from odezoo import _weights

    table = out.split("== Pretrained classifiers")[1].split("== Pretrained FFJORD")[0]
    rows = [line.split() for line in table.splitlines()[3:] if line.strip() and not line.startswith("  ")]
    at_hand = {"digits"} | ({"fashion_mnist"} if odezoo.data.fashion_mnist_available() else set())
    if odezoo.data.sktime_data_dir() is not None:  # the UEA/UCR series, from the sktime wheel
        at_hand |= {e["dataset"] for e in _weights.entries().values() if e["dataset"].startswith("japanese_vowels")}
    shipped = {
        (e["model"], e["tag"])
        for e in _weights.entries().values()
        if odezoo.describe(e["model"])["kind"] in ("classifier", "series_classifier") and e["dataset"] in at_hand
    }
    assert shipped <= {(row[0], row[1]) for row in rows}  # test_zoo leaves the Fashion ones to this test
    for row in rows:
        assert abs(float(row[4]) - float(row[5])) <= 0.005, row
    if odezoo.describe("ffjord")["weights"]:
        assert list(tmp_path.glob("ffjord_*_density.png"))
    for tag in _demo.DIGITS_FLOWS:  # a sample grid of each shipped digits flow, and none of another
        shipped = tag in odezoo.describe("ffjord")["weights"]
        png = tmp_path / f"ffjord_{tag}_samples.png"
        assert (png.stat().st_size > 1000) if shipped else not png.exists(), tag
    if "spirals" in odezoo.describe("latent_ode")["weights"]:  # re-measured beside its manifest numbers
        line = next(x for x in out.splitlines() if x.strip().startswith("latent_ode.spirals"))
        pairs = re.findall(r"(\w+_mse) ([0-9.]+) \(manifest ([0-9.]+)\)", line)
        assert {name for name, _, _ in pairs} == {"interpolation_mse", "extrapolation_mse"}, line
        for _, measured, manifest in pairs:
            assert float(measured) == pytest.approx(float(manifest), rel=1e-3)
        assert (tmp_path / "latent_ode_spirals.png").stat().st_size > 1000
    seconds = float(out.rsplit("Done in ", 1)[1].split()[0])
    assert seconds < 180


def test_train_scale_flags_reject_bad_values_in_one_line(capsys, tmp_path):
    for flag, bad, choice in (
        ("--strategy", "horovod", "multiworker"),
        ("--precision", "float16", "mixed_bfloat16"),
        ("--optimizer", "rmsprop", "sgd"),
    ):
        with pytest.raises(SystemExit) as info:
            cli.main(
                ["train", "resnet", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "x"), flag, bad]
            )
        out, err = capsys.readouterr()
        assert info.value.code == 2 and out == ""
        assert err.count("\n") == 1 and bad in err and choice in err
    assert not (tmp_path / "x").exists()


def test_captured_start_up_output_keeps_every_line_that_is_not_a_known_banner():
    # C++ writes straight to file descriptor 2; the capture must give back real warnings and errors
    code = (
        "import os, sys, warnings\n"
        "from odezoo import _quiet\n"
        "with _quiet.captured_stderr_lines():\n"
        "    os.write(2, b'WARNING: All log messages before absl::InitializeLog() '\n"
        "             b'is called are written to STDERR\\n')\n"
        "    os.write(2, b'I0000 00:00:1796235999.947925    2430 port.cc:153] oneDNN custom operations are on. x\\n')\n"
        "    os.write(2, b'E0000 00:00:1796236480.192348    5017 cuda_platform.cc:52] failed call to cuInit: x\\n')\n"
        "    os.write(2, b'E0000 00:00:1796236480.192348    5017 some_kernel.cc:7] a real error\\n')\n"
        "    warnings.warn('a plugin warning')\n"
        "    print('on stdout')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "on stdout\n"
    lines = proc.stderr.splitlines()
    assert any("some_kernel.cc:7] a real error" in line for line in lines)
    assert any("UserWarning: a plugin warning" in line for line in lines)
    assert not [line for line in lines if "absl::InitializeLog" in line or "oneDNN" in line or "cuInit" in line]


def test_only_the_retracing_warning_is_dropped_and_only_inside_the_command():
    import logging

    from odezoo import _quiet

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    retrace = "5 out of the last 5 calls to <function f> triggered tf.function retracing. Tracing is expensive"
    try:
        with _quiet.no_retracing_warning():
            logger.warning(retrace)
            logger.warning("a real TensorFlow warning")
        logger.warning(retrace)
    finally:
        logger.removeHandler(handler)
    assert seen == ["a real TensorFlow warning", retrace]
