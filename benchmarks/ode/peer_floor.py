"""The field-evaluation floor of the peer problem, and each odezoo configuration's time as a multiple of it.

t_f: one evaluation of the peer field f(t, h) = tanh(h W1 + b1) W2 + b2 (h 256 x 64, float32);
t_vjp: one evaluation with its vector-Jacobian product with respect to the state *and the
parameters* (a·∂f/∂h and a·∂f/∂θ: what one step of a backward solve or of backpropagation
needs for the parameter gradient); t_vjp_state: the same with respect to the state only (the
floor of issue 15's first table, which understated a backward evaluation by the two matmuls of
the parameter cotangent, so the ratios it gave were too high). Each is timed as a chain of N
calls inside one XLA-compiled ``tf.while_loop`` (h <- h + 1e-3 f(h), the cotangents
accumulated the same way, so nothing is folded away), divided by N; the median of 7 runs. The
floor of a configuration is NFE_fwd·t_f + NFE_bwd·t_vjp (``+checkpoint`` too: since 7023b93 its
backward evaluations are the taped replay's, each with its VJP, on a solve of at most
sqrt(max_steps) steps like this one; before, half were plain replays: (NFE_fwd + NFE_bwd/2)·t_f +
NFE_bwd/2·t_vjp, the rule of the earlier tables), and its ratio is the measured forward +
gradient time over that floor: what the integrator itself adds.

    python benchmarks/ode/peer_floor.py --peers /tmp/peers15/..json-dir [--json OUT]

``--peers`` is peers.py's ``--outdir`` (its per-configuration JSON files, pass 1).
"""

import argparse
import glob
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

N = 400


def floor_chains(weights):
    """{"t_f_ms" | "t_vjp_ms" | "t_vjp_state_ms": a compiled chain of N calls, run as fn(h0)}, and h0."""
    d = {k: tf.constant(v) for k, v in np.load(weights).items()}

    def f(h):
        return tf.tanh(h @ d["w1"] + d["b1"]) @ d["w2"] + d["b2"]

    @tf.function(jit_compile=True)
    def chain_f(h):
        return tf.while_loop(lambda i, h: i < N, lambda i, h: (i + 1, h + 1e-3 * f(h)), (0, h))[1]

    @tf.function(jit_compile=True)
    def chain_vjp_state(h):
        def body(i, h, a):
            with tf.GradientTape() as tape:
                tape.watch(h)
                out = f(h)
            g = tape.gradient(out, h, output_gradients=a)
            return i + 1, h + 1e-3 * out, a + 1e-3 * g

        return tf.while_loop(lambda i, h, a: i < N, body, (0, h, tf.ones_like(h)))[1:]

    params = [d[k] for k in ("w1", "b1", "w2", "b2")]

    @tf.function(jit_compile=True)
    def chain_vjp(h):
        def body(i, h, a, gs):
            with tf.GradientTape() as tape:
                tape.watch(h)
                tape.watch(params)
                out = f(h)
            g, *gp = tape.gradient(out, [h] + params, output_gradients=a)
            return i + 1, h + 1e-3 * out, a + 1e-3 * g, [x + 1e-3 * y for x, y in zip(gs, gp)]

        start = (0, h, tf.ones_like(h), [tf.zeros_like(p) for p in params])
        return tf.while_loop(lambda i, h, a, gs: i < N, body, start)[1:]

    return dict(t_f_ms=chain_f, t_vjp_ms=chain_vjp, t_vjp_state_ms=chain_vjp_state), d["h0"]


def floor_times(weights):
    """The median over 7 runs of each chain, per call, in ms."""
    chains, h0 = floor_chains(weights)
    out = {}
    for name, fn in chains.items():
        tf.nest.map_structure(lambda x: x.numpy(), fn(h0))  # compile
        runs = []
        for _ in range(7):
            t0 = time.perf_counter()
            tf.nest.map_structure(lambda x: x.numpy(), fn(h0))
            runs.append((time.perf_counter() - t0) / N * 1e3)
        out[name] = statistics.median(runs)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--peers", required=True, help="peers.py --outdir (weights.npz and p1_odezoo_*.json)")
    p.add_argument("--json")
    args = p.parse_args()
    floor = floor_times(os.path.join(args.peers, "weights.npz"))
    rows = []
    for path in sorted(glob.glob(os.path.join(args.peers, "p1_odezoo_*.json"))):
        with open(path) as fh:
            r = json.load(fh)
        if r["mode"] == "tfp_dopri5" or "nfe_fwd" not in r:
            continue
        nf, nb = r["nfe_fwd"], r["nfe_bwd"]  # counted inside the field
        vjp_evals = nb
        replays = nb - vjp_evals

        def floor_with(t_vjp, nf=nf, replays=replays, vjp_evals=vjp_evals):
            return (nf + replays) * floor["t_f_ms"] + vjp_evals * t_vjp

        t_floor = floor_with(floor["t_vjp_ms"])
        rows.append(dict(mode=r["mode"], tol=r["tol"], nfe_forward=nf, nfe_backward=nb, fwd_grad_ms=r["fwd_grad_ms"],
                         floor_ms=t_floor, ratio=r["fwd_grad_ms"] / t_floor,
                         ratio_state_only_vjp=r["fwd_grad_ms"] / floor_with(floor["t_vjp_state_ms"])))  # fmt: skip
    print(
        f"t_f = {floor['t_f_ms']:.3f} ms, t_vjp = {floor['t_vjp_ms']:.3f} ms "
        f"(state only: {floor['t_vjp_state_ms']:.3f} ms)"
    )
    print("| configuration | tol | NFE fwd / bwd | fwd + grad ms | floor ms | ÷ floor | ÷ state-only floor |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['tol']:g} | {r['nfe_forward']} / {r['nfe_backward']} | {r['fwd_grad_ms']:.1f} | "
              f"{r['floor_ms']:.1f} | {r['ratio']:.2f} | {r['ratio_state_only_vjp']:.2f} |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                dict(date_utc=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), **floor, rows=rows), fh, indent=1
            )


if __name__ == "__main__":
    main()
