"""Issue 14 probe: ODE-Net's training step with the solve under XLA (today) or in TensorFlow's graph executor.

The probe swaps the compiled function ODEBlock caches for its solve (``block._compiled``,
a private detail: this is a measurement, not an API) for a plain ``tf.function`` over the
same ``_solve``, so the forward solve and the adjoint run in the graph executor. Both
models have identical weights, the same batch of Fashion-MNIST training images (the Debian
package; random images without it) and ``jit_compile=False`` for Keras's step. The loss
and the gradient's effect (the weights after one step) are compared.

    python benchmarks/ode/odenet_compile_probe.py [--channels 64] [--batch 128] [--steps 3]
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import odezoo  # noqa: E402


def batch(n, seed=0):
    if odezoo.data.fashion_mnist_available():
        x, y = odezoo.data.load("fashion_mnist", "train")
        return x[:n].astype("float32"), y[:n]
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28, 1)).astype("float32"), rng.integers(0, 10, n)


def graph_solves(model):
    for block in model.ode_blocks():
        for training in (True, False, None):
            block._compiled[training] = tf.function(
                lambda x, b=block, tr=training: b._solve(x, tr), autograph=False, reduce_retracing=True
            )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args()
    x, y = batch(args.batch)
    models = {}
    for name in ("xla_solve", "graph_solve"):
        keras.utils.set_random_seed(0)
        m = odezoo.build("odenet", channels=args.channels)
        # SGD: after one step the weight difference is lr x the gradient difference (Adam would amplify
        # the sign of near-zero gradients to +-lr)
        m.compile(optimizer=keras.optimizers.SGD(1e-2), loss="sparse_categorical_crossentropy", jit_compile=False)
        if name == "graph_solve":
            graph_solves(m)
        models[name] = m
    w0 = [v.numpy() for v in models["xla_solve"].trainable_variables]
    for v, w in zip(models["graph_solve"].trainable_variables, w0):
        v.assign(w)
    rows = {}
    for name, m in models.items():
        t0 = time.perf_counter()
        out = m.train_on_batch(x, y)
        loss = float(out[0] if isinstance(out, (list, tuple)) else out)
        first = time.perf_counter() - t0
        rows[name] = dict(
            first_s=first, first_loss=loss, times=[], nfe=[int(b.nfe_forward.numpy()) + 0 for b in m.ode_blocks()]
        )
    moved = max(
        float(np.abs(a.numpy() - b.numpy()).max())
        for a, b in zip(models["xla_solve"].trainable_variables, models["graph_solve"].trainable_variables)
    )
    for _ in range(args.steps):  # interleaved
        for name, m in models.items():
            t0 = time.perf_counter()
            m.train_on_batch(x, y)
            rows[name]["times"].append(time.perf_counter() - t0)
    for name, r in rows.items():
        r.update(min_s=min(r["times"]), median_s=statistics.median(r["times"]))
        print(
            f"{name:12s} first step {r['first_s']:6.1f} s (loss {r['first_loss']:.5f})  "
            f"min {r['min_s']:6.2f} s  median {r['median_s']:6.2f} s  NFE fwd {r['nfe']}"
        )
    print(f"largest weight difference after the first step (SGD, lr 1e-2): {moved:.2e}")
    if args.json:
        meta = dict(
            date_utc=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            args=vars(args),
            load_average=os.getloadavg(),
            fashion_mnist=odezoo.data.fashion_mnist_available(),
        )
        with open(args.json, "w") as fh:
            json.dump(dict(meta=meta, rows=rows, weight_diff_after_first_step=moved), fh, indent=1)


if __name__ == "__main__":
    main()
