"""The zoo folder as a transaction log, and manifests/weights as untrusted input (issue 12, items 1 and 5).

Kill -9 and concurrency run in subprocesses that import only ``odezoo._weights`` (no TensorFlow), with tiny
HDF5 files written by h5py; the few load tests build one tiny Keras model.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

import odezoo
from odezoo import _weights
from odezoo._errors import ManifestError, OdezooError, WeightsIntegrityError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
MODEL = "rel_tiny"


def _entry(tag="a", model=MODEL, **changes):
    entry = {
        "model": model,
        "tag": tag,
        "dataset": "digits",
        "split": "test",
        "metrics": {"accuracy": 0.5},
        "config": {"width": 4},
        "versions": {},
        "device": "cpu",
        "strategy": "default",
        "seed": 0,
        "date": "2026-01-01T00:00:00Z",
        "default": False,
        "command": "odezoo train",
    }
    entry.update(changes)
    return entry


def _h5(path, seed):
    with h5py.File(path, "w") as fh:
        fh.create_dataset("w", data=np.full(4, float(seed)))


def _commit(folder, tag="a", seed=0, **changes):
    tmp = _weights.temp_path(str(folder), "weights.h5")
    _h5(tmp, seed)
    return _weights.commit(str(folder), _entry(tag, **changes), tmp)


def _assert_consistent(folder):
    """The manifest is valid and every entry's file exists with its hash; no temp files are left over."""
    entries = _weights.read_manifest(str(folder))
    for entry in entries.values():
        _weights.verified_file(dict(entry, _folder=str(folder)))
    return entries


CHILD = textwrap.dedent(
    """
    import os, signal, sys, time, contextlib
    import h5py, numpy as np
    from odezoo import _weights
    folder = sys.argv[1]
    def h5(path, seed):
        with h5py.File(path, "w") as fh:
            fh.create_dataset("w", data=np.full(4, float(seed)))
    def entry(tag, **kw):
        e = {"model": "%s", "tag": tag, "dataset": "digits", "split": "test", "metrics": {"accuracy": 0.5},
             "config": {"width": 4}, "versions": {}, "device": "cpu", "strategy": "default", "seed": 0,
             "date": "2026-01-02T00:00:00Z", "default": False, "command": "odezoo train"}
        e.update(kw)
        return e
"""
    % MODEL
)


def _script(patch, body):
    """A child script: the shared helpers, then ``patch`` (what to break or slow down), then ``body``."""
    return CHILD + textwrap.dedent(patch) + textwrap.dedent(body)


def _run_child(folder, patch, body, timeout=60):
    return subprocess.run(
        [sys.executable, "-c", _script(patch, body), str(folder)], capture_output=True, text=True, timeout=timeout
    )


KILL_AT = "    os.kill(os.getpid(), signal.SIGKILL)\n"
COMMIT_B = """
tmp = _weights.temp_path(folder, "weights.h5")
h5(tmp, 2)
_weights.commit(folder, entry("a"), tmp)
"""


# --- item 1: the zoo folder is a transaction log ------------------------------------------------------------


def test_commit_names_weights_by_content_and_retraining_says_what_it_replaces(tmp_path, capsys):
    first = _commit(tmp_path, "a", seed=1)
    assert first["file"] == f"{MODEL}.a.{first['sha256'][:16]}.weights.h5"
    assert capsys.readouterr().err == ""
    second = _commit(tmp_path, "a", seed=2)
    err = capsys.readouterr().err
    assert f"odezoo: {MODEL}.a replaces the entry written 2026-01-01T00:00:00Z (sha {first['sha256'][:12]})" in err
    assert second["file"] != first["file"]
    assert not (tmp_path / first["file"]).exists()  # the replaced file goes, after the commit
    assert _assert_consistent(tmp_path) == {f"{MODEL}.a": second}
    assert sorted(os.listdir(tmp_path)) == sorted([_weights.LOCK, _weights.MANIFEST, second["file"]])


def test_kill_between_weights_rename_and_manifest_rename_keeps_the_old_entry(tmp_path):
    old = _commit(tmp_path, "a", seed=1)
    patch = "def _killed(*a, **k):\n" + KILL_AT + "_weights._write_manifest = _killed\n"
    proc = _run_child(tmp_path, patch, COMMIT_B)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    entries = _assert_consistent(tmp_path)
    assert entries == {f"{MODEL}.a": old}  # the old weights are still there and verify
    orphans = [f for f in os.listdir(tmp_path) if f.endswith(".weights.h5") and f != old["file"]]
    assert len(orphans) == 1  # the killed run's renamed weights, referenced by nothing
    _commit(tmp_path, "b", seed=3)  # the next commit sweeps it
    assert not (tmp_path / orphans[0]).exists()
    assert set(_assert_consistent(tmp_path)) == {f"{MODEL}.a", f"{MODEL}.b"}


def test_kill_between_manifest_rename_and_old_file_removal_leaves_the_new_state(tmp_path):
    old = _commit(tmp_path, "a", seed=1)
    patch = "def _killed(*a, **k):\n" + KILL_AT + "_weights._remove_unreferenced = _killed\n"
    proc = _run_child(tmp_path, patch, COMMIT_B)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    entries = _assert_consistent(tmp_path)
    assert entries[f"{MODEL}.a"]["sha256"] != old["sha256"]  # committed: the new entry, and it verifies
    assert (tmp_path / old["file"]).exists()  # removal had not happened yet
    _commit(tmp_path, "b", seed=3)
    assert not (tmp_path / old["file"]).exists()
    _assert_consistent(tmp_path)


def test_kill_inside_the_manifest_rename_leaves_a_temp_that_the_next_commit_cleans(tmp_path):
    old = _commit(tmp_path, "a", seed=1)
    patch = """
        _real_replace = os.replace
        def _replace(src, dst):
            if dst.endswith("manifest.json"):
                os.kill(os.getpid(), signal.SIGKILL)
            _real_replace(src, dst)
        os.replace = _replace
    """
    proc = _run_child(tmp_path, patch, COMMIT_B)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _assert_consistent(tmp_path) == {f"{MODEL}.a": old}
    stale = [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
    assert stale and all(f.endswith("manifest.json") for f in stale)
    _commit(tmp_path, "b", seed=3)
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")] == []


BARRIER = """
n = int(sys.argv[2]); me = sys.argv[3]
open(os.path.join(folder, ".ready-" + me), "w").close()
deadline = time.time() + 60
while len([f for f in os.listdir(folder) if f.startswith(".ready-")]) < n:
    if time.time() > deadline:
        sys.exit("the other children never came")
    time.sleep(0.01)
tmp = _weights.temp_path(folder, "weights.h5")
h5(tmp, int(me))
_weights.commit(folder, entry(sys.argv[4]), tmp)
"""
WIDEN = """
_real_write = _weights._write_manifest
def _slow_write(*a, **k):
    time.sleep(%s)  # the read-modify-write window, widened
    return _real_write(*a, **k)
_weights._write_manifest = _slow_write
"""
NO_LOCK = "_weights.folder_lock = lambda folder: contextlib.nullcontext()\n"


def _race(folder, tags, patch):
    """Commit one tag per child process, all released at once by a file barrier."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _script(patch, BARRIER), str(folder), str(len(tags)), str(i + 1), tag],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, tag in enumerate(tags)
    ]
    results = [p.communicate(timeout=120)[1] for p in procs]
    results = [(p.returncode, err) for p, err in zip(procs, results)]
    for f in os.listdir(folder):
        if f.startswith(".ready-"):
            os.unlink(os.path.join(folder, f))
    return results


def test_concurrent_commits_keep_every_entry(tmp_path):
    tags = ["t1", "t2", "t3"]
    results = _race(tmp_path, tags, WIDEN % 0.5)
    assert all(rc == 0 for rc, _ in results), results
    assert set(_assert_consistent(tmp_path)) == {f"{MODEL}.{t}" for t in tags}


def test_without_the_lock_the_same_race_loses_entries(tmp_path):
    """The control: the widened window does lose entries once the lock is taken away."""
    tags = ["t1", "t2", "t3"]
    results = _race(tmp_path, tags, WIDEN % 1.5 + NO_LOCK)
    assert all(rc == 0 for rc, _ in results), results
    assert len(_weights.read_manifest(str(tmp_path))) < len(tags)


def test_the_same_tag_from_two_runs_is_serialised_and_the_later_says_so(tmp_path):
    results = _race(tmp_path, ["same", "same"], WIDEN % 0.5)
    assert all(rc == 0 for rc, _ in results), results
    said = [err for _, err in results if f"{MODEL}.same replaces the entry written" in err]
    assert len(said) == 1
    entries = _assert_consistent(tmp_path)
    assert list(entries) == [f"{MODEL}.same"]
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".weights.h5")]) == 1


def test_disk_full_during_the_manifest_write_is_one_line_and_changes_nothing(tmp_path, monkeypatch):
    old = _commit(tmp_path, "a", seed=1)
    before = sorted(os.listdir(tmp_path)), (tmp_path / "manifest.json").read_bytes()
    tmp = _weights.temp_path(str(tmp_path), "weights.h5")
    _h5(tmp, 2)
    real_write = os.write

    def full(fd, data):
        real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OdezooError) as err:
        _weights.commit(str(tmp_path), _entry("b"), tmp)
    monkeypatch.undo()
    message = str(err.value)
    assert "\n" not in message and "No space left on device" in message and str(tmp_path) in message
    assert (sorted(os.listdir(tmp_path)), (tmp_path / "manifest.json").read_bytes()) == before
    assert _assert_consistent(tmp_path) == {f"{MODEL}.a": old}


def test_failed_write_of_a_replacement_keeps_the_old_file_and_entry(tmp_path, monkeypatch):
    old = _commit(tmp_path, "a", seed=1)

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(_weights, "_write_manifest", broken)
    tmp = _weights.temp_path(str(tmp_path), "weights.h5")
    _h5(tmp, 2)
    with pytest.raises(OdezooError, match="I/O error"):
        _weights.commit(str(tmp_path), _entry("a"), tmp)
    monkeypatch.undo()
    assert _assert_consistent(tmp_path) == {f"{MODEL}.a": old}
    assert sorted(os.listdir(tmp_path)) == sorted([_weights.LOCK, _weights.MANIFEST, old["file"]])


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o600])
def test_the_manifest_keeps_its_file_mode(tmp_path, mode):
    _commit(tmp_path, "a", seed=1)
    os.chmod(tmp_path / "manifest.json", mode)
    _commit(tmp_path, "b", seed=2)
    assert os.stat(tmp_path / "manifest.json").st_mode & 0o777 == mode


def test_a_new_manifest_gets_0644_less_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        _commit(tmp_path, "a", seed=1)
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "manifest.json").st_mode & 0o777 == 0o640


def test_add_entry_keeps_the_file_mode_too(tmp_path):
    entry = _commit(tmp_path, "a", seed=1)
    os.chmod(tmp_path / "manifest.json", 0o644)
    _weights.add_entry(str(tmp_path), dict(entry, tag="b"))
    assert os.stat(tmp_path / "manifest.json").st_mode & 0o777 == 0o644


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temps_of_dead_writers_are_cleaned_and_live_ones_kept(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".tmp-{dead}-abc-x.weights.h5").write_bytes(b"partial")
    (tmp_path / f".tmp-{dead}-abd-ckpt").mkdir()
    (tmp_path / f".tmp-{dead}-abd-ckpt" / "inner").write_bytes(b"x")
    mine = _weights.temp_path(str(tmp_path), "y.weights.h5")
    open(mine, "wb").close()
    (tmp_path / ".tmpother").write_bytes(b"not ours")
    removed = _weights.clean_stale_temps(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == [f".tmp-{dead}-abc-x.weights.h5", f".tmp-{dead}-abd-ckpt"]
    assert os.path.exists(mine) and (tmp_path / ".tmpother").exists()
    assert os.path.basename(mine).startswith(f".tmp-{os.getpid()}-")


def test_check_writable_names_the_folder_and_the_reason(tmp_path):
    _weights.check_writable(str(tmp_path / "new" / "zoo"))  # created, and left empty
    assert os.listdir(tmp_path / "new" / "zoo") == []
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OdezooError) as err:
        _weights.check_writable(str(tmp_path / "afile" / "zoo"))
    assert "\n" not in str(err.value) and str(tmp_path / "afile" / "zoo") in str(err.value)
    assert "Not a directory" in str(err.value) or "File exists" in str(err.value)


def test_check_writable_on_a_read_only_file_system():
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc")
    with pytest.raises(OdezooError, match="/proc/self"):
        _weights.check_writable("/proc/self")


# --- item 5: manifests and weights are untrusted -------------------------------------------------------------


def _write_doc(folder, entries=None, text=None):
    if text is None:
        text = json.dumps({"format": _weights.FORMAT, "version": 1, "entries": entries})
    path = folder / "manifest.json"
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return str(folder)


def _full(tag="x", **changes):
    return _entry(tag, **{"file": "w.weights.h5", "sha256": "0" * 64, **changes})


def _one_line(err):
    message = str(err.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize(
    "file,message",
    [
        ("", "'file'"),
        (".", "'file'"),
        ("./", "'file'"),
        ("sub/", "'file'"),
        ("a\x00b.weights.h5", "NUL"),
    ],
)
def test_empty_dot_folder_and_nul_file_names_are_refused(tmp_path, file, message):
    with pytest.raises(ManifestError, match=message) as err:
        _weights.read_manifest(_write_doc(tmp_path, {f"{MODEL}.x": _full(file=file)}))
    _one_line(err)


def test_a_file_name_naming_a_folder_is_refused_at_load(tmp_path):
    (tmp_path / "d.weights.h5").mkdir()
    _write_doc(tmp_path, {f"{MODEL}.x": _full(file="d.weights.h5")})
    entry = dict(_weights.read_manifest(str(tmp_path))[f"{MODEL}.x"], _folder=str(tmp_path))
    with pytest.raises(WeightsIntegrityError, match="not a regular file") as err:
        _weights.verified_file(entry)
    _one_line(err)


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"format": "odezoo-weights-manifest", "version": 1, "entries": {}, "version": 1}', "duplicate key 'version'"),
        ('{"format": "odezoo-weights-manifest", "version": NaN, "entries": {}}', "NaN"),
        ('{"format": "odezoo-weights-manifest", "version": 1, "entries": {}, "x": -Infinity}', "-Infinity"),
        ("[" * 200_000 + "]" * 200_000, "nested"),
        (
            '{"format": "odezoo-weights-manifest", "version": 1, "entries": {}, "x": ' + "[" * 100 + "]" * 100 + "}",
            "nested",
        ),
        ('{"format": "odezoo-weights-manifest", "version": 1, "entries": {}, "x": 1e400}', "non-finite"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
    ids=["duplicate", "nan", "infinity", "deep", "nested", "overflow", "not-utf8"],
)
def test_hostile_json_is_one_manifest_error(tmp_path, text, message):
    with pytest.raises(ManifestError, match=message) as err:
        _weights.read_manifest(_write_doc(tmp_path, text=text))
    _one_line(err)


def test_duplicate_entry_keys_are_refused(tmp_path):
    one = json.dumps(_full())
    text = '{"format": "odezoo-weights-manifest", "version": 1, "entries": {"%s.x": %s, "%s.x": %s}}' % (
        MODEL,
        one,
        MODEL,
        one,
    )
    with pytest.raises(ManifestError, match=f"duplicate key '{MODEL}.x'") as err:
        _weights.read_manifest(_write_doc(tmp_path, text=text))
    _one_line(err)


def test_an_oversized_manifest_is_refused_before_parsing(tmp_path, monkeypatch):
    monkeypatch.setattr(_weights, "MAX_MANIFEST_BYTES", 1000)
    _write_doc(tmp_path, {f"{MODEL}.x": _full(notes="n" * 2000)})
    monkeypatch.setattr(_weights.json, "loads", lambda *a, **k: pytest.fail("parsed"))
    with pytest.raises(ManifestError, match="larger than") as err:
        _weights.read_manifest(str(tmp_path))
    _one_line(err)


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"metrics": {"accuracy": 1.5}}, "accuracy"),
        ({"metrics": {"accuracy": -0.1}}, "accuracy"),
        ({"metrics": {"nll": 1e400}}, "Infinity"),  # json.dumps writes Infinity for it
        ({"config": {"num_classes": 1e9}}, "num_classes"),
        ({"config": {"num_classes": 1_000_000_000}}, "num_classes"),
        ({"config": {"depth": 10**7}}, "depth"),
        ({"config": {"input_shape": [100000, 100000, 3]}}, "input_shape"),
        ({"config": {"hidden": [10**7]}}, "hidden"),
        ({"tag": "a/b"}, "'tag'"),
        ({"notes": "a\x00b"}, "NUL"),
    ],
)
def test_out_of_range_values_are_refused(tmp_path, changes, message):
    entry = _full(**changes)
    with pytest.raises(ManifestError, match=message) as err:
        _weights.read_manifest(_write_doc(tmp_path, {f"{MODEL}.{entry['tag']}": entry}))
    _one_line(err)


def test_several_defaults_for_one_model_are_refused(tmp_path):
    entries = {f"{MODEL}.x": _full("x", default=True), f"{MODEL}.y": _full("y", default=True)}
    with pytest.raises(ManifestError, match=f"several default tags for {MODEL!r}") as err:
        _weights.read_manifest(_write_doc(tmp_path, entries))
    _one_line(err)


def test_commit_refuses_an_entry_it_could_not_read_back(tmp_path):
    tmp = _weights.temp_path(str(tmp_path), "weights.h5")
    _h5(tmp, 1)
    with pytest.raises(ManifestError, match="lr"):
        _weights.commit(str(tmp_path), _entry("a", lr=float("inf")), tmp)
    assert [f for f in os.listdir(tmp_path) if f != _weights.LOCK] == []


@pytest.mark.parametrize(
    "model,tag,config,message",
    [
        (MODEL, "a/b", {}, "tag 'a/b'"),
        (MODEL, "", {}, "tag ''"),
        (MODEL, "ok", {"num_classes": 10**9}, "num_classes"),
        (MODEL, "ok", {"h": float("nan")}, "non-finite"),
    ],
)
def test_entry_inputs_are_checkable_before_a_long_job(model, tag, config, message):
    with pytest.raises(ManifestError, match=message) as err:
        _weights.check_entry_inputs(model, tag, config)
    _one_line(err)
    _weights.check_entry_inputs(MODEL, "digits", {"num_classes": 10, "input_shape": [8, 8, 1]})


def test_weights_dir_naming_a_missing_folder_or_a_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ODEZOO_WEIGHTS_DIR", str(tmp_path / "mispelt"))
    with pytest.raises(ManifestError, match="ODEZOO_WEIGHTS_DIR.*mispelt.*does not exist") as err:
        _weights.zoo_dirs()
    _one_line(err)
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("ODEZOO_WEIGHTS_DIR", str(tmp_path / "afile"))
    with pytest.raises(ManifestError, match="afile.*not a folder"):
        _weights.zoo_dirs()
    monkeypatch.setenv("ODEZOO_WEIGHTS_DIR", "")
    assert _weights.zoo_dirs() == [_weights.shipped_dir()]
    monkeypatch.setenv("ODEZOO_WEIGHTS_DIR", str(tmp_path))
    assert _weights.zoo_dirs() == [str(tmp_path), _weights.shipped_dir()]


# --- loading: the hashed bytes are the loaded bytes -------------------------------------------------------

BUILT = []


def _register_tiny():
    if MODEL in odezoo.list_models():
        return

    @odezoo.register_model(MODEL, kind="classifier", family=MODEL, paper="(test)", ode_reading="(test)")
    def tiny(*, input_shape=(8, 8, 1), num_classes=10, width=4):
        import keras

        BUILT.append(width)
        inputs = keras.Input(input_shape)
        x = keras.layers.Flatten()(inputs)
        x = keras.layers.Dense(width, activation="relu")(x)
        return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x), name=MODEL)


def _zoo_with(folder, data, monkeypatch, **changes):
    (folder / "w.weights.h5").write_bytes(data)
    import hashlib

    entry = _entry("x", file="w.weights.h5", sha256=hashlib.sha256(data).hexdigest(), default=True, **changes)
    _write_doc(folder, {f"{MODEL}.x": entry})
    monkeypatch.setenv("ODEZOO_WEIGHTS_DIR", str(folder))
    _register_tiny()
    BUILT.clear()


def test_junk_with_a_matching_hash_is_refused_before_building(tmp_path, monkeypatch):
    _zoo_with(tmp_path, b"not an hdf5 file" * 10, monkeypatch)
    with pytest.raises(WeightsIntegrityError, match="not an HDF5") as err:
        odezoo.build(MODEL, pretrained="x")
    _one_line(err)
    assert BUILT == []


@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_hdf5_that_does_not_fit_the_model_is_one_line(tmp_path, monkeypatch):
    _h5(tmp_path / "src.h5", 1)
    _zoo_with(tmp_path, (tmp_path / "src.h5").read_bytes(), monkeypatch)
    with pytest.raises(WeightsIntegrityError, match=f"{MODEL}.x.*could not be loaded") as err:
        odezoo.build(MODEL, pretrained="x")
    _one_line(err)


def test_a_config_key_the_builder_does_not_take_is_a_manifest_error(tmp_path, monkeypatch):
    _zoo_with(tmp_path, b"\x89HDF\r\n\x1a\n", monkeypatch, config={"widht": 4})
    with pytest.raises(ManifestError, match="widht") as err:
        odezoo.build(MODEL, pretrained="x")
    _one_line(err)
    assert BUILT == []


def test_the_loaded_bytes_are_the_hashed_bytes(tmp_path, monkeypatch):
    import keras

    _register_tiny()
    model = odezoo.build(MODEL, width=4)
    model.save_weights(str(tmp_path / "src.weights.h5"))
    _zoo_with(tmp_path, (tmp_path / "src.weights.h5").read_bytes(), monkeypatch)
    seen = []
    real = keras.Model.load_weights

    def spy(self, path, *args, **kwargs):
        seen.append((path, oct(os.stat(os.path.dirname(path)).st_mode & 0o777), _weights.sha256_of(path)))
        (tmp_path / "w.weights.h5").write_bytes(b"swapped after the check")  # too late to matter
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "load_weights", spy)
    loaded = odezoo.build(MODEL, pretrained="x")
    ((path, mode, sha),) = seen
    assert path != str(tmp_path / "w.weights.h5") and mode == "0o700"
    assert sha == loaded.zoo_entry["sha256"]
    assert not os.path.exists(path)  # the private copy is gone
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
