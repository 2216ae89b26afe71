"""odezoo's dopri5 vs tfp's DormandPrince on the peer Neural-ODE problem (CPU, XLA).

The problem of ../../../shared/bench/peer_ode_bench (f(t, h) = tanh(h W1 + b1) W2 + b2,
h: 256 x 64, hidden 128, float32, t in [0, 1], loss sum(h(1)^2)), with its weights
(numpy default_rng(0), regenerated here by the peer's make_weights.py).

Run: python benchmarks/ode/bench_odezoo.py [--repeats 7] [--out benchmarks/ode/results.json]
Each configuration: median forward ms, median forward+gradient ms, NFE forward /
backward (counted by a variable inside f), compile s, and the max relative error of
h(1) against a float64 scipy DOP853 reference at rtol = atol = 1e-10.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

from odezoo import ode  # noqa: E402

PEER = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "bench", "peer_ode_bench")


def weights():
    sys.path.insert(0, os.path.abspath(PEER))
    import make_weights

    path = "/tmp/odezoo_peer_weights.npz"
    make_weights.make(path)
    return dict(np.load(path))


def reference(d):
    w1, b1, w2, b2 = (d[k].astype(np.float64) for k in ("w1", "b1", "w2", "b2"))
    shape = d["h0"].shape

    def f(t, y):
        h = y.reshape(shape)
        return (np.tanh(h @ w1 + b1) @ w2 + b2).ravel()

    sol = solve_ivp(f, (0.0, 1.0), d["h0"].astype(np.float64).ravel(), method="DOP853", rtol=1e-10, atol=1e-10)
    return sol.y[:, -1].reshape(shape)


def median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        tf.nest.map_structure(lambda x: x.numpy() if hasattr(x, "numpy") else x, out)
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def run(config, tol, d, ref, repeats):
    params = [tf.Variable(d[k]) for k in ("w1", "b1", "w2", "b2")]
    h0 = tf.constant(d["h0"])
    counter = tf.Variable(0.0, dtype=tf.float32, trainable=False)  # float: tfp watches every variable f reads

    def f(t, h):
        counter.assign_add(1.0)
        w1, b1, w2, b2 = params
        return tf.tanh(h @ w1 + b1) @ w2 + b2

    times = tf.constant([1.0])
    if config == "tfp":
        solver = tfp.math.ode.DormandPrince(rtol=tol, atol=tol)

        def forward():
            return solver.solve(f, 0.0, h0, solution_times=times).states[-1]
    else:
        gradient = "backprop" if config == "odezoo_backprop" else "adjoint"
        max_steps = 200 if gradient == "backprop" else 10000  # backprop under XLA preallocates max_steps

        def forward():
            outs, info = (
                ode.adjoint_solve(
                    lambda t, y, c: [f(t, y[0])],
                    0.0,
                    [h0],
                    times,
                    [],
                    options=dict(rtol=tol, atol=tol, max_steps=max_steps),
                )
                if gradient == "adjoint"
                else ode.integrate(lambda t, y: [f(t, y[0])], 0.0, [h0], times, rtol=tol, atol=tol, max_steps=max_steps)
            )
            return outs[0][-1]

    @tf.function(jit_compile=True)
    def fwd():
        counter.assign(0.0)
        y = forward()
        return y, counter.read_value()

    @tf.function(jit_compile=True)
    def fwd_grad():
        counter.assign(0.0)
        with tf.GradientTape() as tape:
            y = forward()
            n_fwd = tf.identity(counter.read_value())
            loss = tf.reduce_sum(y**2)
        g = tape.gradient(loss, params)
        return y, g, n_fwd, counter.read_value()

    t = time.perf_counter()
    y, _ = fwd()
    compile_fwd = time.perf_counter() - t
    t = time.perf_counter()
    _, g, n_fwd, n_total = fwd_grad()
    compile_grad = time.perf_counter() - t
    ms_fwd = median_ms(fwd, repeats)
    ms_grad = median_ms(fwd_grad, repeats)
    err = float(np.abs(y.numpy() - ref).max() / np.abs(ref).max())
    return dict(
        config=config,
        tol=tol,
        fwd_ms=ms_fwd,
        fwd_grad_ms=ms_grad,
        nfe_fwd=int(n_fwd),
        nfe_bwd=int(n_total) - int(n_fwd),
        rel_err=err,
        compile_fwd_s=compile_fwd,
        compile_grad_s=compile_grad,
        grads=[x.numpy() for x in g],
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--tols", default="1e-3,1e-5")
    p.add_argument("--configs", default="odezoo,tfp,odezoo_backprop")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results.json"))
    args = p.parse_args()
    d = weights()
    ref = reference(d)
    rows = []
    for tol in [float(x) for x in args.tols.split(",")]:
        grads = {}
        for config in args.configs.split(","):
            r = run(config, tol, d, ref, args.repeats)
            grads[config] = r.pop("grads")
            base = grads.get("odezoo")
            r["grad_rel_diff_vs_odezoo_adjoint"] = (
                None
                if base is None
                else max(float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(base, grads[config]))
            )
            rows.append(r)
            print(json.dumps(r), flush=True)
    with open(args.out, "w") as fh:
        json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
