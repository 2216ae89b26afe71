"""How much of odezoo's timed step is Keras's ``train_on_batch`` wrapper, not the compiled step?

Same model and data as step_time.py (8gaussians, batch 512, seed 0). Two copies of the flow with
the same initial weights: one trained by ``train_on_batch`` (what step_time.py times), one by
``tf.function(flow.train_step, jit_compile=True)`` called directly (the function Keras compiles,
without its Python wrapper: metric reset, data generator, ``pythonify_logs``). Interleaved rounds;
CPU and wall ms per step, 1 thread.

    python benchmarks/flow/probe_overhead.py --rounds 6 --steps 20
"""

import argparse
import json
import os
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--rounds", type=int, default=6)
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--out", default="")
args = ap.parse_args()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
import keras  # noqa: E402

import odezoo  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def make():
    flow = odezoo.build("ffjord", data_dim=2, seed=0)
    for layer, (W, b) in zip(flow.fields[0].layers_, common.init_weights(0)):
        layer.kernel.assign(W)
        layer.bias.assign(b)
    flow.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    return flow


a, b = make(), make()
b.optimizer.build(b.trainable_variables)
direct = tf.function(b.train_step, jit_compile=True)
rng_a, _ = common.streams(0)
rng_b, _ = common.streams(0)


def run_a():
    x = common.sample("8gaussians", rng_a, 512)
    w, c = time.perf_counter(), time.process_time()
    logs = a.train_on_batch(x, return_dict=True)
    return time.perf_counter() - w, time.process_time() - c, int(logs["nfe_forward"]) + int(logs["nfe_backward"])


def run_b():
    x = tf.constant(common.sample("8gaussians", rng_b, 512))
    w, c = time.perf_counter(), time.process_time()
    logs = direct(x)
    nfe = int(logs["nfe_forward"]) + int(logs["nfe_backward"])
    return time.perf_counter() - w, time.process_time() - c, nfe


rec = {"train_on_batch": [], "direct": []}
for r in range(args.rounds):
    for name, fn in (
        (("train_on_batch", run_a), ("direct", run_b)) if r % 2 == 0 else (("direct", run_b), ("train_on_batch", run_a))
    ):
        out = [fn() for _ in range(args.steps)]
        if r > 0:
            rec[name] += out
for name, v in rec.items():
    v = np.array(v)
    print(
        f"{name:15s} CPU ms/step {np.median(v[:, 1]) * 1e3:6.1f} [{np.percentile(v[:, 1], 25) * 1e3:.1f}-{np.percentile(v[:, 1], 75) * 1e3:.1f}]"
        f"  wall {np.median(v[:, 0]) * 1e3:6.1f}  NFE {np.median(v[:, 2]):.0f}  CPU µs/NFE {np.median(v[:, 1] / v[:, 2]) * 1e6:.0f}"
    )
if args.out:
    json.dump(rec, open(args.out, "w"))
