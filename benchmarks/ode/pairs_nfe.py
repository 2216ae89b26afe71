"""Issue 15: each embedded pair's NFE and accuracy beside torchdiffeq's and diffrax's same tableau.

No timing (that is lockstep.py's job): field evaluations, steps and the error against the closed
form, which do not depend on machine load. The problem is odezoo.testing's linear test problem
(y' = A y + b cos t, eigenvalues -1 ± 2i) on [0, 10], float64, rtol = atol = tol, the solution
asked at t = 10 only. Each library runs its own controller and error norm with the pair:

* odezoo: ``odeint(solver=name)``; NFE from a counter inside the field (a tf.Variable).
* torchdiffeq (``--torch-py``, a subprocess): ``odeint(method=...)``; NFE from a Python counter.
* diffrax (in this process, JAX float64): ``diffeqsolve`` with ``PIDController(rtol, atol)``
  (its elementary default) and the same tableau, ``dt0=None`` (its own initial step). It reports
  steps, not evaluations: its steps, accepted and rejected, are listed instead (an FSAL pair
  spends s - 1 evaluations a step).

Pairs compared: dopri5 (torchdiffeq dopri5, diffrax Dopri5), tsit5 (diffrax Tsit5; torchdiffeq has
none), bosh3 (torchdiffeq bosh3, diffrax Bosh3), heun_euler (torchdiffeq adaptive_heun, diffrax Heun),
dopri8 (odezoo's is Hairer's dop853, 12 stages with the 5th/3rd-order combined estimate;
torchdiffeq's dopri8 and diffrax's Dopri8 are Prince & Dormand's 13-stage 8(7) pair: the same
order, a different tableau and a single 7th-order estimate).

    python benchmarks/ode/pairs_nfe.py --torch-py /tmp/venv_torch/bin/python --json OUT
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

PAIRS = {  # odezoo name: (torchdiffeq method, diffrax solver class)
    "dopri5": ("dopri5", "Dopri5"),
    "tsit5": (None, "Tsit5"),
    "bosh3": ("bosh3", "Bosh3"),
    "heun_euler": ("adaptive_heun", "Heun"),
    "dopri8": ("dopri8", "Dopri8"),  # the peers' dopri8 is another 8th-order tableau (see below)
}
T1 = 10.0

TORCH = r"""
import json, sys, numpy as np, torch
from torchdiffeq import odeint
torch.set_default_dtype(torch.float64)
A = torch.tensor([[-1.0, 2.0], [-2.0, -1.0]]); b = torch.tensor([1.0, 0.5])
y0 = torch.tensor([1.0, -0.5])
out = {}
for method, tol in json.loads(sys.argv[1]):
    calls = [0]
    def f(t, y):
        calls[0] += 1
        return A @ y + b * torch.cos(t)
    y = odeint(f, y0, torch.tensor([0.0, %(t1)r]), method=method, rtol=tol, atol=tol)[-1]
    out[f"{method}@{tol}"] = dict(y=y.tolist(), nfe=calls[0])
print(json.dumps(out))
""" % {"t1": T1}


def run_odezoo(name, tol, problem):
    import tensorflow as tf

    import odezoo

    calls = tf.Variable(0, dtype=tf.int64)
    A, b = tf.constant(problem["A"]), tf.constant(problem["b"])

    def f(t, y):
        calls.assign_add(1)
        return tf.linalg.matvec(A, y) + b * tf.cos(t)

    y = odezoo.odeint(f, tf.constant(problem["y0"]), tf.constant([0.0, T1], tf.float64), solver=name,
                      rtol=tol, atol=tol, max_steps=100000)  # fmt: skip
    return dict(y=y.numpy()[-1].tolist(), nfe=int(calls.numpy()))


def run_diffrax(cls_name, tol, problem):
    import jax

    jax.config.update("jax_enable_x64", True)
    import diffrax
    import jax.numpy as jnp

    A, b = jnp.asarray(problem["A"]), jnp.asarray(problem["b"])

    def f(t, y, args):
        return A @ y + b * jnp.cos(t)

    solver = getattr(diffrax, cls_name)()
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(f), solver, t0=0.0, t1=T1, dt0=None, y0=jnp.asarray(problem["y0"]),
        stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol), max_steps=100000,
    )  # fmt: skip
    stats = {k: int(v) for k, v in sol.stats.items() if k.startswith("num_")}
    return dict(y=np.asarray(sol.ys[-1]).tolist(), nfe=None, **stats)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--torch-py", default=None)
    p.add_argument("--tols", default="1e-3,1e-5,1e-7,1e-9")
    p.add_argument("--json")
    args = p.parse_args()
    from odezoo.testing import linear_test_problem

    problem = linear_test_problem()
    exact = problem["exact"](T1)
    tols = [float(t) for t in args.tols.split(",")]
    torch_out = {}
    if args.torch_py:
        jobs = [(m, t) for n, (m, _) in PAIRS.items() if m for t in tols if n != "heun_euler" or t >= 1e-7]
        proc = subprocess.run([args.torch_py, "-c", TORCH, json.dumps(jobs)], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(proc.stderr)
        torch_out = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = []
    for name, (torch_method, diffrax_cls) in PAIRS.items():
        for tol in tols:
            if name == "heun_euler" and tol < 1e-7:
                continue  # a second-order pair: about 10^5 steps at 1e-9 on [0, 10]
            row = dict(pair=name, tol=tol)
            r = run_odezoo(name, tol, problem)
            row["odezoo"] = dict(nfe=r["nfe"], err=float(np.max(np.abs(np.array(r["y"]) - exact))))
            if torch_method and f"{torch_method}@{tol}" in torch_out:
                r = torch_out[f"{torch_method}@{tol}"]
                row["torchdiffeq"] = dict(method=torch_method, nfe=r["nfe"],
                                          err=float(np.max(np.abs(np.array(r["y"]) - exact))))  # fmt: skip
            try:
                r = run_diffrax(diffrax_cls, tol, problem)
                row["diffrax"] = dict(solver=diffrax_cls, steps=r.get("num_steps"), accepted=r.get("num_accepted_steps"),
                                      rejected=r.get("num_rejected_steps"),
                                      err=float(np.max(np.abs(np.array(r["y"]) - exact))))  # fmt: skip
            except ImportError:
                pass
            rows.append(row)
    print("| pair | tol | odezoo NFE | odezoo error | torchdiffeq NFE | torchdiffeq error | "
          "diffrax steps (rejected) | diffrax error |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        t, d = r.get("torchdiffeq"), r.get("diffrax")
        torch_cols = f"{t['nfe']} | {t['err']:.2e}" if t else "– | –"
        diffrax_cols = f"{d['steps']} ({d['rejected']}) | {d['err']:.2e}" if d else "– | –"
        print(
            f"| {r['pair']} | {r['tol']:g} | {r['odezoo']['nfe']} | {r['odezoo']['err']:.2e} | {torch_cols} | {diffrax_cols} |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(meta=dict(date_utc=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), t1=T1,
                                     argv=sys.argv), rows=rows), fh, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
