"""Paired timing of ``odezoo train``'s cost per epoch: two source trees, the same run, interleaved.

usage: python benchmarks/train/epoch_cost.py OLD_TREE NEW_TREE [--rounds R] [--model resnet20]
       [--dataset digits] [--epochs E] [--batch-size B] [--out results.json]

Each round trains the same model (same seed, data and arguments) once with each
tree, in a fresh process, the order alternating between rounds. A wrapper
around ``keras.Model.fit`` adds a last callback that records the wall time of
every epoch from its start to the end of every other callback's
``on_epoch_end`` (the checkpoint included); the first epoch (compilation) is
dropped. Reported: the median epoch time of each tree per round, and the
median and interquartile range of the per-round ratio new/old.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

CHILD = r'''
import json, os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras
fit = keras.Model.fit
times = []

class Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.t = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None):
        times.append(time.perf_counter() - self.t)

def timed_fit(self, *a, callbacks=None, **k):
    return fit(self, *a, callbacks=list(callbacks or []) + [Timer()], **k)

keras.Model.fit = timed_fit
from odezoo import _train
args = json.loads(sys.argv[1])
_train.train(args.pop("model"), verbose=0, **args)
print("EPOCH_TIMES " + json.dumps(times))
'''


def one(tree, args):
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, PYTHONPATH=tree, CUDA_VISIBLE_DEVICES="")
        done = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(dict(args, out=out))],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    line = next(x for x in done.stdout.splitlines() if x.startswith("EPOCH_TIMES "))
    return json.loads(line.split(" ", 1)[1])[1:]  # drop the compiling first epoch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    args = dict(model=a.model, dataset=a.dataset, epochs=a.epochs, batch_size=a.batch_size, lr=1e-3, seed=0)
    rows = []
    for r in range(a.rounds):
        order = [("old", a.old), ("new", a.new)] if r % 2 == 0 else [("new", a.new), ("old", a.old)]
        got = {name: float(np.median(one(tree, args))) for name, tree in order}
        rows.append(dict(round=r, order=[n for n, _ in order], **got, ratio=got["new"] / got["old"]))
        print(json.dumps(rows[-1]), flush=True)
    ratios = np.array([row["ratio"] for row in rows])
    summary = dict(
        args=args,
        rounds=rows,
        median_ratio=float(np.median(ratios)),
        iqr=[float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))],
        old_median_s=float(np.median([row["old"] for row in rows])),
        new_median_s=float(np.median([row["new"] for row in rows])),
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "rounds"}))
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(summary, fh, indent=1)


if __name__ == "__main__":
    main()
