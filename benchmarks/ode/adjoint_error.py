"""Where odezoo's adjoint gradient error on the peer problem comes from.

Runs only odezoo's backward (augmented) solve, from the *exact* h(1) of the float64
reference that ``peers.py`` wrote, and scores the parameter gradients against that
reference: the error of the backward solve alone. Compare with ``peers.py``'s
fwd + adjoint gradient error, which starts the backward solve from the computed h(1).

    python benchmarks/ode/adjoint_error.py --outdir /tmp/odezoo_peers2   # peers.py's --outdir
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from odezoo import ode  # noqa: E402

PARAMS = ("w1", "b1", "w2", "b2")


def load_problem():
    """Parse ``--outdir`` (peers.py's) and load the peer problem: (weights, reference, variables by name)."""
    p = argparse.ArgumentParser()
    p.add_argument("--outdir", required=True, help="peers.py's --outdir (weights.npz, ref_f64_1e-10.npz)")
    args = p.parse_args()
    d = dict(np.load(os.path.join(args.outdir, "weights.npz")))
    ref = dict(np.load(os.path.join(args.outdir, "ref_f64_1e-10.npz")))
    return d, ref, {k: tf.Variable(d[k]) for k in PARAMS}


def main():
    d, ref, w = load_problem()
    variables = [w[k] for k in PARAMS]

    def aug(t, s):
        y, a = s[0], s[1]
        with tf.GradientTape() as tape:
            tape.watch(y)
            fy = tf.tanh(y @ w["w1"] + w["b1"]) @ w["w2"] + w["b2"]
        g = tape.gradient(fy, [y] + variables, output_gradients=a)
        return [fy] + [-x for x in g]

    y1 = tf.constant(ref["h_final"].astype(np.float32))
    rows = []
    for tol in (1e-3, 1e-5):
        for label, mask, controller in (
            ("seminorm, predictive", [True, True] + [False] * 4, "predictive"),
            ("full norm, predictive", None, "predictive"),
            ("seminorm, pi", [True, True] + [False] * 4, "pi"),
        ):

            @tf.function(jit_compile=True)
            def run():
                state = [y1, 2.0 * y1] + [tf.zeros_like(v) for v in variables]
                return ode.integrate(
                    aug, 1.0, state, tf.constant([0.0]), rtol=tol, atol=tol, norm_mask=mask, controller=controller
                )

            out, info = run()
            err = {
                k: float(np.abs(out[2 + i][0].numpy() - ref["grad_" + k]).max() / np.abs(ref["grad_" + k]).max())
                for i, k in enumerate(PARAMS)
            }
            rows.append(
                dict(
                    tol=tol,
                    backward=label,
                    nfe_bwd=int(info["nfe"]),
                    grad_rel_err=err,
                    max_grad_rel_err=max(err.values()),
                )
            )
            print(json.dumps(rows[-1]), flush=True)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "adjoint_error.json"), "w") as fh:
        json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
