"""Time per training step and NFE: odezoo FFJORD vs raw tfp FFJORD vs torchdiffeq FFJORD, in one run.

The job of ../../../shared/bench/peer_flow_bench: batch 512 (fresh each step), field 3→64→64→64→2
tanh on (z, t), same initial weights, dopri5 rtol = atol = 1e-5, Hutchinson trace with one
Rademacher probe, Adam 1e-3, maximum likelihood. Four systems, each its own copy of the model
trained on the same data stream:

* odezoo   — ``odezoo.build("ffjord", data_dim=2, ...)``, ``compile(jit_compile=True)``,
             ``train_on_batch`` (its Keras train step: odezoo's dopri5 + adjoint, its Hutchinson
             trace; probe drawn inside the step from the model's seed).
* tfp      — raw ``tfp.bijectors.FFJORD`` in ``tfd.TransformedDistribution``, tfp's
             ``DormandPrince(1e-5, 1e-5).solve`` (its adjoint), under ``tf.function(jit_compile=True)``
             with a one-VJP Hutchinson ``trace_augmentation_fn`` (tfp's own recompiles every step
             under XLA, see the peer bench), Adam written out with torch's update.
* torch adjoint / torch backprop — torch_worker.py in a subprocess (``--torch-py``), same thread count.

Interleaving: R rounds; in each, K steps of every system, the order rotated from round to round,
so all systems see the same machine load. Round 0 is warm-up (compile / trace) and not counted.
Per system: median and IQR of wall ms/step and CPU ms/step (``time.process_time`` of its process)
over the counted steps, NFE medians; ratios odezoo / peer as the median of the per-round ratios
of round medians (paired within a round) and as the ratio of the overall medians.

    python benchmarks/flow/step_time.py --torch-py /tmp/venv_torch/bin/python --rounds 31 --steps 10 \
        --out benchmarks/flow/results/step_time.json
"""

import argparse
import json
import os
import subprocess
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--data", default="8gaussians", choices=["8gaussians", "checkerboard"])
ap.add_argument("--torch-py", default="/tmp/venv_torch/bin/python")
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--rounds", type=int, default=31)
ap.add_argument("--steps", type=int, default=10, help="steps per system per round")
ap.add_argument("--systems", default="odezoo,tfp,torch_adjoint,torch_backprop")
ap.add_argument("--out", required=True)
args = ap.parse_args()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(args.threads)
tf.config.threading.set_inter_op_parallelism_threads(args.threads)
import keras  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402

import odezoo  # noqa: E402
from odezoo import data as odata  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

tfb, tfd = tfp.bijectors, tfp.distributions
SEED = 0


class OdezooSystem:
    def __init__(self):
        self.flow = odezoo.build(
            "ffjord",
            data_dim=2,
            hidden=(64, 64, 64),
            activation="tanh",
            trace="hutchinson",
            noise="rademacher",
            solver="dopri5",
            rtol=1e-5,
            atol=1e-5,
            seed=SEED,
        )
        for layer, (W, b) in zip(self.flow.fields[0].layers_, common.init_weights(SEED)):
            layer.kernel.assign(W)
            layer.bias.assign(b)
        self.flow.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
        self.rng_x, _ = common.streams(SEED)

    def run(self, n):
        out = []
        for _ in range(n):
            x = common.sample(args.data, self.rng_x, common.BATCH)
            w0, c0 = time.perf_counter(), time.process_time()
            logs = self.flow.train_on_batch(x, return_dict=True)
            out.append(
                [
                    time.perf_counter() - w0,
                    time.process_time() - c0,
                    int(logs["nfe_forward"]),
                    int(logs["nfe_backward"]),
                    float(logs["nll"]),
                ]
            )
        return out


class TfpField(tf.Module):
    def __init__(self, weights):
        super().__init__()
        self.Ws = [tf.Variable(W) for W, _ in weights]
        self.bs = [tf.Variable(b) for _, b in weights]
        self.nfe = tf.Variable(0, dtype=tf.int64, trainable=False)

    def __call__(self, t, z):
        self.nfe.assign_add(1)
        h = tf.concat([z, tf.ones_like(z[:, :1]) * tf.cast(t, z.dtype)], axis=1)
        for W, b in zip(self.Ws[:-1], self.bs[:-1]):
            h = tf.tanh(h @ W + b)
        return h @ self.Ws[-1] + self.bs[-1]


def one_vjp_hutchinson(eps):
    """tfp trace_augmentation_fn: ε ⊙ (Jᵀε) from one tape.gradient, no vectorized_map."""

    def trace_fn(ode_fn, state_shape, dtype):
        def augmented(t, state_and_logdet, **kwargs):
            state, _ = state_and_logdet
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(state)
                f = ode_fn(t, state, **kwargs)
            return f, eps * tape.gradient(f, state, output_gradients=eps)

        return augmented

    return trace_fn


class TfpSystem:
    LR, B1, B2, EPS = 1e-3, 0.9, 0.999, 1e-8

    def __init__(self):
        self.field = TfpField(common.init_weights(SEED))
        self.params = self.field.Ws + self.field.bs
        self.m = [tf.Variable(tf.zeros_like(p)) for p in self.params]
        self.v = [tf.Variable(tf.zeros_like(p)) for p in self.params]
        self.it = tf.Variable(0.0)
        self.base = tfd.MultivariateNormalDiag(loc=tf.zeros(2))
        self.rng_x, self.rng_e = common.streams(SEED)
        self.step = tf.function(self._step, jit_compile=True)

    def _step(self, x, eps):
        bij = tfb.FFJORD(
            state_time_derivative_fn=self.field,
            ode_solve_fn=tfp.math.ode.DormandPrince(rtol=1e-5, atol=1e-5).solve,
            trace_augmentation_fn=one_vjp_hutchinson(eps),
        )
        dist = tfd.TransformedDistribution(self.base, bij)
        n0 = self.field.nfe.read_value()
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(dist.log_prob(x))
        n1 = self.field.nfe.read_value()
        grads = tape.gradient(loss, self.params)
        n2 = self.field.nfe.read_value()
        self.it.assign_add(1.0)
        c1, c2 = 1.0 - tf.pow(self.B1, self.it), 1.0 - tf.pow(self.B2, self.it)
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m.assign(self.B1 * m + (1 - self.B1) * g)
            v.assign(self.B2 * v + (1 - self.B2) * g * g)
            p.assign_sub((self.LR / c1) * m / (tf.sqrt(v) / tf.sqrt(c2) + self.EPS))
        return loss, n1 - n0, n2 - n1

    def run(self, n):
        out = []
        for _ in range(n):
            x = common.sample(args.data, self.rng_x, common.BATCH)
            e = common.rademacher(self.rng_e, (common.BATCH, 2))
            w0, c0 = time.perf_counter(), time.process_time()
            loss, nf, nb = self.step(tf.constant(x), tf.constant(e))
            loss = float(loss)
            out.append([time.perf_counter() - w0, time.process_time() - c0, int(nf), int(nb), loss])
        return out


class TorchSystem:
    proc = None

    def __init__(self, mode):
        self.mode = mode
        if TorchSystem.proc is None:
            TorchSystem.proc = subprocess.Popen(
                [
                    args.torch_py,
                    os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_worker.py"),
                    "--data",
                    args.data,
                    "--threads",
                    str(args.threads),
                    "--seed",
                    str(SEED),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)),
            )
            TorchSystem.info = json.loads(self._readline())

    def _readline(self):
        while True:
            line = TorchSystem.proc.stdout.readline()
            if not line:
                raise RuntimeError("torch worker exited")
            if line.startswith("{"):
                return line

    def run(self, n):
        TorchSystem.proc.stdin.write(json.dumps({"mode": self.mode, "steps": n}) + "\n")
        TorchSystem.proc.stdin.flush()
        return json.loads(self._readline())["steps"]


def main():
    # the data stream is odezoo.data.toy_density's
    assert np.array_equal(
        common.sample(args.data, np.random.default_rng(7), 100), odata.toy_density(args.data, 100, seed=7)
    )
    names = args.systems.split(",")
    make = dict(
        odezoo=OdezooSystem,
        tfp=TfpSystem,
        torch_adjoint=lambda: TorchSystem("adjoint"),
        torch_backprop=lambda: TorchSystem("backprop"),
    )
    systems = {n: make[n]() for n in names}
    rounds = []
    t_start = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load_start = os.getloadavg()
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        rec = dict(round=r, order=order, load1=os.getloadavg()[0])
        for n in order:
            rec[n] = systems[n].run(args.steps)
        rounds.append(rec)
        msg = " ".join(
            f"{n} {np.median([s[0] for s in rec[n]]) * 1e3:.0f}ms/{rec[n][-1][2]}+{rec[n][-1][3]}" for n in names
        )
        print(f"round {r} load {rec['load1']:.2f} {msg}", flush=True)
    res = dict(
        args=vars(args),
        started=started,
        wall_s=time.perf_counter() - t_start,
        load_start=load_start,
        load_end=os.getloadavg(),
        rounds=rounds,
        versions=dict(
            tf=tf.__version__,
            tfp=tfp.__version__,
            keras=keras.__version__,
            torch=getattr(TorchSystem, "info", {}).get("torch"),
        ),
    )
    res["summary"] = summarize(res, names)
    with open(args.out, "w") as f:
        json.dump(res, f)
    if TorchSystem.proc is not None:
        TorchSystem.proc.stdin.close()
        TorchSystem.proc.wait(timeout=60)
    print(json.dumps(res["summary"], indent=1))


def summarize(res, names):
    counted = res["rounds"][1:]
    out = {}
    for n in names:
        s = np.array([st for rec in counted for st in rec[n]], float)
        out[n] = dict(
            steps=len(s),
            wall_ms=[v * 1e3 for v in common.summary(s[:, 0])],
            cpu_ms=[v * 1e3 for v in common.summary(s[:, 1])],
            nfe_fwd=float(np.median(s[:, 2])),
            nfe_bwd=float(np.median(s[:, 3])),
            loss_last=float(s[-1, 4]),
            first_round_wall_s=float(sum(st[0] for st in res["rounds"][0][n])),
        )
    if "odezoo" in names:
        for n in names:
            if n == "odezoo":
                continue
            for k, col in (("wall", 0), ("cpu", 1)):
                per_round = [
                    np.median([st[col] for st in rec["odezoo"]]) / np.median([st[col] for st in rec[n]])
                    for rec in counted
                ]
                out[f"odezoo/{n}"] = out.get(f"odezoo/{n}", {})
                out[f"odezoo/{n}"][k] = dict(
                    paired_median=float(np.median(per_round)),
                    paired_q25=float(np.percentile(per_round, 25)),
                    paired_q75=float(np.percentile(per_round, 75)),
                    of_medians=out["odezoo"][f"{k}_ms"][0] / out[n][f"{k}_ms"][0],
                )
    return out


if __name__ == "__main__":
    main()
