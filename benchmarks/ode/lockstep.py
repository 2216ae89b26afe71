"""Paired, call-by-call timing of odezoo's ODEBlock against diffrax (and torchdiffeq) on the peer problem.

On a loaded machine the per-pass medians of ``peers.py`` drift by 2-3x between passes
(other jobs come and go), which drowns the ratios. Here every configuration lives in
a warm, compiled worker process (``peer_worker.py --serve``: odezoo in this python,
diffrax / torchdiffeq in their venvs, the same weights file); each round times one call
of every configuration, in a fresh random order, back to back, so the calls of one round
see the same load. Reported: per configuration the quartiles of its call times, and per
peer the quartiles of the per-round ratio peer time / odezoo time (> 1: odezoo faster)
and the fraction of rounds odezoo was faster. Accuracy and NFE are ``peers.py``'s
(same code and weights).

    python benchmarks/ode/lockstep.py --torch-py /tmp/venv_torch/bin/python \\
        --jax-py /tmp/venv_jax/bin/python [--rounds 60] [--kind grad] [--torch] \\
        [--odezoo-modes dopri5,tsit5,dopri5+checkpoint] [--jax-modes recursive,backsolve,recursive_tsit5]

Each odezoo mode is also reported against the fastest diffrax mode of each round, and, with
``--floor PEERS_DIR`` (a ``peers.py --outdir``, for the NFE its pass 1 counted in the field),
against its field-evaluation floor *of the same round*: the odezoo worker also times
``peer_floor.py``'s chains of evaluations and of VJPs, and the floor of a configuration in a
round is NFE_fwd·t_f + NFE_bwd·t_vjp with that round's t_f and t_vjp (``peer_floor.py``'s rule
for ``+checkpoint``).

Before/after a change of odezoo itself: ``--baseline DIR`` adds a second odezoo worker that
imports odezoo from DIR (a ``git worktree`` of the older commit, with ``odezoo/plugins`` and
``odezoo/zoo_weights`` symlinked to its top-level folders so that nothing resolves to the
installed tree); its ratio is baseline ÷ current (> 1: the current code is faster). Without
``--jax-py`` / ``--torch`` only odezoo runs.

    git worktree add /tmp/wt_before <commit>
    ln -s ../plugins /tmp/wt_before/odezoo/plugins; ln -s ../zoo_weights /tmp/wt_before/odezoo/zoo_weights
    python benchmarks/ode/lockstep.py --baseline /tmp/wt_before --rounds 60
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from peers import make_weights  # noqa: E402

N_CHAIN = 400  # peer_floor.N: evaluations per chain call


class Worker:
    def __init__(self, py, framework, modes, tols, weights, torch_threads=1, label=None, pythonpath=None):
        cmd = [
            py,
            os.path.join(HERE, "peer_worker.py"),
            "--serve",
            "--framework",
            framework,
            "--modes",
            modes,
            "--tols",
            tols,
            "--weights",
            weights,
            "--torch-threads",
            str(torch_threads),
        ]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        if pythonpath:
            env["PYTHONPATH"] = os.path.abspath(pythonpath)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
        self.framework = label or framework
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{framework} worker died before READY")
            if line.startswith("READY "):
                self.keys = json.loads(line[6:])
                break

    def time(self, key):
        self.proc.stdin.write(key + "\n")
        return float(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=60)


def quartiles(xs):
    return [float(np.percentile(xs, q)) for q in (25, 50, 75)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--torch-py")
    p.add_argument("--jax-py")
    p.add_argument("--baseline", help="a source tree of an older odezoo to time beside the current one")
    p.add_argument("--tf-py", default=sys.executable)
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--tols", default="1e-3,1e-5")
    p.add_argument("--kind", default="grad,fwd", help="grad (forward + gradient) and/or fwd")
    p.add_argument("--torch", action="store_true", help="also torchdiffeq odeint_adjoint (slow: ~0.5-1.5 s a call)")
    p.add_argument("--out", default=os.path.join(HERE, "lockstep.json"))
    p.add_argument("--weights", default="/tmp/odezoo_lockstep_weights.npz")
    p.add_argument("--odezoo-modes", default="dopri5", help="peer_worker's odezoo modes (e.g. tsit5,dopri5+checkpoint)")
    p.add_argument("--jax-modes", default="recursive,backsolve", help="peer_worker's jax modes (diffrax)")
    p.add_argument("--floor", metavar="PEERS_DIR", help="also time the floor chains; NFE from this peers.py --outdir")
    args = p.parse_args()
    make_weights(args.weights)
    meta = dict(
        date_utc_start=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        rounds=args.rounds,
        command=" ".join([os.path.basename(sys.executable)] + sys.argv),
        uptime_start=subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    )
    odezoo_modes = args.odezoo_modes + (",floor" if args.floor else "")
    workers = [Worker(args.tf_py, "odezoo", odezoo_modes, args.tols, args.weights)]
    if args.baseline:
        meta["baseline"] = os.path.abspath(args.baseline)
        workers.append(
            Worker(args.tf_py, "odezoo", "dopri5", args.tols, args.weights, label="baseline", pythonpath=args.baseline)
        )
    if args.jax_py:
        workers.append(Worker(args.jax_py, "jax", args.jax_modes, args.tols, args.weights))
    if args.torch:
        workers.append(Worker(args.torch_py, "torch", "odeint_adjoint", args.tols, args.weights))
    kinds = args.kind.split(",") + (["chain"] if args.floor else [])
    jobs = [(w, k) for w in workers for k in w.keys if k.split(":")[1] in kinds]
    times = {f"{w.framework}:{k}": [] for w, k in jobs}
    rng = random.Random(0)
    for r in range(args.rounds):
        rng.shuffle(jobs)
        for w, k in jobs:
            times[f"{w.framework}:{k}"].append(w.time(k))
        if (r + 1) % 10 == 0:
            print(f"round {r + 1}/{args.rounds}", flush=True)
    for w in workers:
        w.close()
    meta["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    summary = {}
    for name, ts in times.items():
        summary[name] = dict(ms_quartiles=[1e3 * x for x in quartiles(ts)])
    chains = {n.split(":")[1].split("@")[0]: np.array(ts) / N_CHAIN for n, ts in times.items() if n.endswith(":chain")}
    for name, ts in times.items():
        fw, key = name.split(":", 1)
        if fw == "odezoo" and args.floor and not name.endswith(":chain") and name.endswith(":grad"):
            mode, tol = key.split(":")[0].split("@")
            with open(os.path.join(args.floor, f"p1_odezoo_{mode}_{float(tol):g}.json")) as fh:
                counted = json.load(fh)
            nf, nb = counted["nfe_fwd"], counted["nfe_bwd"]
            vjps = nb  # "+checkpoint" too (peer_floor.py's rule)
            floor = (nf + nb - vjps) * chains["t_f_ms"] + vjps * chains["t_vjp_ms"]
            state_floor = (nf + nb - vjps) * chains["t_f_ms"] + vjps * chains["t_vjp_state_ms"]
            summary[name].update(nfe=[nf, nb], over_floor_quartiles=quartiles(np.array(ts) / floor),
                                 over_state_only_floor_quartiles=quartiles(np.array(ts) / state_floor))  # fmt: skip
        if fw == "odezoo" or name.endswith(":chain"):
            continue
        mode_tol, kind = key.split(":")
        tol = mode_tol.split("@")[1]
        base = np.array(times[f"odezoo:dopri5@{tol}:{kind}"])
        ratio = np.array(ts) / base
        summary[name].update(
            ratio_vs_odezoo_quartiles=quartiles(ratio), odezoo_faster_fraction=float(np.mean(ratio > 1.0))
        )
    # every odezoo mode against the fastest diffrax mode of the same round (> 1: odezoo faster)
    for name in [n for n in times if n.startswith("odezoo:") and not n.endswith(":chain")]:
        _, mode_tol, kind = name.split(":")
        tol = mode_tol.split("@")[1]
        peers = [np.array(ts) for n, ts in times.items() if n.startswith("jax:") and n.endswith(f"@{tol}:{kind}")]
        if peers:
            best = np.min(np.stack(peers), axis=0)
            ratio = best / np.array(times[name])
            summary[name].update(best_diffrax_over_this_quartiles=quartiles(ratio),
                                 faster_than_best_diffrax_fraction=float(np.mean(ratio > 1.0)))  # fmt: skip
    with open(args.out, "w") as fh:
        json.dump(dict(meta=meta, summary=summary, times_s=times), fh, indent=1)
    print(
        "| configuration | call | ms (q25 / median / q75) | peer ÷ odezoo per round (q25 / median / q75) "
        "| rounds odezoo faster |\n|---|---|---|---|---|"
    )
    for name in sorted(summary, key=lambda n: (n.split("@")[1], n.split(":")[-1], n)):
        s = summary[name]
        q = " / ".join(f"{x:.1f}" for x in s["ms_quartiles"])
        rq = " / ".join(f"{x:.2f}" for x in s["ratio_vs_odezoo_quartiles"]) if "ratio_vs_odezoo_quartiles" in s else "1"
        fr = f"{100 * s['odezoo_faster_fraction']:.0f}%" if "odezoo_faster_fraction" in s else ""
        framework, config, kind = name.split(":")
        if "best_diffrax_over_this_quartiles" in s:
            bq = " / ".join(f"{x:.2f}" for x in s["best_diffrax_over_this_quartiles"])
            rq = f"best diffrax ÷ this: {bq}"
            fr = f"{100 * s['faster_than_best_diffrax_fraction']:.0f}%"
        if "over_floor_quartiles" in s:
            fq = " / ".join(f"{x:.2f}" for x in s["over_floor_quartiles"])
            rq += f"; ÷ floor: {fq}"
        print(f"| {config} ({framework}) | {kind} | {q} | {rq} | {fr} |")


if __name__ == "__main__":
    main()
