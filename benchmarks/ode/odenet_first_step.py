"""Issue 14: where ODE-Net's first training step goes (tracing, graph optimisation, the run).

The first ``train_on_batch`` of a model does three things before the step's own work:
Python traces Keras's train step into a graph (the model's call, ODEBlock's solve and its
adjoint, the gradient graph, the optimizer), TensorFlow optimises the graph (Grappler) and
creates its kernels, then the step runs. This script separates them on the same model
and batch as ``odenet_step.py`` (64 channels, batch 128, Fashion-MNIST or random images,
dopri5 at 1e-3), each in a fresh process:

* ``e2e``: the wall time of the first ``train_on_batch`` and the median of the next ones.
* ``split``: the train step wrapped as Keras wraps it (``tf.function(model.train_step)``,
  ``jit_compile`` as Keras resolved it); ``get_concrete_function`` times the tracing alone,
  the first call then times optimisation + kernel creation + one step; the steady step is
  subtracted from it. The tracing is profiled (cProfile), and the cumulative time of
  odezoo's own functions is listed, so that what odezoo adds to the trace is visible.

    python benchmarks/ode/odenet_first_step.py [--compile auto] [--channels 64] [--field-traced-once no] [--json OUT]
"""

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def setup(args):
    import keras
    import numpy as np

    import odezoo
    import odezoo.ode.integrator as integrator

    integrator.FIELD_TRACED_ONCE = args.field_traced_once == "yes"
    t0 = time.perf_counter()
    keras.utils.set_random_seed(0)
    model = odezoo.build("odenet", channels=args.channels, compile=args.compile, rtol=args.tol, atol=args.tol)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    build_s = time.perf_counter() - t0
    if odezoo.data.fashion_mnist_available():
        x, y = odezoo.data.load("fashion_mnist", "train")
        x, y = x[: args.batch].astype("float32"), y[: args.batch].astype("int64")
    else:
        rng = np.random.default_rng(0)
        x, y = rng.integers(0, 256, (args.batch, 28, 28, 1)).astype("float32"), rng.integers(0, 10, args.batch)
    return model, x, y, build_s


def e2e(args):
    import numpy as np

    model, x, y, build_s = setup(args)
    t0 = time.perf_counter()
    model.train_on_batch(x, y)
    first = time.perf_counter() - t0
    steady = []
    for _ in range(args.steady):
        t0 = time.perf_counter()
        model.train_on_batch(x, y)
        steady.append(time.perf_counter() - t0)
    return dict(
        build_s=build_s, first_step_s=first, steady_step_s=float(np.median(steady)), jit=bool(model.jit_compile)
    )


def split(args):
    import numpy as np
    import tensorflow as tf

    model, x, y, build_s = setup(args)
    jit = bool(model.jit_compile)
    model.optimizer.build(model.trainable_variables)  # Keras does this before tracing, too
    step = tf.function(lambda x, y: model.train_step((x, y)), jit_compile=jit, reduce_retracing=True)
    specs = (tf.TensorSpec(x.shape, tf.float32), tf.TensorSpec(y.shape, tf.int64))
    profile = cProfile.Profile()
    t0 = time.perf_counter()
    profile.enable()
    concrete = step.get_concrete_function(*specs)
    profile.disable()
    trace_s = time.perf_counter() - t0
    xs, ys = tf.constant(x), tf.constant(y)
    t0 = time.perf_counter()
    step(xs, ys)
    first_call_s = time.perf_counter() - t0
    steady = []
    for _ in range(args.steady):
        t0 = time.perf_counter()
        out = step(xs, ys)
        float(out["loss"]) if isinstance(out, dict) and "loss" in out else None
        steady.append(time.perf_counter() - t0)
    steady_s = float(np.median(steady))
    import odezoo

    root = os.path.dirname(os.path.dirname(os.path.abspath(odezoo.__file__)))  # odezoo/ and plugins/
    stats = pstats.Stats(profile)
    ours = []
    for (path, line, name), (_, _, _, cumulative, _) in stats.stats.items():
        rel = os.path.relpath(os.path.realpath(path), root) if os.path.realpath(path).startswith(root) else None
        if rel and (rel.startswith("odezoo") or rel.startswith("plugins")):
            ours.append((cumulative, f"{rel}:{line}:{name}"))
    ours.sort(reverse=True)
    ops = len(concrete.graph.get_operations())
    functions = len(concrete.graph.as_graph_def().library.function)
    return dict(
        build_s=build_s,
        jit=jit,
        trace_s=trace_s,
        first_call_s=first_call_s,
        steady_step_s=steady_s,
        optimise_and_kernels_s=first_call_s - steady_s,
        graph_ops=ops,
        graph_functions=functions,
        odezoo_cumulative_s=[(round(c, 3), where) for c, where in ours[: args.top]],
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--compile", default="auto", choices=("auto", "xla", "graph"))
    p.add_argument("--field-traced-once", choices=("yes", "no"), default="yes",
                   help="odezoo.ode.integrator.FIELD_TRACED_ONCE (no: the field traced at each call site)")  # fmt: skip
    p.add_argument("--steady", type=int, default=3)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--phase", choices=("both", "e2e", "split"), default="both")
    p.add_argument("--json")
    args = p.parse_args()
    if args.phase != "both":
        result = (e2e if args.phase == "e2e" else split)(args)
        print("RESULT " + json.dumps(result))
        return
    results = {}
    for phase in ("e2e", "split"):
        cmd = [sys.executable, __file__, "--phase", phase] + [
            a for a in sys.argv[1:] if not a.startswith("--json") and a != args.json
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[phase] = json.loads([line for line in out.splitlines() if line.startswith("RESULT ")][-1][7:])
    e, s = results["e2e"], results["split"]
    print(f"compile={args.compile} (jit_compile={s['jit']}), channels {args.channels}, batch {args.batch}, "
          f"field traced once: {args.field_traced_once}")  # fmt: skip
    print(f"e2e   : build {e['build_s']:.2f} s, first train_on_batch {e['first_step_s']:.2f} s, "
          f"steady {e['steady_step_s']:.3f} s")  # fmt: skip
    print(f"split : trace {s['trace_s']:.2f} s, optimise + kernels {s['optimise_and_kernels_s']:.2f} s, "
          f"steady {s['steady_step_s']:.3f} s; graph {s['graph_ops']} ops, {s['graph_functions']} functions")  # fmt: skip
    print("odezoo's functions during the trace (cumulative s):")
    for c, where in s["odezoo_cumulative_s"]:
        print(f"  {c:7.3f}  {where}")
    if args.json:
        meta = dict(args=vars(args), date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, **results), f, indent=1)


if __name__ == "__main__":
    main()
