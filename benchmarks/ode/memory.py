"""Peak memory of one training step vs rtol, and the gradient's error: adjoint, backprop, checkpoint.

Each (gradient, rtol) runs in a fresh process: build the peer problem's field
(f = tanh(h W1 + b1) W2 + b2, h 256 x 64) as an ODEBlock, compile the train step
(XLA) and run it once, reset the peak (VmHWM, via /proc/self/clear_refs), run
it again and report that step's peak minus the resident memory before it, and the NFE.
Before the steps, the loss's gradient at the initial weights is compared with a reference:
the same block in float64 with the adjoint at rtol = atol = 1e-10 (relative error, 2-norm
over all weights).

    python benchmarks/ode/memory.py [--out FILE]   # table on stdout, memory.json beside this file
"""

import json
import os
import subprocess
import sys

RTOLS = (1e-3, 1e-5, 1e-7)
GRADIENTS = ("adjoint", "backprop", "checkpoint")


def child(gradient, rtol):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf

    from odezoo import ODEBlock

    class Field(keras.layers.Layer):
        def build(self, t_shape, y_shape):
            self.w1 = self.add_weight(shape=(64, 128), initializer="glorot_normal")
            self.b1 = self.add_weight(shape=(128,), initializer="zeros")
            self.w2 = self.add_weight(shape=(128, 64), initializer="glorot_normal")
            self.b2 = self.add_weight(shape=(64,), initializer="zeros")

        def call(self, t, h):
            return tf.tanh(h @ self.w1 + self.b1) @ self.w2 + self.b2

    block = ODEBlock(Field(), rtol=rtol, atol=rtol, gradient=gradient, max_steps=1000)
    h0 = tf.constant(np.random.default_rng(0).normal(size=(256, 64)).astype("float32") * 3)
    block.build(h0.shape)
    opt = keras.optimizers.SGD(1e-3)

    def gradient_of(b, x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(b(x) ** 2)
        return [g.numpy().astype("float64") for g in tape.gradient(loss, b.trainable_variables)]

    ref_block = ODEBlock(Field(dtype="float64"), rtol=1e-10, atol=1e-10, gradient="adjoint", max_steps=100000,
                         dtype="float64")  # fmt: skip
    ref_block.build(h0.shape)
    for w_ref, w in zip(ref_block.trainable_variables, block.trainable_variables):
        w_ref.assign(tf.cast(w, tf.float64))
    reference = gradient_of(ref_block, tf.cast(h0, tf.float64))
    measured = gradient_of(block, h0)
    num = sum(float(np.sum((a - b) ** 2)) for a, b in zip(measured, reference))
    den = sum(float(np.sum(b**2)) for b in reference)
    grad_rel_err = (num / den) ** 0.5

    @tf.function(jit_compile=True)
    def step(h0):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(block(h0) ** 2)
        grads = tape.gradient(loss, block.trainable_variables)
        opt.apply(grads, block.trainable_variables)
        return loss

    def status_mb(key):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024

    step(h0)  # compile (its memory is not the step's)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak (VmHWM) to the current resident set
    before = status_mb("VmRSS")
    step(h0)
    peak = status_mb("VmHWM")
    print(
        json.dumps(
            dict(
                gradient=gradient,
                rtol=rtol,
                rss_before_mb=before,
                peak_mb=peak,
                step_peak_minus_rss_mb=peak - before,
                nfe_forward=int(block.nfe_forward.numpy()),
                nfe_backward=int(block.nfe_backward.numpy()),
                grad_rel_err=grad_rel_err,
            )
        )
    )


def main():
    rows = []
    for gradient in GRADIENTS:
        for rtol in RTOLS:
            out = subprocess.run(
                [sys.executable, __file__, "--child", gradient, str(rtol)], capture_output=True, text=True
            )
            line = [x for x in out.stdout.splitlines() if x.startswith("{")]
            row = json.loads(line[-1]) if line else dict(gradient=gradient, rtol=rtol, error=out.stderr[-500:])
            rows.append(row)
            print(json.dumps(row), flush=True)
    out_path = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else None
    out_path = out_path or os.path.join(os.path.dirname(os.path.abspath(__file__)), "memory.json")
    with open(out_path, "w") as fh:
        json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], float(sys.argv[3]))
    else:
        main()  # python benchmarks/ode/memory.py [--out FILE]
