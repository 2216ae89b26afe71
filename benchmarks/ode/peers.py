"""odezoo's ODEBlock beside torchdiffeq and diffrax on the peer Neural-ODE problem, in one run.

The problem of ../shared/bench/peer_ode_bench (our team's peer benchmark; the weights
recipe and the measurement rules are adapted from its make_weights.py and run.sh):
f(t, h) = tanh(h W1 + b1) W2 + b2, h 256 x 64, hidden 128, float32, t in [0, 1],
loss sum(h(1)^2), rtol = atol = 1e-3 and 1e-5, every library's Dormand-Prince 5(4)
with its own default step controller.

One run = ``--passes`` passes; each pass runs every configuration back to back, one
process per framework (odezoo in this python, torch and JAX in their own venvs), all
reading the same weights file. Then one float64 reference (diffrax Dopri8, rtol = atol =
1e-10) scores every configuration's h(1) and gradients, and one table of medians over the
passes is written (``peers.json``, ``peers.md``).

    python benchmarks/ode/peers.py --torch-py /tmp/venv_torch/bin/python \\
        --jax-py /tmp/venv_jax/bin/python [--passes 3] [--repeats 7]

Stdlib + numpy only here; peer_worker.py does the measuring.
"""

import argparse
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PARAMS = ("w1", "b1", "w2", "b2")
# (framework, mode, label); the order of the table
CONFIGS = [
    ("odezoo", "dopri5", "odezoo ODEBlock dopri5 (adjoint, seminorm)"),
    ("odezoo", "tfp_dopri5", "odezoo ODEBlock tfp_dopri5 (tfp's adjoint)"),
    ("torch", "odeint", "torchdiffeq odeint (backprop)"),
    ("torch", "odeint_adjoint", "torchdiffeq odeint_adjoint"),
    ("jax", "recursive", "diffrax Dopri5, RecursiveCheckpointAdjoint"),
    ("jax", "backsolve", "diffrax Dopri5, BacksolveAdjoint"),
    # issue 15: every embedded pair, the checkpoint gradient, diffrax's Tsit5
    ("odezoo", "tsit5", "odezoo ODEBlock tsit5 (adjoint)"),
    ("odezoo", "bosh3", "odezoo ODEBlock bosh3 (adjoint)"),
    ("odezoo", "dopri8", "odezoo ODEBlock dopri8 (adjoint)"),
    ("odezoo", "dopri5+checkpoint", "odezoo ODEBlock dopri5 (checkpoint)"),
    ("odezoo", "tsit5+checkpoint", "odezoo ODEBlock tsit5 (checkpoint)"),
    ("jax", "recursive_tsit5", "diffrax Tsit5, RecursiveCheckpointAdjoint"),
    ("jax", "backsolve_tsit5", "diffrax Tsit5, BacksolveAdjoint"),
]


def make_weights(path):
    """The peer problem's weights (recipe of peer_ode_bench/make_weights.py: default_rng(0))."""
    dim, hidden, batch, gain = 64, 128, 256, 3.0
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((dim, hidden)) * gain / np.sqrt(dim)
    b1 = rng.standard_normal((hidden,)) * 0.1
    w2 = rng.standard_normal((hidden, dim)) * gain / np.sqrt(hidden)
    b2 = rng.standard_normal((dim,)) * 0.1
    h0 = rng.standard_normal((batch, dim))
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    np.savez(path, w1=f32(w1), b1=f32(b1), w2=f32(w2), b2=f32(b2), h0=f32(h0))


def worker(py, framework, modes, tols, args, tag, log, count=False):
    cmd = [
        py,
        os.path.join(HERE, "peer_worker.py"),
        "--framework",
        framework,
        "--modes",
        ",".join(modes),
        "--tols",
        tols,
        "--repeats",
        str(args.repeats),
        "--weights",
        args.weights,
        "--outdir",
        args.outdir,
        "--tag",
        tag,
        "--torch-threads",
        str(args.torch_threads),
    ]
    if count:
        cmd.append("--count")
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    print(f"   {tag}{framework}: rc={rc} in {time.perf_counter() - t0:.0f} s", flush=True)
    if rc:
        with open(log) as fh:
            print("".join(fh.readlines()[-5:]))


def scipy_check(weights, ref_path):
    try:
        from scipy.integrate import solve_ivp
    except ImportError:
        return None
    d = {k: v.astype(np.float64) for k, v in np.load(weights).items()}
    shape = d["h0"].shape

    def f(t, y):
        return (np.tanh(y.reshape(shape) @ d["w1"] + d["b1"]) @ d["w2"] + d["b2"]).ravel()

    sol = solve_ivp(f, (0.0, 1.0), d["h0"].ravel(), method="DOP853", rtol=1e-10, atol=1e-10)
    ref = np.load(ref_path)["h_final"]
    return float(np.abs(sol.y[:, -1].reshape(shape) - ref).max() / np.abs(ref).max())


def rel_errors(arrays, ref):
    """max|x - ref| / max|ref| for h(1), and the max of that over the four gradients."""
    h = float(np.abs(arrays["h_final"] - ref["h_final"]).max() / np.abs(ref["h_final"]).max())
    g = max(
        float(np.abs(arrays[f"grad_{k}"] - ref[f"grad_{k}"]).max() / np.abs(ref[f"grad_{k}"]).max()) for k in PARAMS
    )
    return h, g


def _quartiles(xs):
    """[q25, median, q75] of a list (None if empty)."""
    if not xs:
        return None
    return [float(np.percentile(xs, q)) for q in (25, 50, 75)]


def summarise(outdir, passes, tols):
    ref = dict(np.load(os.path.join(outdir, "ref_f64_1e-10.npz")))
    rows = []
    for tol in tols:
        for fw, mode, label in CONFIGS:
            recs, errs = [], []
            for p in range(1, passes + 1):
                stem = os.path.join(outdir, f"p{p}_{fw}_{mode}_{tol:g}")
                if not os.path.exists(stem + ".json"):
                    continue
                with open(stem + ".json") as fh:
                    recs.append(json.load(fh))
                errs.append(rel_errors(dict(np.load(stem + ".npz")), ref))
            if not recs:
                continue
            med = lambda k: statistics.median(r[k] for r in recs)  # noqa: E731
            nfe = sorted({(r.get("nfe_fwd"), r.get("nfe_bwd")) for r in recs if "nfe_fwd" in r})
            counted = [r for r in recs if r.get("nfe_counted_in_field")]
            rows.append(
                dict(
                    framework=fw,
                    mode=mode,
                    label=label,
                    tol=tol,
                    passes=len(recs),
                    fwd_ms=med("fwd_ms"),
                    fwd_grad_ms=med("fwd_grad_ms"),
                    fwd_ms_passes=[r["fwd_ms"] for r in recs],
                    fwd_grad_ms_passes=[r["fwd_grad_ms"] for r in recs],
                    # every timed call of every pass pooled: quartiles (the spread on a loaded machine)
                    fwd_ms_q=_quartiles([1e3 * x for r in recs for x in r.get("fwd_times_s", [])]),
                    fwd_grad_ms_q=_quartiles([1e3 * x for r in recs for x in r.get("fwd_grad_times_s", [])]),
                    nfe_fwd=counted[0]["nfe_fwd"] if counted else None,
                    nfe_bwd=counted[0]["nfe_bwd"] if counted else None,
                    nfe_all_passes=nfe,
                    nfe_layer_counters=counted[0].get("nfe_layer_counters") if counted else None,
                    h_rel_err=max(e[0] for e in errs),
                    grad_rel_err=max(e[1] for e in errs),
                    compile_s=[
                        statistics.median(r["fwd_first_call_s"] - r["fwd_ms"] / 1e3 for r in recs),
                        statistics.median(r["grad_first_call_s"] - r["fwd_grad_ms"] / 1e3 for r in recs),
                    ],
                )
            )
    # within-pass ratios: peer fwd+grad time / odezoo dopri5 fwd+grad time, pass by pass
    for tol in tols:
        base = next((r for r in rows if r["tol"] == tol and r["mode"] == "dopri5"), None)
        for r in rows:
            if r["tol"] != tol or base is None:
                continue
            ratios = [x / y for x, y in zip(r["fwd_grad_ms_passes"], base["fwd_grad_ms_passes"])]
            r["fwd_grad_vs_odezoo_per_pass"] = ratios
            r["fwd_grad_vs_odezoo_median"] = statistics.median(ratios)
    return rows


def markdown(rows):
    out = [
        "| configuration | tol | fwd ms | fwd+grad ms | fwd+grad IQR ms (all calls) | fwd+grad ms per pass "
        "| x odezoo (within pass, median) "
        "| NFE fwd | NFE bwd | rel. err h(1) | rel. err grad | compile s fwd / grad |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per = " / ".join(f"{x:.1f}" for x in r["fwd_grad_ms_passes"])
        q = r.get("fwd_grad_ms_q")
        iqr = f"{q[0]:.1f}-{q[2]:.1f}" if q else "n/a"
        out.append(
            f"| {r['label']} | {r['tol']:g} | {r['fwd_ms']:.1f} | **{r['fwd_grad_ms']:.1f}** | {iqr} | {per} "
            f"| {r.get('fwd_grad_vs_odezoo_median', float('nan')):.2f} | {r['nfe_fwd']} | {r['nfe_bwd']} "
            f"| {r['h_rel_err']:.1e} | {r['grad_rel_err']:.1e} "
            f"| {r['compile_s'][0]:.1f} / {r['compile_s'][1]:.1f} |"
        )
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tf-py", default=sys.executable, help="python with TF, tfp and odezoo")
    p.add_argument("--torch-py", required=True, help="python with torch (CPU) and torchdiffeq")
    p.add_argument("--jax-py", required=True, help="python with jax, diffrax and equinox")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--tols", default="1e-3,1e-5")
    p.add_argument("--outdir", default="/tmp/odezoo_peers", help="per-configuration JSON/NPZ and logs")
    p.add_argument("--summarise-only", action="store_true")
    p.add_argument("--only", default=None, help="comma-separated modes to run (default: every CONFIGS entry)")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch.set_num_threads; 1 by default: on a loaded 2-core machine two OpenMP "
        "threads spin at their barriers and made torchdiffeq ~60x slower (0: all cores)",
    )
    args = p.parse_args()
    tols = [float(x) for x in args.tols.split(",")]
    os.makedirs(os.path.join(args.outdir, "logs"), exist_ok=True)
    args.weights = os.path.join(args.outdir, "weights.npz")
    t_start = time.time()
    meta = dict(
        date_utc_start=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        python=platform.python_version(),
        nproc=os.cpu_count(),
        command=" ".join([os.path.basename(sys.executable)] + sys.argv),
        uptime_start=subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    )
    if not args.summarise_only:
        make_weights(args.weights)
        pys = dict(odezoo=args.tf_py, torch=args.torch_py, jax=args.jax_py)
        for p_ in range(1, args.passes + 1):
            print(
                f"== pass {p_}  ({subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()})",
                flush=True,
            )
            for fw in ("odezoo", "torch", "jax"):
                modes = [m for f, m, _ in CONFIGS if f == fw and (not args.only or m in args.only.split(","))]
                if not modes:
                    continue
                worker(
                    pys[fw],
                    fw,
                    modes,
                    args.tols,
                    args,
                    f"p{p_}_",
                    os.path.join(args.outdir, "logs", f"p{p_}_{fw}.log"),
                    count=p_ == 1,
                )
        print("== reference", flush=True)
        worker(args.jax_py, "ref", ["f64"], "1e-10", args, "", os.path.join(args.outdir, "logs", "ref.log"))
    if not args.summarise_only:  # the reference against an independent f64 solve (scipy DOP853, h(1))
        meta["reference_vs_scipy_dop853_h_rel"] = scipy_check(
            args.weights, os.path.join(args.outdir, "ref_f64_1e-10.npz")
        )
    meta["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    meta["wall_s"] = time.time() - t_start
    rows = summarise(args.outdir, args.passes, tols)
    versions = {}
    for js in glob.glob(os.path.join(args.outdir, "p1_*.json")):
        with open(js) as fh:
            r = json.load(fh)
        versions.update({k: v for k, v in r.items() if k.endswith("_version") or k.endswith("_threads")})
    meta["versions"] = versions
    table = markdown(rows)
    with open(os.path.join(HERE, "peers.json"), "w") as fh:
        json.dump(dict(meta=meta, rows=rows), fh, indent=1)
    with open(os.path.join(HERE, "peers.md"), "w") as fh:
        fh.write(f"<!-- written by peers.py; {json.dumps(meta)} -->\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
