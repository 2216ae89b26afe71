"""Activation memory per sample of ``revnet`` and ``resnet`` at depth 20, 56 and 110.

For each (model, depth, jit_compile, batch) a FRESH process builds the model,
compiles it (SGD with momentum, sparse categorical cross-entropy) and runs ONE
training step (``train_on_batch``) on synthetic 32×32×3 data, then reports its
peak resident memory (``ru_maxrss``). The slope of peak memory over batch size
between two batch sizes (64 and 256) is the activation memory in MB per
sample: what does not grow with the batch (TensorFlow's import, graph/XLA
compilation, the weights) cancels. Reported per (model, depth, jit): the slope
and its ratio to depth 20's.

    python benchmarks/families/memory.py                      # jit_compile on and off
    python benchmarks/families/memory.py --jit on --models revnet --depths 20 110

``--models`` may also name ``plain`` (the plain-Keras ResNet of plain_resnet.py).
``--patch MODULE`` imports MODULE from this folder in each fresh process and
calls its ``apply()`` first, to measure a proposed change without touching the
core (the RevNet probes of benchmarks/README.md were measured this way).
"""

import argparse
import concurrent.futures
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def compiled_model_and_batch(model_name, depth, batch, jit):
    """The model (``"plain"``: plain Keras ResNet) compiled with SGD + momentum, and a synthetic CIFAR batch."""
    import numpy as np
    import keras

    if model_name == "plain":
        sys.path.insert(0, HERE)
        from plain_resnet import plain_resnet

        model = plain_resnet(depth)
    else:
        import odezoo

        model = odezoo.build(model_name, depth=depth, input_shape=(32, 32, 3))
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="sparse_categorical_crossentropy", jit_compile=jit
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, (batch,)).astype("int32")
    return model, x, y


def child(model_name, depth, batch, jit, patch=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import importlib

    if patch:  # an investigation probe in this folder that replaces a core function
        import odezoo  # noqa: F401  (loads the plugins the probe patches)

        sys.path.insert(0, HERE)
        importlib.import_module(patch).apply()

    model, x, y = compiled_model_and_batch(model_name, depth, batch, jit)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    loss = float(model.train_on_batch(x, y))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    print(
        json.dumps(
            dict(
                model=model_name,
                depth=depth,
                batch=batch,
                jit=jit,
                peak_mb=peak,
                before_step_mb=before,
                loss=loss,
                step_s=seconds,
                params=model.count_params(),
            )
        )
    )


def measure(model_name, depth, batch, jit, patch=None):
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        model_name,
        str(depth),
        str(batch),
        "on" if jit else "off",
    ] + (["--patch", patch] if patch else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", nargs=4, metavar=("MODEL", "DEPTH", "BATCH", "JIT"), help=argparse.SUPPRESS)
    p.add_argument("--models", nargs="+", default=["resnet", "revnet"], choices=["resnet", "revnet", "plain"])
    p.add_argument("--depths", nargs="+", type=int, default=[20, 56, 110])
    p.add_argument("--batches", nargs=2, type=int, default=[64, 256])
    p.add_argument("--jit", choices=("on", "off", "both"), default="both")
    p.add_argument("--patch", help="module in this folder whose apply() patches the core first (investigation only)")
    p.add_argument("--workers", type=int, default=2, help="fresh processes run at once")
    p.add_argument("--json", help="also write the raw runs and slopes to this file")
    args = p.parse_args()
    if args.child:
        m, d, b, j = args.child
        return child(m, int(d), int(b), j == "on", args.patch)

    lo, hi = args.batches
    jits = {"on": [True], "off": [False], "both": [True, False]}[args.jit]
    jobs = [(m, d, b, j) for j in jits for m in args.models for d in args.depths for b in (lo, hi)]
    # Each run is one process; peak RSS is per process, so running two at once
    # (XLA compilation is mostly single-threaded) changes the time, not the memory.
    with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
        results = dict(zip(jobs, pool.map(lambda job: measure(*job, args.patch), jobs)))
    runs, rows = list(results.values()), []
    for r in runs:
        if r["loss"] != r["loss"]:
            raise SystemExit(f"non-finite loss: {r}")
    for jit in jits:
        for model_name in args.models:
            base = None
            for depth in args.depths:
                r_lo, r_hi = results[(model_name, depth, lo, jit)], results[(model_name, depth, hi, jit)]
                slope = (r_hi["peak_mb"] - r_lo["peak_mb"]) / (hi - lo)
                base = slope if depth == args.depths[0] else base
                row = dict(
                    model=model_name,
                    depth=depth,
                    jit=jit,
                    slope_mb_per_sample=slope,
                    ratio_to_first=slope / base,
                    peak_lo_mb=r_lo["peak_mb"],
                    peak_hi_mb=r_hi["peak_mb"],
                    before_lo_mb=r_lo["before_step_mb"],
                    before_hi_mb=r_hi["before_step_mb"],
                    step_hi_s=r_hi["step_s"],
                )
                rows.append(row)
                print(
                    f"jit={jit!s:5} {model_name:7} depth {depth:3}: peak {r_lo['peak_mb']:.0f} MB @{lo}, "
                    f"{r_hi['peak_mb']:.0f} MB @{hi} (before step {r_lo['before_step_mb']:.0f}/"
                    f"{r_hi['before_step_mb']:.0f}) -> {slope:.2f} MB/sample, x{row['ratio_to_first']:.2f} "
                    f"of depth {args.depths[0]}  [first step {r_hi['step_s']:.0f} s]",
                    flush=True,
                )
    print(f"\n| model | jit_compile | depth | peak MB @{lo} | peak MB @{hi} | MB/sample | × depth {args.depths[0]} |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['jit']} | {r['depth']} | {r['peak_lo_mb']:.0f} | {r['peak_hi_mb']:.0f} | "
            f"{r['slope_mb_per_sample']:.2f} | {r['ratio_to_first']:.2f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(runs=runs, slopes=rows), f, indent=1)


if __name__ == "__main__":
    main()
