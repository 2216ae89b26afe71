"""Faults during ``odezoo train``: kill -9 at chosen points, concurrent runs, divergence, bad input, full disks.

Each run is a real ``odezoo train`` in a child process (tests/train_worker.py),
of a tiny classifier registered by a plugin file in ``ODEZOO_PLUGIN_PATH``, on
the bundled digits. The uninterrupted run is the reference every interrupted
and resumed run must equal: same optimizer step count, same final weights.
docs/reliability.md lists the guarantees these tests hold.
"""

import contextlib
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "train_worker.py")
STEPS_PER_EPOCH = -(-1437 // 128)  # digits' train split, batch 128
EPOCHS = 3

PLUGIN = '''
import odezoo

ODEZOO_PLUGIN_API = 1


@odezoo.register_model("rel_tiny", kind="classifier", family="rel_tiny", paper="(test)", ode_reading="(test)")
def rel_tiny(*, input_shape=(8, 8, 1), num_classes=10, width=16):
    import keras

    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"Invalid value for `num_classes`. Received: num_classes={num_classes!r}. "
                         "Allowed: an int >= 2.")
    inputs = keras.Input(input_shape)
    x = odezoo.nets.normalization_layer("auto", input_shape)(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(width, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x), name="rel_tiny")
'''


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugins")
    (folder / "rel_tiny.py").write_text(PLUGIN)
    return str(folder)


def train_args(out, *extra, epochs=EPOCHS):
    return [
        "rel_tiny",
        "--dataset",
        "digits",
        "--epochs",
        str(epochs),
        "--batch-size",
        "128",
        "--lr",
        "0.01",
        "--seed",
        "4",
        "--out",
        str(out),
        *extra,
    ]


def run(plugin_dir, tmp_path, fault, args, *, wait=True):
    """Start ``odezoo train ARGS`` with ``fault`` in a child; returns (returncode, result dict, stderr)."""
    result = tmp_path / f"result-{len(list(tmp_path.glob('result-*')))}.json"
    env = dict(os.environ, ODEZOO_PLUGIN_PATH=plugin_dir, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, WORKER, fault, str(result), "--"] + args
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc, result

    return finish(proc, result)


def finish(proc, result):
    _, err = proc.communicate(timeout=600)
    data = json.loads(result.read_text()) if result.exists() else {}
    return proc.returncode, data, err


def weights_of(out, entry):
    with h5py.File(os.path.join(out, entry["file"]), "r") as f:
        arrays = {}
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return arrays


def manifest(out):
    with open(os.path.join(out, "manifest.json")) as fh:
        return json.load(fh)["entries"]


@pytest.fixture(scope="module")
def reference(plugin_dir, tmp_path_factory):
    """The uninterrupted run: its entry and final weights."""
    tmp = tmp_path_factory.mktemp("reference")
    code, res, err = run(plugin_dir, tmp, "none", train_args(tmp / "out"))
    assert code == 0, err
    assert res["optimizer_steps"] == EPOCHS * STEPS_PER_EPOCH
    return res["entry"], weights_of(tmp / "out", res["entry"])


def assert_same_run(out, res, reference):
    entry, weights = reference
    assert res["optimizer_steps"] == EPOCHS * STEPS_PER_EPOCH  # no replayed or skipped epoch
    got = weights_of(out, res["entry"])
    assert got.keys() == weights.keys()
    for name in weights:
        np.testing.assert_allclose(got[name], weights[name], rtol=0, atol=1e-6, err_msg=name)
    assert res["entry"]["metrics"] == entry["metrics"]
    assert not os.path.exists(os.path.join(out, "rel_tiny.digits.ckpt"))  # cleaned after the commit


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(f"batch:{STEPS_PER_EPOCH + 3}", id="kill-inside-epoch-2"),
        pytest.param("before-commit:2", id="kill-before-checkpoint-2-commits", marks=pytest.mark.slow),
        pytest.param("after-commit:2", id="kill-right-after-checkpoint-2-commits", marks=pytest.mark.slow),
        pytest.param("before-weights", id="kill-after-training-before-the-weights-commit", marks=pytest.mark.slow),
    ],
)
def test_kill_then_resume_equals_the_uninterrupted_run(plugin_dir, tmp_path, reference, fault):
    out = tmp_path / "out"
    code, _, _ = run(plugin_dir, tmp_path, fault, train_args(out))
    assert code == -9
    assert not os.path.exists(out / "manifest.json")  # nothing committed by the killed run
    code, res, err = run(plugin_dir, tmp_path, "none", train_args(out, "--resume"))
    assert code == 0, err
    assert_same_run(out, res, reference)


def register_in_process():
    import odezoo

    if "rel_tiny" not in odezoo.list_models():
        exec(compile(PLUGIN, "rel_tiny_plugin", "exec"), {})


def odezoo_cli(capsys, argv):
    """``odezoo ARGV`` in this process: (status, the stderr lines starting "odezoo: error:")."""
    from odezoo import cli

    register_in_process()
    status = cli.main(argv)
    err = capsys.readouterr().err
    return status, [line for line in err.splitlines() if line.startswith("odezoo: error:")]


def interrupted_run(out, after_batches):
    """Train in this process and stop it (KeyboardInterrupt) after ``after_batches`` batches."""
    from odezoo import _train

    register_in_process()
    make_guard = _train._guard_callback

    def interrupting(*a, **k):
        guard = make_guard(*a, **k)
        on_batch, seen = guard.on_train_batch_end, [0]

        def counted(batch, logs=None):
            on_batch(batch, logs)
            seen[0] += 1
            if seen[0] >= after_batches:
                raise KeyboardInterrupt("stopped by the test")

        guard.on_train_batch_end = counted
        return guard

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_train, "_guard_callback", interrupting)
        with pytest.raises(KeyboardInterrupt):
            _train.train(
                "rel_tiny", dataset="digits", epochs=EPOCHS, batch_size=128, lr=0.01, seed=4, out=str(out), verbose=0
            )


def test_resume_refuses_another_runs_checkpoint(tmp_path, capsys):
    out = tmp_path / "out"
    interrupted_run(out, STEPS_PER_EPOCH + 1)
    assert os.listdir(out / "rel_tiny.digits.ckpt") == ["epoch-000001"]
    status, errors = odezoo_cli(
        capsys, ["train"] + train_args(out, "--resume", "--config", "width=8", "--lr", "0.02", "--clipnorm", "1")
    )
    assert status == 2 and len(errors) == 1
    assert "config.width (16 in the checkpoint, 8 now)" in errors[0]
    assert "clipnorm (null in the checkpoint, 1.0 now)" in errors[0]
    assert "lr (0.01 in the checkpoint, 0.02 now)" in errors[0]
    # the checkpoint is untouched, and a fresh start without --resume is refused rather than overwriting it
    assert os.listdir(out / "rel_tiny.digits.ckpt") == ["epoch-000001"]
    status, errors = odezoo_cli(capsys, ["train"] + train_args(out))
    assert status == 2 and "pass --resume to continue it" in errors[0]
    assert not os.path.exists(out / "manifest.json")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lr", "inf"], "lr=inf"),
        (["--lr", "nan"], "lr=nan"),
        (["--lr", "-1"], "lr=-1.0"),
        (["--clipnorm", "0"], "clipnorm=0.0"),
        (["--clipnorm", "nan"], "clipnorm=nan"),
        (["--config", "num_classes=2"], "labels lie in [0, 9], outside [0, 2) for num_classes=2"),
        (["--config", "input_shape=[4, 4, 1]"], "images have shape (8, 8, 1), but the model is built for"),
    ],
)
def test_bad_training_input_is_refused_before_training(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    status, errors = odezoo_cli(capsys, ["train"] + train_args(out, *extra))
    assert status == 2 and len(errors) == 1 and message in errors[0], errors
    assert not os.path.exists(out)  # nothing written, not even the folder


def test_divergence_stops_the_run_and_writes_no_entry(tmp_path, capsys):
    out = tmp_path / "out"
    status, errors = odezoo_cli(capsys, ["train"] + train_args(out, "--optimizer", "sgd", "--lr", "1e12"))
    assert status == 2 and len(errors) == 1
    assert "training diverged at epoch 1, step" in errors[0] and "no checkpoint was written" in errors[0]
    assert not os.path.exists(out / "manifest.json")
    assert not [f for f in os.listdir(out) if f.endswith(".weights.h5")]


@pytest.mark.slow
def test_a_diverging_flow_stops_the_run_and_writes_no_entry(tmp_path, capsys):
    out = tmp_path / "out"
    status, errors = odezoo_cli(
        capsys,
        [
            "train",
            "ffjord",
            "--dataset",
            "8gaussians",
            "--epochs",
            "1",
            "--batch-size",
            "512",
            "--lr",
            "1e9",
            "--out",
            str(out),
            "--config",
            "hidden=[16, 16]",
        ],
    )
    # a NaN NLL is the guard's "training diverged"; a NaN state inside the solve is the flow's SolverError
    assert status == 2 and len(errors) == 1, errors
    assert "training diverged at epoch 1" in errors[0] or "NaN or Inf" in errors[0], errors
    assert not os.path.exists(out / "manifest.json")


@contextlib.contextmanager
def small_filesystem(path, size, *, read_only=False):
    """A real tmpfs of ``size`` at ``path`` (root only; the test skips where mounting is not allowed)."""
    path.mkdir()
    opts = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_read_only_out_is_refused_before_training(tmp_path, capsys):
    with small_filesystem(tmp_path / "ro", "1m", read_only=True) as out:
        status, errors = odezoo_cli(capsys, ["train"] + train_args(out))
    assert status == 2 and len(errors) == 1 and "Read-only file system" in errors[0], errors


def test_full_disk_is_refused_before_training(tmp_path, capsys):
    with small_filesystem(tmp_path / "full", "2m") as out:
        status, errors = odezoo_cli(capsys, ["train"] + train_args(out))
        assert status == 2 and len(errors) == 1 and "MiB free; this run needs about" in errors[0], errors
        assert [f for f in os.listdir(out) if not f.startswith(".") or f.startswith(".tmp")] == []


def test_disk_full_during_the_run_is_one_line_and_leaves_nothing_half_written(plugin_dir, tmp_path):
    with small_filesystem(tmp_path / "full", "40k") as out:
        code, _, err = run(plugin_dir, tmp_path, "no-space-check", train_args(out))
        left = sorted(os.listdir(out))
    errors = [line for line in err.splitlines() if line.startswith("odezoo: error:")]
    assert code == 2 and len(errors) == 1 and "No space left on device" in errors[0], err[-2000:]
    assert not [f for f in left if f.startswith(".tmp") or f.endswith((".h5", ".json"))], left


@pytest.mark.slow
def test_concurrent_runs_into_one_folder_keep_every_entry(plugin_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    # each run sleeps 3 s inside the manifest's locked section: without the lock one entry would be lost
    procs = [
        run(plugin_dir, tmp_path, "slow-commit:3", train_args(out, "--tag", tag, "--epochs", "1"), wait=False)
        for tag in ("a", "b", "c")
    ]
    results = [finish(*p) for p in procs]
    assert [code for code, _, _ in results] == [0, 0, 0], [err[-1500:] for _, _, err in results]
    entries = manifest(out)
    assert sorted(entries) == ["rel_tiny.a", "rel_tiny.b", "rel_tiny.c"]
    for key, entry in entries.items():
        assert os.path.exists(out / entry["file"]), key


@pytest.mark.slow
def test_the_same_tag_twice_is_serialised_and_the_later_commit_says_so(plugin_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    first = run(plugin_dir, tmp_path, "slow-commit:2", train_args(out, "--epochs", "1"), wait=False)
    second = run(plugin_dir, tmp_path, "none", train_args(out, "--epochs", "1", "--seed", "5"), wait=False)
    results = [finish(*first), finish(*second)]
    assert [code for code, _, _ in results] == [0, 0], [err[-1500:] for _, _, err in results]
    waited = [res for _, res, err in results if "another run is training rel_tiny.digits" in err]
    assert len(waited) == 1  # the later run waited for the first to finish
    later_err = next(err for _, res, err in results if res is waited[0])
    assert "rel_tiny.digits replaces the entry written" in later_err  # and its commit says what it replaced
    entries = manifest(out)
    assert entries["rel_tiny.digits"]["sha256"] == waited[0]["entry"]["sha256"]  # the later commit wins
    weight_files = [f for f in os.listdir(out) if f.endswith(".weights.h5")]
    assert weight_files == [entries["rel_tiny.digits"]["file"]]  # the replaced file was removed after the commit
