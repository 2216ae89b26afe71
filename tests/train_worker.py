"""Subprocess side of tests/test_reliability.py: ``odezoo train`` with a fault injected at a chosen point.

usage: python train_worker.py FAULT RESULT.json -- ODEZOO-TRAIN-ARGS...
  FAULT: "none"; "batch:N" (SIGKILL after the N-th training batch of this process);
  "before-commit:N" / "after-commit:N" (SIGKILL just before / after the rename that commits
  the N-th checkpoint of this process); "before-weights" (SIGKILL after training, before the
  weights and manifest commit); "slow-commit:S" (sleep S seconds inside the manifest's
  locked section, to widen the race window of concurrent runs); "no-space-check" (skip the
  free-space check before training, so that the disk fills up during the run).
RESULT.json gets the exit status, the optimizer's step count and the entry (when the run ends).
Faults are injected by wrapping module functions from here: odezoo has no test hooks.
"""

import json
import os
import signal
import sys
import time

fault, result = sys.argv[1], sys.argv[2]
argv = sys.argv[sys.argv.index("--") + 1 :]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from odezoo import _checkpoint, _train, _weights, cli  # noqa: E402


def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


kind, _, arg = fault.partition(":")
if kind == "batch":
    make_guard = _train._guard_callback

    def guard_then_kill(*a, **k):
        guard = make_guard(*a, **k)
        on_batch = guard.on_train_batch_end
        seen = [0]

        def counted(batch, logs=None):
            on_batch(batch, logs)
            seen[0] += 1
            if seen[0] >= int(arg):
                die()

        guard.on_train_batch_end = counted
        return guard

    _train._guard_callback = guard_then_kill
elif kind in ("before-commit", "after-commit"):
    rename, calls = os.rename, [0]

    def killing_rename(src, dst):
        is_commit = os.path.basename(dst).startswith("epoch-")
        calls[0] += is_commit
        if is_commit and kind == "before-commit" and calls[0] >= int(arg):
            die()
        rename(src, dst)
        if is_commit and kind == "after-commit" and calls[0] >= int(arg):
            die()

    _checkpoint.os.rename = killing_rename
elif kind == "before-weights":
    _train._weights.commit = lambda *a, **k: die()
elif kind == "slow-commit":
    write = _weights._write_manifest

    def slow_write(*a, **k):
        time.sleep(float(arg))
        return write(*a, **k)

    _weights._write_manifest = slow_write
elif kind == "no-space-check":
    _train._check_space = lambda *a, **k: None
elif kind != "none":
    raise SystemExit(f"unknown fault {fault!r}")

steps = {}
train = _train.train


def recording_train(*a, **k):
    entry, model = train(*a, **dict(k, return_model=True))
    steps["optimizer_steps"] = int(model.optimizer.iterations.numpy())
    steps["entry"] = entry
    return entry


_train.train = recording_train
status = cli.main(["train"] + argv)
with open(result, "w") as fh:
    json.dump(dict(status=status, **steps), fh)
sys.exit(status)
