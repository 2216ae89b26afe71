"""Issue 14, first step: the integrator tracing the field once against once per call site, paired.

Two ODE-Nets with identical weights (64 channels, dopri5 at 1e-3, ``compile="auto"``), one
traced with ``odezoo.ode.integrator.FIELD_TRACED_ONCE = False`` (the field traced again at
each of the integrator's call sites: the start, the initial-step probe, six stages), one with
True (traced once as a function, called at every site). The switch is read when a model's
train step is traced, so each model keeps the path it was traced with. Then ``--rounds``
training steps of each in a fresh random order per round, on one batch of 128 Fashion-MNIST
training images (random images without the Debian package), SGD with learning rate 0 so
every step solves the same ODE. Reports each model's first step (tracing, graph optimisation,
the run), its fastest and median step, the paired per-round ratio, and both losses.

    python benchmarks/ode/field_traced_once.py [--rounds 12] [--json OUT]
"""

import argparse
import json
import os
import random
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import odezoo  # noqa: E402
import odezoo.ode.integrator as integrator  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--json")
    args = p.parse_args()
    if odezoo.data.fashion_mnist_available():
        x, y = odezoo.data.load("fashion_mnist", "train")
        x, y = x[:128].astype("float32"), y[:128].astype("int64")
    else:
        rng = np.random.default_rng(0)
        x, y = rng.integers(0, 256, (128, 28, 28, 1)).astype("float32"), rng.integers(0, 10, 128)
    models, rows = {}, {}
    for once in (False, True):
        keras.utils.set_random_seed(0)
        model = odezoo.build("odenet", channels=args.channels, rtol=1e-3, atol=1e-3)
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
        integrator.FIELD_TRACED_ONCE = once
        t0 = time.perf_counter()
        loss = model.train_on_batch(x, y)
        rows[once] = dict(first_s=time.perf_counter() - t0, loss=float(np.ravel(loss)[0]), times=[])
        models[once] = model
    for _ in range(args.rounds):
        order = [False, True]
        random.shuffle(order)
        for once in order:
            t0 = time.perf_counter()
            models[once].train_on_batch(x, y)
            rows[once]["times"].append(time.perf_counter() - t0)
    for once in (False, True):
        r = rows[once]
        r.update(min_s=min(r["times"]), median_s=statistics.median(r["times"]))
        print(f"field traced once: {once!s:5} first step {r['first_s']:.2f} s, step min {r['min_s']:.3f} / "
              f"median {r['median_s']:.3f} s, loss {r['loss']:.6f}")  # fmt: skip
    ratios = [a / b for a, b in zip(rows[True]["times"], rows[False]["times"])]
    q25, q50, q75 = np.percentile(ratios, [25, 50, 75])
    print(f"paired step ratio once / per call site: median {q50:.3f} [IQR {q25:.3f}-{q75:.3f}]")
    rel = abs(rows[True]["loss"] - rows[False]["loss"]) / abs(rows[False]["loss"])
    print(f"losses: relative difference {rel:.1e} (float32 rounding: the graph optimiser may order ops differently)")
    if args.json:
        meta = dict(date_utc=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), args=vars(args),
                    load_average=os.getloadavg())  # fmt: skip
        out = dict(meta=meta, ratio=dict(median=q50, q25=q25, q75=q75),
                   rows={("once" if k else "per_call_site"): v for k, v in rows.items()})  # fmt: skip
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
