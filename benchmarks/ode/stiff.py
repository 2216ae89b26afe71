"""Stiff problems: odezoo's ESDIRK pairs beside scipy (BDF, Radau), diffrax's Kvaerno5 and tfp's BDF.

Three problems, answers checked against scipy's Radau at rtol 1e-12 (the linear batch: the
matrix exponential):

* Robertson's chemical kinetics, t ∈ [0, 1e5], atol = 1e-4·rtol (y₂ is ~1e-5);
* Van der Pol with μ = 1000 (y₁' = y₂, y₂' = μ(1 − y₁²)y₂ − y₁), t ∈ [0, 3000], atol = rtol;
* a batch of 64 independent 10-dimensional linear systems y' = A_b y, A_b = Q_b diag(−logspace(0, 4))
  Q_bᵀ (stiffness ratio 1e4), t ∈ [0, 10], atol = rtol: odezoo solves the (64, 10) state with
  one shared step and per-row Jacobians; scipy row by row; diffrax with ``jax.vmap`` (its usual
  way: each row its own steps); tfp's BDF through odezoo (``solver="bdf"``, ``ODEBlock``'s per-sample
  BDF).

The error is the largest |y − y_ref| / (atol + rtol·|y_ref|) over the solution times and
components: "tolerance units" (1 = exactly the asked accuracy). Times: the median of
``--repeats`` calls after a first (compiling) one; odezoo and diffrax compiled (XLA / jax.jit),
scipy in Python. NFE: field evaluations (odezoo counts Newton iterations, not the Jacobian's
VJPs; scipy its ``nfev``, Jacobians by finite differences counted in it).

    python benchmarks/ode/stiff.py --out benchmarks/ode/stiff.json   # diffrax in a subprocess
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

TS = {
    "robertson": np.array([0.0, 1e-2, 1.0, 1e2, 1e4, 1e5]),
    "vdp1000": np.linspace(0.0, 3000.0, 7),
    "linear64": np.linspace(0.0, 10.0, 6),
}
Y0 = {"robertson": np.array([1.0, 0.0, 0.0]), "vdp1000": np.array([2.0, 0.0])}
TOLS = {"robertson": (1e-4, 1e-6, 1e-8), "vdp1000": (1e-4, 1e-6), "linear64": (1e-4, 1e-6, 1e-8)}
ATOL = {"robertson": 1e-4, "vdp1000": 1.0, "linear64": 1.0}  # atol = ATOL·rtol
MU = 1000.0


def linear_batch():
    rng = np.random.default_rng(0)
    mats = []
    for _ in range(64):
        q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
        mats.append(q @ np.diag(-np.logspace(0, 4, 10)) @ q.T)
    return np.stack(mats), rng.normal(size=(64, 10))


def np_field(name):
    if name == "robertson":
        return lambda t, y: np.array(
            [-0.04 * y[0] + 1e4 * y[1] * y[2], 0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2, 3e7 * y[1] ** 2]
        )
    if name == "vdp1000":
        return lambda t, y: np.array([y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]])
    raise KeyError(name)


REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stiff_reference.json")


def vdp_jacobian(t, y):
    return np.array([[0.0, 1.0], [-2.0 * MU * y[0] * y[1] - 1.0, MU * (1.0 - y[0] ** 2)]])


def reference(name):
    """The reference solution at TS[name], from stiff_reference.json when it holds it (Radau at
    rtol 1e-12 on Van der Pol took over 10 minutes here), else computed and stored there."""
    stored = json.load(open(REFERENCE)) if os.path.exists(REFERENCE) else {}
    if name in stored:
        return np.array(stored[name])
    value = _reference(name)
    stored = json.load(open(REFERENCE)) if os.path.exists(REFERENCE) else {}
    stored[name] = value.tolist()
    with open(REFERENCE + ".tmp", "w") as fh:
        json.dump(stored, fh)
    os.replace(REFERENCE + ".tmp", REFERENCE)
    return value


def _reference(name):
    from scipy.integrate import solve_ivp
    from scipy.linalg import expm

    ts = TS[name]
    if name == "linear64":
        mats, y0 = linear_batch()
        return np.stack([np.stack([expm(m * t) @ v for m, v in zip(mats, y0)]) for t in ts])
    # Radau at rtol 1e-12: Robertson with atol 1e-16 (its y₂ is ~1e-5), Van der Pol with atol 1e-12
    # and its Jacobian
    rtol, atol, jac = (1e-12, 1e-16, None) if name == "robertson" else (1e-12, 1e-12, vdp_jacobian)
    sol = solve_ivp(np_field(name), (ts[0], ts[-1]), Y0[name], method="Radau", rtol=rtol, atol=atol, t_eval=ts,
                    jac=jac)  # fmt: skip
    assert sol.success, sol.message
    return sol.y.T


def units(y, ref, rtol, atol):
    return float(np.max(np.abs(np.asarray(y) - ref) / (atol + rtol * np.abs(ref))))


def timed(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


# --------------------------------------------------------------------------- scipy
def run_scipy(name, ref, repeats):
    from scipy.integrate import solve_ivp

    rows = []
    ts = TS[name]
    for method in ("BDF", "Radau"):
        for rtol in TOLS[name]:
            atol = ATOL[name] * rtol
            if name == "linear64":
                mats, y0 = linear_batch()

                def run(method=method, rtol=rtol, atol=atol):
                    sols = [solve_ivp(lambda t, y, m=m: m @ y, (0, ts[-1]), v, method=method, rtol=rtol, atol=atol,
                                      t_eval=ts, jac=m) for m, v in zip(mats, y0)]  # fmt: skip
                    return np.stack([s.y.T for s in sols], 1), sum(s.nfev for s in sols)

            else:

                def run(method=method, rtol=rtol, atol=atol):
                    s = solve_ivp(np_field(name), (0, ts[-1]), Y0[name], method=method, rtol=rtol, atol=atol, t_eval=ts)
                    return s.y.T, s.nfev

            (y, nfe), seconds = timed(run, max(1, repeats // 3))
            rows.append(dict(problem=name, solver=f"scipy {method}", rtol=rtol, error_units=units(y, ref, rtol, atol),
                             nfe=int(nfe), seconds=seconds))  # fmt: skip
    return rows


# --------------------------------------------------------------------------- odezoo
def run_odezoo(name, ref, repeats):
    import tensorflow as tf

    import keras

    import odezoo
    from odezoo.ode import PIDController
    from odezoo.ode.integrator import integrate
    from odezoo.ode.tableau import tableau_of

    f64 = tf.float64
    ts = tf.constant(TS[name][1:], f64)
    if name == "robertson":

        def field(t, y):
            (y,) = y
            return [tf.stack([-0.04 * y[0] + 1e4 * y[1] * y[2], 0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2,
                              3e7 * y[1] ** 2])]  # fmt: skip

        y0 = tf.constant(Y0[name], f64)
    elif name == "vdp1000":

        def field(t, y):
            (y,) = y
            return [tf.stack([y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]])]

        y0 = tf.constant(Y0[name], f64)
    else:
        mats, y0n = linear_batch()
        m = tf.constant(mats)

        def field(t, y):
            return [tf.einsum("bij,bj->bi", m, y[0])]

        y0 = tf.constant(y0n)
    controller = PIDController(pcoeff=0.3, icoeff=0.4)  # diffrax's suggestion for stiff problems, as below
    rows = []
    for solver in ("kvaerno5", "kvaerno3"):
        tableau = tableau_of(odezoo.get_scheme(solver))
        for rtol in TOLS[name]:
            atol = ATOL[name] * rtol
            if solver == "kvaerno3" and rtol < 1e-6:
                continue  # third order: ~1e4 steps per solve at 1e-8, not the solver for it

            @tf.function(jit_compile=True)
            def run(tableau=tableau, rtol=rtol, atol=atol):
                (out,), info = integrate(field, tf.constant(0.0, f64), [y0], ts, rtol=rtol, atol=atol,
                                         tableau=tableau, max_steps=50000, controller=controller)  # fmt: skip
                return out, info["nfe"], info["steps"], info["reason"]

            (out, nfe, steps, reason), seconds = timed(run, repeats)
            if int(reason) != 0:
                rows.append(dict(problem=name, solver=f"odezoo {solver}", rtol=rtol, failed=int(reason)))
                continue
            y = np.concatenate([y0.numpy()[None], out.numpy()], 0)
            rows.append(dict(problem=name, solver=f"odezoo {solver}", rtol=rtol, error_units=units(y, ref, rtol, atol),
                             nfe=int(nfe), steps=int(steps), seconds=seconds))  # fmt: skip
    if name == "linear64":  # tfp's BDF, per sample, through ODEBlock
        for rtol in TOLS[name][:2]:
            atol = rtol

            class Linear(keras.layers.Layer):  # per-sample BDF sees one row: the row carries its matrix
                def call(self, t, y):
                    a = tf.reshape(y[:, 10:], [-1, 10, 10])
                    return tf.concat([tf.einsum("bij,bj->bi", a, y[:, :10]), tf.zeros_like(y[:, 10:])], 1)

            block = odezoo.ODEBlock(Linear(dtype="float64"), solver="bdf", rtol=rtol, atol=atol, t1=float(TS[name][-1]),
                                    solution_times=TS[name][1:].tolist(), dtype="float64")  # fmt: skip
            y0_rows = tf.concat([y0, tf.reshape(m, [-1, 100])], 1)
            run = tf.function(lambda: block(y0_rows))
            out, seconds = timed(run, max(1, repeats // 3))
            y = np.concatenate([y0.numpy()[None], np.moveaxis(out.numpy()[..., :10], 1, 0)], 0)
            rows.append(dict(problem=name, solver="odezoo bdf (tfp, per sample)", rtol=rtol,
                             error_units=units(y, ref, rtol, atol), seconds=seconds))  # fmt: skip
    return rows


# --------------------------------------------------------------------------- diffrax
def run_diffrax(name, ref, repeats):
    import jax

    jax.config.update("jax_enable_x64", True)
    import diffrax
    import jax.numpy as jnp

    ts = jnp.asarray(TS[name])
    if name == "robertson":

        def vf(t, y, args):
            return jnp.stack([-0.04 * y[0] + 1e4 * y[1] * y[2], 0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2,
                              3e7 * y[1] ** 2])  # fmt: skip
    elif name == "vdp1000":

        def vf(t, y, args):
            return jnp.stack([y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]])
    else:

        def vf(t, y, args):
            return args @ y

    rows = []
    for rtol in TOLS[name]:
        atol = ATOL[name] * rtol
        controller = diffrax.PIDController(rtol=rtol, atol=atol, pcoeff=0.3, icoeff=0.4)

        def solve(y0, args, controller=controller):
            sol = diffrax.diffeqsolve(diffrax.ODETerm(vf), diffrax.Kvaerno5(), ts[0], ts[-1], None, y0, args=args,
                                      saveat=diffrax.SaveAt(ts=ts), stepsize_controller=controller, max_steps=100000,
                                      throw=False)  # fmt: skip
            return sol.ys, sol.stats["num_steps"], sol.result == diffrax.RESULTS.successful

        if name == "linear64":
            mats, y0 = linear_batch()
            run = jax.jit(jax.vmap(solve))
            args = (jnp.asarray(y0), jnp.asarray(mats))
        else:
            run = jax.jit(solve)
            args = (jnp.asarray(Y0[name]), None)
        (ys, steps, ok), seconds = timed(lambda: jax.block_until_ready(run(*args)), repeats)
        if not bool(np.all(ok)):
            rows.append(dict(problem=name, solver="diffrax Kvaerno5", rtol=rtol, failed=True))
            continue
        y = np.moveaxis(np.asarray(ys), 0, 1) if name == "linear64" else np.asarray(ys)
        rows.append(dict(problem=name, solver="diffrax Kvaerno5", rtol=rtol, error_units=units(y, ref, rtol, atol),
                         steps=int(np.sum(steps)), seconds=seconds))  # fmt: skip
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="stiff.json")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--problems", default="robertson,vdp1000,linear64")
    parser.add_argument("--worker", choices=("diffrax",), help=argparse.SUPPRESS)
    args = parser.parse_args()
    problems = args.problems.split(",")
    refs = {name: reference(name) for name in problems}
    if args.worker == "diffrax":
        rows = [r for name in problems for r in run_diffrax(name, refs[name], args.repeats)]
        json.dump(rows, sys.stdout)
        return
    rows = []
    for name in problems:
        print("solving", name, file=sys.stderr, flush=True)
        rows += run_odezoo(name, refs[name], args.repeats)
        rows += run_scipy(name, refs[name], args.repeats)
    worker = subprocess.run([sys.executable, __file__, "--worker", "diffrax", "--repeats", str(args.repeats),
                             "--problems", args.problems], capture_output=True, text=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))  # fmt: skip
    if worker.returncode == 0:
        rows += json.loads(worker.stdout.strip().splitlines()[-1])
    else:
        print(worker.stderr[-3000:], file=sys.stderr)
    meta = dict(date=time.strftime("%Y-%m-%d"), machine=platform.processor() or platform.machine(),
                cpus=os.cpu_count(), load=os.getloadavg(), command=" ".join(sys.argv))  # fmt: skip
    with open(args.out, "w") as fh:
        json.dump(dict(meta=meta, rows=rows), fh, indent=1)
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
