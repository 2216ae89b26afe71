"""The dopri5 adjoint's backward options on the peer problem: restarts of y and backward tolerances.

Forward + adjoint gradient of loss sum(h(1)^2) through ``odezoo.ode.adjoint_solve`` (what
``ODEBlock`` calls), compiled, for each ``adjoint_checkpoints`` (forward states per
interval the backward solve restarts y from) and backward tolerance factor (backward
rtol = atol = factor x forward), at forward rtol = atol = 1e-3 and 1e-5. Scored against
``peers.py``'s float64 reference like ``peers.py`` does (max |x - ref| / max |ref|; for the
gradient, the max of that over W1, b1, W2, b2). Writes adjoint_restart.json beside this file.

    python benchmarks/ode/adjoint_restart.py --outdir /tmp/odezoo_peers3   # peers.py's --outdir
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from odezoo import ode  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from adjoint_error import PARAMS, load_problem  # noqa: E402


def rel(x, ref):
    return float(np.abs(x - ref).max() / np.abs(ref).max())


def main():
    d, ref, w = load_problem()
    h0 = tf.constant(d["h0"])

    def field(t, y, c):
        return [tf.tanh(y[0] @ w["w1"] + w["b1"]) @ w["w2"] + w["b2"]]

    rows = []
    for tol in (1e-3, 1e-5):
        for checkpoints in (0, 1, 3):
            for factor in (1, 3, 10):
                nfe_bwd = tf.Variable(0)
                options = dict(
                    rtol=tol,
                    atol=tol,
                    adjoint_checkpoints=checkpoints,
                    adjoint_rtol=factor * tol,
                    adjoint_atol=factor * tol,
                )

                @tf.function(jit_compile=True)
                def run():
                    with tf.GradientTape() as tape:
                        outs, info = ode.adjoint_solve(
                            field,
                            0.0,
                            [h0],
                            tf.constant([1.0]),
                            [],
                            options=options,
                            on_backward=lambda i: nfe_bwd.assign(i["nfe"]),
                        )
                        loss = tf.reduce_sum(outs[0][-1] ** 2)
                    return outs[0][-1], tape.gradient(loss, [w[k] for k in PARAMS]), info["nfe"]

                h1, grads, nfe = run()
                err = {k: rel(g.numpy(), ref["grad_" + k]) for k, g in zip(PARAMS, grads)}
                rows.append(
                    dict(
                        tol=tol,
                        adjoint_checkpoints=checkpoints,
                        backward_tol_factor=factor,
                        nfe_fwd=int(nfe),
                        nfe_bwd=int(nfe_bwd.numpy()),
                        h1_rel_err=rel(h1.numpy(), ref["h_final"]),
                        grad_rel_err=err,
                        max_grad_rel_err=max(err.values()),
                    )
                )
                print(json.dumps(rows[-1]), flush=True)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "adjoint_restart.json"), "w") as fh:
        json.dump(rows, fh, indent=1)
    print("\n| tol | checkpoints | backward tol | NFE fwd / bwd | rel. err h(1) | rel. err grad |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['tol']:g} | {r['adjoint_checkpoints']} | {r['backward_tol_factor']}x | {r['nfe_fwd']} / {r['nfe_bwd']} "
            f"| {r['h1_rel_err']:.1e} | {r['max_grad_rel_err']:.1e} |"
        )


if __name__ == "__main__":
    main()
