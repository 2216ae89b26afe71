"""Training step time of each odezoo family against a ResNet written in plain Keras.

One process; both models compiled the same way (SGD with momentum, sparse
categorical cross-entropy, ``jit_compile`` on by default) and trained with
``train_on_batch`` on the same synthetic batch (raw pixels 0-255, 32×32×3).
After a warm-up the odezoo model and the plain one alternate step by step
(the order flips every pair), so machine drift hits both alike; the figure
reported is the median of the paired ratios odezoo/plain with its
interquartile range, plus each model's median step time.

    python benchmarks/families/step_time.py                      # XLA (default)
    python benchmarks/families/step_time.py --jit both           # XLA and plain tf.function
    python benchmarks/families/step_time.py --families revnet --revnet-backward loop   # --revnet-compile xla

Checks that the two do identical work: the odezoo ``resnet`` and the plain
model have the same parameter count, and with the plain model's weights set
from the odezoo one they give the same outputs; every loss is finite.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402

import odezoo  # noqa: E402
from plain_resnet import plain_resnet  # noqa: E402

FAMILIES = ("resnet", "polynet", "fractalnet", "revnet", "lm_resnet")


def compiled(model, jit):
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="sparse_categorical_crossentropy", jit_compile=jit
    )
    return model


def check_same_network(ode, plain, x):
    """Same parameter count and, with shared weights, the same outputs."""
    if ode.count_params() != plain.count_params():
        raise SystemExit(f"parameter counts differ: odezoo {ode.count_params()} vs plain {plain.count_params()}")
    saved = plain.get_weights()
    plain.set_weights(ode.get_weights())
    diff = float(np.max(np.abs(ode.predict_on_batch(x[:16]) - plain.predict_on_batch(x[:16]))))
    plain.set_weights(saved)
    if diff > 1e-4:
        raise SystemExit(f"odezoo resnet and plain Keras ResNet disagree with shared weights: max |diff| = {diff}")
    return diff


def timed_step(model, x, y):
    start = time.perf_counter()
    loss = model.train_on_batch(x, y)
    return time.perf_counter() - start, float(loss)


def pair(ode, plain, x, y, steps, warmup):
    losses = []
    for _ in range(warmup):
        for m in (ode, plain):
            losses.append(timed_step(m, x, y)[1])
    t_ode, t_plain = [], []
    for i in range(steps):
        order = ((ode, t_ode), (plain, t_plain)) if i % 2 == 0 else ((plain, t_plain), (ode, t_ode))
        for m, times in order:
            dt, loss = timed_step(m, x, y)
            times.append(dt)
            losses.append(loss)
    if not np.all(np.isfinite(losses)):
        raise SystemExit(f"non-finite loss for {ode.name}: {losses}")
    t_ode, t_plain = np.array(t_ode), np.array(t_plain)
    ratios = t_ode / t_plain
    q25, q50, q75 = np.percentile(ratios, [25, 50, 75])
    return dict(
        ratio_median=q50,
        ratio_q25=q25,
        ratio_q75=q75,
        odezoo_ms=1e3 * np.median(t_ode),
        plain_ms=1e3 * np.median(t_plain),
        steps=steps,
        last_loss=losses[-1],
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=30, help="paired steps measured per family")
    p.add_argument("--warmup", type=int, default=3, help="steps of each model before measuring")
    p.add_argument("--jit", choices=("on", "off", "both"), default="on")
    p.add_argument(
        "--revnet-backward", choices=("unrolled", "loop"), default="unrolled", help="RevNet's stage gradient"
    )
    p.add_argument(
        "--revnet-compile", choices=("auto", "xla", "graph"), default="auto", help="RevNet's compile policy (loop)"
    )
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args()

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, (args.batch,)).astype("int32")
    results = []
    for jit in {"on": [True], "off": [False], "both": [True, False]}[args.jit]:
        keras.utils.set_random_seed(0)
        plain = compiled(plain_resnet(args.depth), jit)
        for family in args.families:
            options = {}
            if family == "revnet":  # only what differs from the defaults (an older odezoo lacks `compile`)
                options = {k: v for k, v in (("backward", args.revnet_backward), ("compile", args.revnet_compile))
                           if v != {"backward": "unrolled", "compile": "auto"}[k]}  # fmt: skip
            ode = compiled(odezoo.build(family, depth=args.depth, input_shape=(32, 32, 3), **options), jit)
            row = dict(family=family, jit=jit, params=ode.count_params(), plain_params=plain.count_params(), **options)
            row["jit_used"] = bool(ode.jit_compile)
            if family == "resnet":
                row["max_output_diff"] = check_same_network(ode, plain, x)
            row.update(pair(ode, plain, x, y, args.steps, args.warmup))
            results.append(row)
            print(
                f"jit={jit!s:5} (used {row['jit_used']!s:5}) {family:10} params {row['params']:>7}  ratio {row['ratio_median']:.3f} "
                f"[IQR {row['ratio_q25']:.3f}-{row['ratio_q75']:.3f}]  odezoo {row['odezoo_ms']:.0f} ms  "
                f"plain {row['plain_ms']:.0f} ms  loss {row['last_loss']:.3f}",
                flush=True,
            )
            del ode
    print("\n| family | jit_compile (asked / used) | params | odezoo/plain (median) | IQR | odezoo ms | plain ms |")
    print("|---|---|---:|---:|---|---:|---:|")
    for r in results:
        print(
            f"| {r['family']} | {r['jit']} / {r['jit_used']} | {r['params']:,} | {r['ratio_median']:.3f} | "
            f"{r['ratio_q25']:.3f}–{r['ratio_q75']:.3f} | {r['odezoo_ms']:.0f} | {r['plain_ms']:.0f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=float)


if __name__ == "__main__":
    main()
