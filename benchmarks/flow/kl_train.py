"""Paired KL(data‖model) of odezoo's FFJORD against the training process's own CPU time.

One run = one dataset, one seed: ``odezoo.build("ffjord", data_dim=2, ...)`` (3×64 tanh field on
(z, t), dopri5 rtol = atol = 1e-5, Hutchinson/Rademacher trace), compiled with XLA and trained with
``train_on_batch`` on a fresh batch per step (the peer bench's data stream and initial weights,
see common.py). At each mark of the training clock the paired KL on 2,000 held-out points,
mean(log p_data(x) − log q(x)) with ``odezoo.data.toy_log_prob`` and the exact trace, is recorded.

Training clock = ``time.process_time()`` (user + sys CPU of this process, all its threads) spent
from the first training step on, minus the CPU spent in the KL evaluations (their compile
included). ``--kinetic``/``--jacobian`` train with RNODE's penalties (benchmarks/regularization). Both TF thread pools are set to 1 thread, so on an idle core CPU time ≈ wall time;
on a shared machine CPU time is the fair clock.

    python benchmarks/flow/kl_train.py --data checkerboard --seed 0 --minutes 10 --out results/kl_cb_s0.json
"""

import argparse
import json
import math
import os
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--data", default="8gaussians", choices=["8gaussians", "checkerboard"])
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--minutes", type=float, default=10.0, help="training budget in CPU minutes")
ap.add_argument("--marks", default="0.5,1,1.5,2,3,4,5,6,7,8,9,10", help="KL evaluations, CPU minutes")
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument(
    "--schedule",
    default="constant",
    choices=["constant", "cosine"],
    help="cosine: lr decays to lr*min_frac over the CPU budget (a function of the clock)",
)
ap.add_argument("--min-frac", type=float, default=0.0)
ap.add_argument("--batch", type=int, default=512)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--kinetic", type=float, default=0.0, help="RNODE's kinetic-energy weight (0: none)")
ap.add_argument("--jacobian", type=float, default=0.0, help="RNODE's Jacobian-norm weight (0: none)")
ap.add_argument("--out", required=True)
args = ap.parse_args()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(args.threads)
tf.config.threading.set_inter_op_parallelism_threads(args.threads)
import keras  # noqa: E402

import odezoo  # noqa: E402
from odezoo import data as odata  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main():
    xtest = odata.toy_density(args.data, common.N_TEST, seed=common.TEST_SEED)
    assert np.array_equal(xtest, common.sample(args.data, np.random.default_rng(common.TEST_SEED), common.N_TEST))
    lp_true = odata.toy_log_prob(args.data, xtest)
    rng_x, _ = common.streams(args.seed)

    flow = odezoo.build(
        "ffjord",
        data_dim=2,
        hidden=(64, 64, 64),
        activation="tanh",
        trace="hutchinson",
        noise="rademacher",
        solver="dopri5",
        rtol=1e-5,
        atol=1e-5,
        seed=args.seed,
        regularization={"kinetic": args.kinetic, "jacobian": args.jacobian} if args.kinetic or args.jacobian else None,
    )
    for layer, (W, b) in zip(flow.fields[0].layers_, common.init_weights(args.seed)):
        layer.kernel.assign(W)
        layer.bias.assign(b)
    opt = keras.optimizers.Adam(args.lr)
    flow.compile(optimizer=opt, jit_compile=True)

    budget = args.minutes * 60.0
    marks = [float(m) * 60.0 for m in args.marks.split(",") if float(m) * 60.0 <= budget + 1e-9]
    res = dict(
        args=vars(args),
        data=args.data,
        seed=args.seed,
        evals=[],
        steps=[],
        versions=dict(tf=tf.__version__, keras=keras.__version__),
        started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    )
    excluded = 0.0

    def evaluate(clock, mark=None):
        nonlocal excluded
        c0, w0 = time.process_time(), time.perf_counter()
        lp = flow.log_prob(xtest, trace="exact").numpy().astype(np.float64)
        diff = lp_true - lp
        rec = dict(
            mark_s=mark,
            cpu_s=clock,
            step=len(res["steps"]),
            kl=float(diff.mean()),
            kl_se=float(diff.std(ddof=1) / math.sqrt(diff.size)),
            nll=float(-lp.mean()),
            wall_s=time.perf_counter() - wall0,
            eval_wall_s=time.perf_counter() - w0,
            load1=os.getloadavg()[0],
        )
        excluded += time.process_time() - c0
        res["evals"].append(rec)
        print(
            f"[eval] cpu={clock:6.1f}s step={rec['step']:5d} KL={rec['kl']:.4f}±{rec['kl_se']:.4f} "
            f"wall={rec['wall_s']:.0f}s load={rec['load1']:.2f}",
            flush=True,
        )
        with open(args.out, "w") as f:
            json.dump(res, f)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    clock, k = 0.0, 0
    while clock < budget:
        if args.schedule == "cosine":
            frac = min(clock / budget, 1.0)
            opt.learning_rate.assign(
                args.lr * (args.min_frac + (1 - args.min_frac) * 0.5 * (1 + math.cos(math.pi * frac)))
            )
        x = common.sample(args.data, rng_x, args.batch)
        t0 = time.perf_counter()
        logs = flow.train_on_batch(x, return_dict=True)
        dt = time.perf_counter() - t0
        clock = time.process_time() - cpu0 - excluded
        res["steps"].append((dt, int(logs["nfe_forward"]), int(logs["nfe_backward"]), float(logs["nll"]), clock,
                             float(logs.get("kinetic", np.nan)), float(logs.get("jacobian", np.nan))))  # fmt: skip
        if not np.isfinite(logs["nll"]):
            print("non-finite loss; stopping", flush=True)
            break
        while k < len(marks) and clock >= marks[k]:
            evaluate(clock, marks[k])
            k += 1
    if not res["evals"] or res["evals"][-1]["step"] != len(res["steps"]):
        evaluate(clock)
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    with open(args.out, "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main()
