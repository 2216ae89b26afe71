"""Issue 14's narrowing step: a 3x3 convolution's VJP inside a ``tf.while_loop``, compiled four ways.

ODE-Net's adjoint evaluates the field's VJP (with respect to the state and the
weights) once per backward stage, inside a ``tf.while_loop``. This script times
that pattern alone, on ODE-Net's shapes (state 128x7x7x64, time as a 65th input
channel, 3x3 kernel 65->64, ``padding="same"``), ``ITERS`` iterations that carry
the state and accumulate the kernel's cotangent as the adjoint does:

* ``single_xla``: one VJP in a ``jit_compile=True`` function (the per-evaluation floor);
* ``loop_xla``: the loop in a ``jit_compile=True`` function (odezoo's adjoint today);
* ``loop_graph``: the same loop in a plain ``tf.function`` (TensorFlow's graph executor);
* ``loop_graph_xla_body``: the loop in the graph executor, its body one ``jit_compile`` call;
* ``loop_xla_im2col``: the XLA loop with the kernel's cotangent written as an im2col matmul;
* ``loop_xla_canonical``: both cotangents as canonical forward ops (a convolution with the
  flipped kernel for the state's, the im2col matmul for the kernel's);
* ``loop_xla_state_only``: the XLA loop without the kernel's cotangent (a different answer: timing only).

Each variant's results are compared with ``loop_graph``'s (same inputs, same answers).

    python benchmarks/ode/conv_vjp_loop.py [--iters 28] [--repeats 5] [--json FILE]
"""

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

B, H, W, C = 128, 7, 7, 64


def conv(y, t, kernel):
    t_col = tf.ones_like(y[..., :1]) * t
    return tf.nn.conv2d(tf.concat([y, t_col], -1), kernel, 1, "SAME")


def vjp(y, t, kernel, a):
    """(aᵀ ∂f/∂y, aᵀ ∂f/∂kernel) by the tape."""
    with tf.GradientTape() as tape:
        tape.watch([y, kernel])
        f = conv(y, t, kernel)
    return tape.gradient(f, [y, kernel], output_gradients=a)


def vjp_im2col(y, t, kernel, a):
    """The same VJP, the kernel's part as patches(x)ᵀ · a (one canonical matmul)."""
    t_col = tf.ones_like(y[..., :1]) * t
    x = tf.concat([y, t_col], -1)
    with tf.GradientTape() as tape:
        tape.watch(y)
        f = tf.nn.conv2d(tf.concat([y, t_col], -1), kernel, 1, "SAME")
    gy = tape.gradient(f, y, output_gradients=a)
    patches = tf.image.extract_patches(x, [1, 3, 3, 1], [1, 1, 1, 1], [1, 1, 1, 1], "SAME")  # B,H,W,9*(C+1)
    gk = tf.matmul(tf.reshape(patches, [-1, 9 * (C + 1)]), tf.reshape(a, [-1, C]), transpose_a=True)
    return gy, tf.reshape(gk, [3, 3, C + 1, C])


def vjp_canonical(y, t, kernel, a):
    """Both parts as canonical forward ops: the state's as a convolution of ``a`` with the flipped,
    transposed kernel (stride 1, 'SAME', odd kernel), the kernel's as the im2col matmul."""
    t_col = tf.ones_like(y[..., :1]) * t
    x = tf.concat([y, t_col], -1)
    flipped = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])[..., :C]  # 3,3,C_out,C_in; drop t's channel
    gy = tf.nn.conv2d(a, flipped, 1, "SAME")
    patches = tf.image.extract_patches(x, [1, 3, 3, 1], [1, 1, 1, 1], [1, 1, 1, 1], "SAME")
    gk = tf.matmul(tf.reshape(patches, [-1, 9 * (C + 1)]), tf.reshape(a, [-1, C]), transpose_a=True)
    return gy, tf.reshape(gk, [3, 3, C + 1, C])


def vjp_state_only(y, t, kernel, a):
    """The state's part alone (the kernel's cotangent left out: a zero)."""
    with tf.GradientTape() as tape:
        tape.watch(y)
        f = conv(y, t, kernel)
    return tape.gradient(f, y, output_gradients=a), tf.zeros_like(kernel)


def make_loop(step, iters):
    def loop(y, kernel, a):
        def body(i, y, acc):
            # the cotangent changes with the state, as the adjoint's does (nothing is loop-invariant)
            gy, gk = step(y, tf.cast(i, tf.float32) / iters, kernel, a + 1e-3 * y)
            return i + 1, y - 1e-3 * gy, acc + gk

        _, y, acc = tf.while_loop(lambda i, *_: i < iters, body, (0, y, tf.zeros_like(kernel)))
        return y, acc

    return loop


def variants(iters):
    inner = tf.function(lambda y, t, k, a: vjp(y, t, k, a), jit_compile=True)
    return {
        "single_xla": tf.function(lambda y, k, a: vjp(y, 0.5, k, a), jit_compile=True),
        "loop_xla": tf.function(make_loop(vjp, iters), jit_compile=True),
        "loop_graph": tf.function(make_loop(vjp, iters)),
        "loop_graph_xla_body": tf.function(make_loop(lambda y, t, k, a: inner(y, t, k, a), iters)),
        "loop_xla_im2col": tf.function(make_loop(vjp_im2col, iters), jit_compile=True),
        "loop_xla_canonical": tf.function(make_loop(vjp_canonical, iters), jit_compile=True),
        "loop_xla_state_only": tf.function(make_loop(vjp_state_only, iters), jit_compile=True),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=28, help="loop iterations (ODE-Net's backward NFE at 1e-3)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json")
    args = p.parse_args()
    rng = np.random.default_rng(14)
    y = tf.constant(rng.normal(size=(B, H, W, C)).astype(np.float32))
    a = tf.constant(rng.normal(size=(B, H, W, C)).astype(np.float32))
    kernel = tf.constant((rng.normal(size=(3, 3, C + 1, C)) / np.sqrt(9 * (C + 1))).astype(np.float32))
    fns = variants(args.iters)
    rows, answers = [], {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        out = [o.numpy() for o in fn(y, kernel, a)]
        first = time.perf_counter() - t0
        answers[name] = out
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            [o.numpy() for o in fn(y, kernel, a)]
            times.append(time.perf_counter() - t0)
        per_iter = 1.0 if name == "single_xla" else args.iters
        rows.append(
            dict(
                variant=name,
                first_s=first,
                min_ms=min(times) * 1e3,
                median_ms=statistics.median(times) * 1e3,
                per_iteration_ms=statistics.median(times) * 1e3 / per_iter,
            )
        )
        print(
            f"{name:22s} first {first:6.2f} s  min {min(times) * 1e3:8.1f} ms  median {statistics.median(times) * 1e3:8.1f} ms"
            f"  per iteration {rows[-1]['per_iteration_ms']:7.2f} ms",
            flush=True,
        )
    ref = answers["loop_graph"]
    for row in rows:
        if row["variant"] in ("single_xla", "loop_xla_state_only"):  # other answers: not compared
            continue
        got = answers[row["variant"]]
        row["max_rel_diff_vs_loop_graph"] = max(float(np.abs(g - r).max() / np.abs(r).max()) for g, r in zip(got, ref))
        print(f"{row['variant']:22s} max relative difference from loop_graph: {row['max_rel_diff_vs_loop_graph']:.1e}")
    if args.json:
        meta = dict(
            date_utc=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            tensorflow=tf.__version__,
            machine=platform.machine(),
            cpus=os.cpu_count(),
            load_average=os.getloadavg(),
            args=vars(args),
        )
        with open(args.json, "w") as fh:
            json.dump(dict(meta=meta, rows=rows), fh, indent=1)


if __name__ == "__main__":
    main()
