"""Issue 14: ODE-Net's training step, odezoo against torchdiffeq's odeint_adjoint, same weights, same batch.

odezoo's ``odezoo.build("odenet", channels=C, stem=S, compile=M)`` is built here (seed 0);
its weights and one batch of Fashion-MNIST training images (the Debian package; random
images without it) go to a torch worker (``odenet_torch_worker.py``, run by ``--torch-py``)
that builds torchdiffeq's ODE-Net with the same architecture and loads them. Before any
timing the answers are checked: the class probabilities of the batch and the loss's
gradient at the initial weights, odezoo against torch. Then ``--steps`` training steps of
each (Adam, lr 1e-3, ``train_on_batch`` for odezoo), interleaved in a fresh random order
per round; the first step of each (tracing, compiling) is reported apart.

The floor is the issue's: NFE_fwd x t_field + NFE_bwd x t_field+vjp, each evaluation timed
alone on the ODE state's shape (median of ``--field-repeats``), in the compile mode of the
solve being measured, and likewise for torch.

    python benchmarks/ode/odenet_step.py --torch-py /tmp/venv_torch/bin/python \\
        [--channels 64] [--batch 128] [--steps 8] [--compile auto] [--stem same] [--json OUT]
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import odezoo  # noqa: E402
from odezoo.ode.compilation import compiled_function  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def batch(n, seed=0):
    if odezoo.data.fashion_mnist_available():
        x, y = odezoo.data.load("fashion_mnist", "train")
        return x[:n].astype("float32"), y[:n].astype("int64")
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28, 1)).astype("float32"), rng.integers(0, 10, n)


def weights_of(model):
    """odezoo's weights by layer name (the field's sublayers as "field/<name>")."""
    out = {}
    for layer in model.layers:
        subs = [(layer.name, layer)]
        if layer.name == "ode_block":
            subs = [("field/" + s.name, s) for s in (layer.field.norm1, layer.field.conv1, layer.field.norm2,
                                                    layer.field.conv2, layer.field.norm3)]  # fmt: skip
        for name, sub in subs:
            if isinstance(sub, keras.layers.GroupNormalization):
                out[name + ":gamma"], out[name + ":beta"] = sub.gamma.numpy(), sub.beta.numpy()
            elif isinstance(sub, (keras.layers.Conv2D, keras.layers.Dense)):
                out[name + ":kernel"], out[name + ":bias"] = sub.kernel.numpy(), sub.bias.numpy()
    return out


def grads_of(model, x, y):
    """The loss's gradient at the current weights, by the same names (no update)."""
    with tf.GradientTape() as tape:
        p = model(x, training=True)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, p))
    variables, keys = [], []
    for layer in model.layers:
        subs = [(layer.name, layer)]
        if layer.name == "ode_block":
            f = layer.field
            subs = [("field/" + s.name, s) for s in (f.norm1, f.conv1, f.norm2, f.conv2, f.norm3)]
        for name, sub in subs:
            if isinstance(sub, keras.layers.GroupNormalization):
                variables += [sub.gamma, sub.beta]
                keys += [name + ":gamma", name + ":beta"]
            elif isinstance(sub, (keras.layers.Conv2D, keras.layers.Dense)):
                variables += [sub.kernel, sub.bias]
                keys += [name + ":kernel", name + ":bias"]
    g = tape.gradient(loss, variables)
    return dict(zip(keys, [v.numpy() for v in g])), float(loss)


class Torch:
    def __init__(self, python):
        worker = os.path.join(HERE, "odenet_torch_worker.py")
        self.proc = subprocess.Popen([python, worker], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(self, **msg):
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the torch worker died")
        return json.loads(line)

    def close(self):
        self.proc.stdin.write(json.dumps(dict(cmd="quit")) + "\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=60)


def field_floor(block, z, repeats):
    """Per evaluation: the block's field, and the field with its VJP, compiled as the block's solve is.

    ``repeats`` evaluations run inside one compiled ``tf.while_loop`` (the state carried, the
    VJP's cotangent and weight gradients accumulated and returned, so nothing is pruned), so
    the figure has no per-call overhead and no copy of the result; median of 5 calls / repeats.
    """
    field = block.field
    t = tf.constant(0.5)
    variables = [v.value for v in field.trainable_variables]

    def loop(vjp):
        def body(i, z, a, acc):
            if not vjp:
                return i + 1, z + 1e-3 * field(t, z), a, acc
            with tf.GradientTape() as tape:
                tape.watch(z)
                out = field(t, z)
            g = tape.gradient(out, [z] + variables, output_gradients=a,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)  # fmt: skip
            return i + 1, z + 1e-3 * out, a + 1e-3 * g[0], [u + v for u, v in zip(acc, g[1:])]

        def run(z):
            init = (tf.constant(0), z, tf.ones_like(z), [tf.zeros_like(v) for v in variables])
            return tf.while_loop(lambda i, *_: i < repeats, body, init)[1:]

        return run

    out = {}
    for key, vjp in (("field_ms", False), ("field_vjp_ms", True)):
        fn = compiled_function(loop(vjp), block.compiled_by)
        tf.nest.map_structure(lambda a: a.numpy(), fn(z))
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            tf.nest.map_structure(lambda a: a.numpy(), fn(z))
            times.append(time.perf_counter() - t0)
        out[key] = 1e3 * statistics.median(times) / repeats
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--torch-py", required=True)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--compile", default="auto", choices=("auto", "xla", "graph"))
    p.add_argument("--stem", default="same", choices=("same", "reference"))
    p.add_argument("--field-repeats", type=int, default=15)
    p.add_argument("--reference-tol", type=float, default=1e-6)
    p.add_argument("--adjoint-first-step", default="forward", choices=("forward", "select"),
                   help="odezoo.ode.adjoint.ADJOINT_FIRST_STEP for this run (the timed model only)")  # fmt: skip
    p.add_argument("--adjoint-tol-factor", type=float, default=None,
                   help="odezoo.ode.adjoint.ADJOINT_TOL_FACTOR for this run (the timed model only)")  # fmt: skip
    p.add_argument("--no-torch-steps", action="store_true", help="check answers with torch, time odezoo alone")
    p.add_argument("--label", default="")
    p.add_argument("--json")
    args = p.parse_args()

    x, y = batch(args.batch)
    import odezoo.ode.adjoint as adjoint

    default_factor = adjoint.ADJOINT_TOL_FACTOR
    factor = default_factor if args.adjoint_tol_factor is None else args.adjoint_tol_factor
    adjoint.ADJOINT_FIRST_STEP, adjoint.ADJOINT_TOL_FACTOR = args.adjoint_first_step, factor
    keras.utils.set_random_seed(0)
    model = odezoo.build(
        "odenet", channels=args.channels, rtol=args.tol, atol=args.tol, stem=args.stem, compile=args.compile
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    block = model.ode_blocks()[0]
    mean, std = odezoo.nets.NORMALIZATION["fashion_mnist"]
    tmp = tempfile.mkdtemp(prefix="odenet_step_")
    npz = os.path.join(tmp, "weights.npz")
    np.savez(npz, x=x, y=y, channels=args.channels, norm_mean=mean, norm_std=std, lr=1e-3, **weights_of(model))

    torch = Torch(args.torch_py)
    info = torch(cmd="load", npz=npz, stem=args.stem, tol=args.tol, adjoint=True)
    # the answers, before any update
    p_tf = model.predict(x, batch_size=args.batch, verbose=0)
    nfe_probs = int(block.nfe_forward.numpy())
    rt = torch(cmd="probs")
    prob_diff = float(np.abs(p_tf - np.array(rt["probs"])).max())
    g_tf, loss_tf = grads_of(model, x, y)
    rg = torch(cmd="grads", out=os.path.join(tmp, "grads_torch.npz"))
    g_t = np.load(rg["npz"])
    grad_rel = {k: float(np.linalg.norm(g_tf[k] - g_t[k]) / max(np.linalg.norm(g_t[k]), 1e-30)) for k in g_tf}
    # a bias right before a GroupNorm has a gradient of rounding noise only: judge the variables
    # whose gradient carries at least 1e-3 of the largest norm, and the whole gradient at once
    big = max(np.linalg.norm(g_t[k]) for k in g_tf)
    judged = [k for k in g_tf if np.linalg.norm(g_t[k]) >= 1e-3 * big]
    worst = max(judged, key=grad_rel.get)
    flat_tf = np.concatenate([np.ravel(g_tf[k]) for k in sorted(g_tf)])
    flat_t = np.concatenate([np.ravel(g_t[k]) for k in sorted(g_tf)])
    grad_global = float(np.linalg.norm(flat_tf - flat_t) / np.linalg.norm(flat_t))
    print(f"state shape {tuple(block._y_shape)}; odezoo solve compiled by {block.compiled_by!r}; torch {info}")
    print(f"probabilities: max |odezoo - torch| = {prob_diff:.2e} (NFE fwd {nfe_probs} vs {rt['nfe_fwd']})")
    # both gradients against a tight solve's (odezoo, rtol = atol = --reference-tol, same weights)
    keras.utils.set_random_seed(0)
    ref = odezoo.build("odenet", channels=args.channels, rtol=args.reference_tol, atol=args.reference_tol,
                       stem=args.stem, compile=args.compile)  # fmt: skip
    ref.set_weights(model.get_weights())
    adjoint.ADJOINT_FIRST_STEP, adjoint.ADJOINT_TOL_FACTOR = "forward", default_factor  # the reference: defaults
    g_ref, _ = grads_of(ref, x, y)
    adjoint.ADJOINT_FIRST_STEP, adjoint.ADJOINT_TOL_FACTOR = args.adjoint_first_step, factor
    flat_ref = np.concatenate([np.ravel(g_ref[k]) for k in sorted(g_tf)])
    err_ref = {
        "odezoo": float(np.linalg.norm(flat_tf - flat_ref) / np.linalg.norm(flat_ref)),
        "torch": float(np.linalg.norm(flat_t - flat_ref) / np.linalg.norm(flat_ref)),
    }
    print(f"gradient rel. error against the {args.reference_tol:g} solve: odezoo {err_ref['odezoo']:.2e}, "
          f"torch {err_ref['torch']:.2e}")  # fmt: skip
    print(
        f"loss {loss_tf:.6f} vs {rg['loss']:.6f}; gradient rel. error: whole {grad_global:.2e}, worst variable "
        f"{worst} {grad_rel[worst]:.2e} (of {len(judged)} with norm >= 1e-3 of the largest)"
    )

    # the floors, each evaluation alone
    z = model.get_layer("stem_conv3").output  # symbolic; compute the state of this batch
    stem = keras.Model(model.inputs, z)
    z = tf.constant(stem([x]).numpy())
    floor_tf = field_floor(block, z, args.field_repeats)
    floor_torch = torch(cmd="field", repeats=args.field_repeats)

    rows = {"odezoo": dict(times=[]), "torch": dict(times=[])}

    def step_odezoo():
        t0 = time.perf_counter()
        loss = model.train_on_batch(x, y)
        s = time.perf_counter() - t0
        return dict(s=s, loss=float(np.ravel(loss)[0]), nfe_fwd=int(block.nfe_forward.numpy()),
                    nfe_bwd=int(block.nfe_backward.numpy()))  # fmt: skip

    def step_torch():
        return torch(cmd="step")

    steppers = {"odezoo": step_odezoo} if args.no_torch_steps else {"odezoo": step_odezoo, "torch": step_torch}
    for name, fn in steppers.items():
        r = fn()
        rows[name].update(first_s=r["s"], first_loss=r["loss"])
    order = list(steppers)
    for _ in range(args.steps):
        random.shuffle(order)
        for name in order:
            r = steppers[name]()
            rows[name]["times"].append(r["s"])
            rows[name].setdefault("nfe", []).append((r["nfe_fwd"], r["nfe_bwd"]))
            rows[name].setdefault("loss", []).append(r["loss"])
    for name, floor in (("odezoo", floor_tf), ("torch", floor_torch)):
        r = rows[name]
        if not r["times"]:
            continue
        nf = statistics.median(a for a, _ in r["nfe"])
        nb = statistics.median(b for _, b in r["nfe"])
        fl = (nf * floor["field_ms"] + nb * floor["field_vjp_ms"]) / 1e3
        r.update(min_s=min(r["times"]), median_s=statistics.median(r["times"]), floor_s=fl, **floor)
        r.update(floor_ratio_min=r["min_s"] / fl, floor_ratio_median=r["median_s"] / fl, nfe_median=(nf, nb))
        print(
            f"{name:7s} first {r['first_s']:6.2f} s | step min {r['min_s']:.3f} / median {r['median_s']:.3f} s | "
            f"NFE {nf:g}/{nb:g} | field {floor['field_ms']:.2f} ms, +vjp {floor['field_vjp_ms']:.2f} ms | "
            f"floor {fl:.3f} s, ratio {r['floor_ratio_min']:.2f} / {r['floor_ratio_median']:.2f}"
        )
    # everything but the solve: the same layers without the ODE block (stem, head, loss, Adam,
    # Keras's step), timed after the rounds because it shares (and so updates) the model's weights
    inputs = keras.Input(model.input_shape[1:])
    h = inputs
    for layer in model.layers[1:]:
        h = h if layer.name == "ode_block" else layer(h)
    outside = keras.Model(inputs, h)
    outside.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                    jit_compile=model.jit_compile)  # fmt: skip
    outside.train_on_batch(x, y)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        outside.train_on_batch(x, y)
        times.append(time.perf_counter() - t0)
    r = rows["odezoo"]
    r.update(outside_solve_min_s=min(times), outside_solve_median_s=statistics.median(times))
    r["solve_overhead_min_s"] = r["min_s"] - r["floor_s"] - r["outside_solve_min_s"]
    print(
        f"outside the solve (stem, head, loss, Adam, Keras): min {min(times):.3f} / median "
        f"{statistics.median(times):.3f} s; left for the integrator's own work: {r['solve_overhead_min_s']:.3f} s "
        f"(fastest step - floor - outside)"
    )
    if rows["torch"]["times"]:
        ratio_min = rows["torch"]["min_s"] / rows["odezoo"]["min_s"]
        ratio_med = rows["torch"]["median_s"] / rows["odezoo"]["median_s"]
        print(f"torch / odezoo: fastest {ratio_min:.2f}x, median {ratio_med:.2f}x")
    torch.close()
    if args.json:
        meta = dict(
            date_utc=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            args=vars(args),
            argv=sys.argv,
            load_average=os.getloadavg(),
            fashion_mnist=odezoo.data.fashion_mnist_available(),
            tensorflow=tf.__version__,
            torch=info.get("torch"),
            state_shape=list(block._y_shape),
            compiled_by=block.compiled_by,
        )
        checks_ = dict(prob_max_abs_diff=prob_diff, grad_rel=grad_rel, grad_rel_whole=grad_global, grad_worst=worst, grad_err_vs_reference=err_ref, loss=(loss_tf, rg["loss"]),
                       nfe_probs=(nfe_probs, rt["nfe_fwd"]))  # fmt: skip
        with open(args.json, "w") as fh:
            json.dump(dict(meta=meta, checks=checks_, rows=rows), fh, indent=1)


if __name__ == "__main__":
    main()
