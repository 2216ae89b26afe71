"""Training through a stiff solve: the gradient of a loss on Robertson's kinetics in its rate constants.

The loss L(k) = sum over t in {1, 1e2, 1e4, 1e5} of (y1(t) + 1e4·y2(t)) on Robertson's kinetics
(stiffness ratio ~1e11), and its log-sensitivities k_j·dL/dk_j by:

* odezoo ``kvaerno5`` with each gradient: ``"adjoint"`` (an implicit pair's adjoint reads y off the
  forward solve, ``odezoo/ode/interpolated.py``), ``"checkpoint"`` and ``"backprop"``;
* diffrax ``Kvaerno5`` with ``RecursiveCheckpointAdjoint`` (its default) and ``BacksolveAdjoint``
  (which re-integrates y backward), in a subprocess (``--jax-py``, float64);

the same PID controller (pcoeff 0.3, icoeff 0.4), rtol as given, atol = 1e-4·rtol. Answers
checked against central differences (relative step 1e-5) of scipy's Radau at rtol 1e-12, atol
1e-16: the error is the largest relative error of the three sensitivities. Times: forward +
gradient, compiled (XLA / jax.jit), the median of ``--repeats`` calls after a compiling one.
NFE (odezoo): the forward and backward solves' field evaluations (Newton iterations; the
Jacobians not counted), as the solver reports them.

    python benchmarks/ode/stiff_grad.py --jax-py /tmp/venv_jax/bin/python --out benchmarks/ode/stiff_grad.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
from stiff import timed  # this folder (the script's own)

K0 = np.array([0.04, 1e4, 3e7])
TS = np.array([0.0, 1.0, 1e2, 1e4, 1e5])
TOLS = (1e-6, 1e-8)


def loss_of(ys):
    """The loss from the states at TS[1:], shape (4, 3)."""
    return ys[:, 0].sum() + 1e4 * ys[:, 1].sum()


def reference():
    from scipy.integrate import solve_ivp

    def loss(k):
        def f(t, y):
            return [-k[0] * y[0] + k[1] * y[1] * y[2], k[0] * y[0] - k[1] * y[1] * y[2] - k[2] * y[1] ** 2,
                    k[2] * y[1] ** 2]  # fmt: skip

        s = solve_ivp(f, (0.0, TS[-1]), [1.0, 0.0, 0.0], method="Radau", t_eval=TS[1:], rtol=1e-12, atol=1e-16)
        return loss_of(s.y.T)

    out = []
    for j in range(3):
        e = np.zeros(3)
        e[j] = 1e-5 * K0[j]
        out.append((loss(K0 + e) - loss(K0 - e)) / (2 * e[j]) * K0[j])
    return np.array(out)


def run_odezoo(repeats):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    from odezoo.ode import PIDController, solve

    k = tf.Variable(K0)

    def field(t, y):
        return tf.stack([-k[0] * y[0] + k[1] * y[1] * y[2], k[0] * y[0] - k[1] * y[1] * y[2] - k[2] * y[1] ** 2,
                         k[2] * y[1] ** 2])  # fmt: skip

    rows = []
    for rtol in TOLS:
        for gradient in ("adjoint", "checkpoint", "backprop"):

            @tf.function(jit_compile=True)
            def run(gradient=gradient, rtol=rtol):
                counts = {}
                with tf.GradientTape() as tape:
                    ys, _ = solve(field, tf.constant([1.0, 0.0, 0.0], tf.float64), tf.constant(0.0, tf.float64),
                                  tf.constant(TS[1:]), solver="kvaerno5", rtol=rtol, atol=1e-4 * rtol,
                                  gradient=gradient, controller=PIDController(pcoeff=0.3, icoeff=0.4),
                                  on_forward=lambda i: counts.update(fwd=i["nfe"]) or [],
                                  on_backward=lambda i: counts.update(bwd=i["nfe"]) or [])  # fmt: skip
                    loss = tf.reduce_sum(ys[:, 0]) + 1e4 * tf.reduce_sum(ys[:, 1])
                return tape.gradient(loss, k) * K0, counts["fwd"], counts["bwd"]

            (sens, nfe_fwd, nfe_bwd), seconds = timed(lambda run=run: [x.numpy() for x in run()], repeats)
            rows.append(dict(solver="odezoo kvaerno5", gradient=gradient, rtol=rtol, seconds=seconds,
                             sensitivities=sens.tolist(), nfe_fwd=int(nfe_fwd), nfe_bwd=int(nfe_bwd)))  # fmt: skip
    import keras
    import tensorflow_probability as tfp

    versions = dict(tensorflow=tf.__version__, tfp=tfp.__version__, keras=keras.__version__)
    return rows, versions


def run_diffrax(repeats):
    import jax

    jax.config.update("jax_enable_x64", True)
    import diffrax
    import jax.numpy as jnp

    def vf(t, y, k):
        return jnp.stack([-k[0] * y[0] + k[1] * y[1] * y[2], k[0] * y[0] - k[1] * y[1] * y[2] - k[2] * y[1] ** 2,
                          k[2] * y[1] ** 2])  # fmt: skip

    rows = []
    for rtol in TOLS:
        for name, adjoint in (("RecursiveCheckpointAdjoint", diffrax.RecursiveCheckpointAdjoint()),
                              ("BacksolveAdjoint", diffrax.BacksolveAdjoint())):  # fmt: skip
            controller = diffrax.PIDController(rtol=rtol, atol=1e-4 * rtol, pcoeff=0.3, icoeff=0.4)

            def loss(k, controller=controller, adjoint=adjoint):
                sol = diffrax.diffeqsolve(diffrax.ODETerm(vf), diffrax.Kvaerno5(), 0.0, TS[-1], None,
                                          jnp.array([1.0, 0.0, 0.0]), args=k, saveat=diffrax.SaveAt(ts=TS[1:]),
                                          stepsize_controller=controller, max_steps=100000, adjoint=adjoint,
                                          throw=False)  # fmt: skip
                return jnp.sum(sol.ys[:, 0]) + 1e4 * jnp.sum(sol.ys[:, 1])

            grad = jax.jit(jax.grad(loss))
            g, seconds = timed(lambda grad=grad: np.asarray(jax.block_until_ready(grad(jnp.array(K0)))), repeats)
            rows.append(dict(solver="diffrax Kvaerno5", gradient=name, rtol=rtol, seconds=seconds,
                             sensitivities=(g * K0).tolist()))  # fmt: skip
    return rows, dict(jax=jax.__version__, diffrax=diffrax.__version__)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jax-py", help="python with jax and diffrax (omit: odezoo only)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "stiff_grad.json"))
    p.add_argument("--worker", choices=("diffrax",), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker == "diffrax":
        print(json.dumps(run_diffrax(args.repeats)))
        return
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    uptime_start = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    ref = reference()
    rows, versions = run_odezoo(args.repeats)
    if args.jax_py:
        out = subprocess.run([args.jax_py, __file__, "--worker", "diffrax", "--repeats", str(args.repeats)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        more, peer_versions = json.loads(out.stdout.strip().splitlines()[-1])
        rows += more
        versions.update(peer_versions)
    for r in rows:
        s = np.array(r["sensitivities"])
        r["error"] = float(np.max(np.abs(s - ref) / np.abs(ref))) if np.all(np.isfinite(s)) else float("nan")
    meta = dict(date_utc_start=started, uptime_start=uptime_start, python=platform.python_version(),
                uptime_end=subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
                command=" ".join(["python"] + sys.argv), reference=ref.tolist(), versions=versions)  # fmt: skip
    with open(args.out, "w") as fh:
        json.dump(dict(meta=meta, rows=rows), fh, indent=1)
    print("| solver | gradient | rtol | max rel. error of k·dL/dk | NFE fwd / bwd | fwd + grad (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        nfe = f"{r['nfe_fwd']} / {r['nfe_bwd']}" if "nfe_fwd" in r else "—"
        print(f"| {r['solver']} | {r['gradient']} | {r['rtol']:.0e} | {r['error']:.2g} | {nfe} | {r['seconds']:.4f} |")


if __name__ == "__main__":
    main()
