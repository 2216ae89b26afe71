"""Training checkpoints: one folder per finished epoch, committed by a single rename.

``out/<model>.<tag>.ckpt/epoch-000003/`` holds ``model.keras`` (the model with
its optimizer) and ``state.json`` (the finished-epoch count, the optimizer's
step count and the run's fingerprint: model, dataset, build config, seed and
the other arguments that shape the run, with their sha256). The folder is
written under a temporary name, fsynced and renamed into place, so a kill at
any point leaves either the previous checkpoint or the new one, never a
checkpoint whose parts disagree. The last :data:`KEEP` are kept.
:meth:`Checkpoints.latest` refuses a checkpoint from another run with a
:class:`odezoo.CheckpointError` naming the keys that differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys

from odezoo import _weights
from odezoo._errors import CheckpointError

FORMAT = "odezoo-checkpoint"
VERSION = 1
KEEP = 2
MODEL_FILE = "model.keras"
STATE_FILE = "state.json"
_EPOCH_DIR = re.compile(r"^epoch-(\d{6})$")
_MAX_STATE_BYTES = 1 << 20


def run_sha256(run: dict) -> str:
    return hashlib.sha256(json.dumps(run, sort_keys=True).encode()).hexdigest()


def _fsync_tree(folder: str) -> None:
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    _weights.fsync_dir(folder)


def _differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two run fingerprints."""
    keys = sorted(set(saved) | set(current))
    out = []
    for key in keys:
        a, b = saved.get(key), current.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, name + ".")
        elif a != b:
            out.append(f"{name} ({json.dumps(a)} in the checkpoint, {json.dumps(b)} now)")
    return out


class Checkpoints:
    """The checkpoints of one run key (``model.tag``) in an ``out`` folder."""

    def __init__(self, out: str, key: str):
        self.key = key
        self.folder = os.path.join(out, f"{key}.ckpt")

    def _epochs(self) -> list[int]:
        """Finished-epoch counts of the committed checkpoints, newest first."""
        if not os.path.isdir(self.folder):
            return []
        found = [int(m.group(1)) for m in map(_EPOCH_DIR.match, os.listdir(self.folder)) if m]
        return sorted(found, reverse=True)

    def path(self, epochs_done: int) -> str:
        return os.path.join(self.folder, f"epoch-{epochs_done:06d}")

    def exists(self) -> bool:
        return bool(self._epochs())

    def newest(self) -> int | None:
        """The finished-epoch count of the newest committed checkpoint, or None."""
        epochs = self._epochs()
        return epochs[0] if epochs else None

    def save(self, model, *, epochs_done: int, optimizer_steps: int, run: dict, logs: dict) -> str:
        """Commit one checkpoint (temp folder, fsync, one rename), then keep the newest :data:`KEEP`."""
        os.makedirs(self.folder, exist_ok=True)
        _weights.clean_stale_temps(self.folder)
        final = self.path(epochs_done)
        tmp = _weights.temp_path(self.folder, os.path.basename(final))
        os.mkdir(tmp)
        try:
            model.save(os.path.join(tmp, MODEL_FILE))
            state = {
                "format": FORMAT,
                "version": VERSION,
                "epochs_done": epochs_done,
                "optimizer_steps": optimizer_steps,
                "run": run,
                "run_sha256": run_sha256(run),
                "logs": logs,
            }
            with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as fh:
                json.dump(state, fh, indent=1)
            _fsync_tree(tmp)
            if os.path.exists(final):  # a stale one of this epoch (refused at resume): the new run owns the name
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _weights.fsync_dir(self.folder)
        for old in self._epochs()[KEEP:]:
            shutil.rmtree(self.path(old), ignore_errors=True)
        return final

    def _read_state(self, folder: str) -> dict:
        path = os.path.join(folder, STATE_FILE)
        try:
            if os.path.getsize(path) > _MAX_STATE_BYTES:
                raise ValueError(f"larger than {_MAX_STATE_BYTES} bytes")
            with open(path, encoding="utf-8") as fh:
                state = json.load(fh)
        except (OSError, ValueError, RecursionError) as exc:
            raise CheckpointError(f"Checkpoint {folder}: cannot read {STATE_FILE}: {exc}.") from None
        ok = (
            isinstance(state, dict)
            and state.get("format") == FORMAT
            and state.get("version") == VERSION
            and isinstance(state.get("epochs_done"), int)
            and isinstance(state.get("optimizer_steps"), int)
            and isinstance(state.get("run"), dict)
            and state.get("run_sha256") == run_sha256(state["run"])
        )
        if not ok:
            raise CheckpointError(f"Checkpoint {folder}: {STATE_FILE} is not a valid odezoo checkpoint state.")
        if not os.path.isfile(os.path.join(folder, MODEL_FILE)):
            raise CheckpointError(f"Checkpoint {folder}: {MODEL_FILE} is missing.")
        return state

    def latest(self, run: dict):
        """``(folder, state)`` of the newest readable checkpoint, or None; refuses another run's.

        Raises:
            CheckpointError: the newest checkpoint's fingerprint differs from ``run``
                (the message names the differing keys), or none of them is readable.
        """
        epochs = self._epochs()
        if not epochs:
            return None
        errors = []
        for n in epochs:
            folder = self.path(n)
            try:
                state = self._read_state(folder)
            except CheckpointError as exc:
                errors.append(str(exc))
                continue
            for message in errors:
                print(f"odezoo: warning: skipped a damaged checkpoint: {message}", file=sys.stderr)
            if state["run_sha256"] != run_sha256(run):
                differ = _differences(state["run"], run) or ["(the fingerprint)"]
                raise CheckpointError(
                    f"--resume: {folder} is from another run; these differ: {'; '.join(differ)}. "
                    f"Rerun with the checkpoint's arguments, or remove {self.folder} to start over."
                )
            return folder, state
        raise CheckpointError(" ".join(errors))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
