"""One configuration of the peer Neural-ODE benchmark, in one framework, in this process.

Run by ``peers.py`` (the driver), each configuration in its own process and, for
torch and JAX, in its own virtual environment; it imports only the framework it
measures. Timing, NFE counting and the torchdiffeq / diffrax / reference code are
adapted from our team's peer scripts in ``../shared/bench/peer_ode_bench``
(bench_torch.py, bench_jax.py, reference.py, benchutil.py): same problem, same
measurement rules, so the figures are comparable with the peer README's.

    python peer_worker.py --framework odezoo --modes dopri5,tfp_dopri5 --tols 1e-3,1e-5 \
        --weights W.npz --outdir DIR [--tag p1_] [--repeats 7]
    frameworks / modes:
      odezoo: dopri5 (ODEBlock, odezoo's Dormand-Prince, adjoint), tfp_dopri5 (ODEBlock, tfp's)
      torch : odeint (backprop through the solver), odeint_adjoint
      jax   : recursive (diffrax Dopri5 + RecursiveCheckpointAdjoint), backsolve (+ BacksolveAdjoint)
      ref   : f64 (diffrax Dopri8 at rtol = atol = 1e-10 in float64: h(1) and the gradients)

Each (mode, tol) runs in turn in this process (one process per framework and pass;
the import is paid once) and writes DIR/<tag><framework>_<mode>_<tol>.json (times, NFE,
versions) and .npz (h(1) and the gradients of sum(h(1)^2) with respect to w1, b1, w2, b2). Times: a warm-up call (tracing / compiling), then the
median of ``--repeats`` steady-state calls, each forced to numpy. NFE: field calls
counted inside the field in a separate, untimed call (``--count``; odezoo's
``nfe_forward`` / ``nfe_backward`` layer counters otherwise, which that call checks).
"""

import argparse
import json
import os
import platform
import resource
import statistics
import time

import numpy as np

PARAMS = ("w1", "b1", "w2", "b2")
MODES = dict(
    # odezoo: "solver" (the adjoint) or "solver+gradient"
    # (no "+backprop": under XLA it preallocates max_steps = 10000 steps of gradient stacks, ~15 GB here)
    odezoo=("dopri5", "tfp_dopri5", "tsit5", "bosh3", "dopri8", "dopri5+checkpoint", "tsit5+checkpoint"),
    torch=("odeint", "odeint_adjoint"),
    jax=("recursive", "backsolve", "recursive_tsit5", "backsolve_tsit5"),  # diffrax Dopri5, or Tsit5
    ref=("f64",),
)  # fmt: skip


def odezoo_options(mode):
    """ODEBlock options of an odezoo mode: "tsit5+checkpoint" -> solver tsit5, gradient checkpoint."""
    solver, _, gradient = mode.partition("+")
    return dict(solver=solver, gradient=gradient or "auto")


def diffrax_parts(diffrax, mode):
    """(solver, adjoint) of a jax mode: "backsolve_tsit5" -> Tsit5(), BacksolveAdjoint()."""
    adjoint, _, solver = mode.partition("_")
    adjoint = diffrax.BacksolveAdjoint() if adjoint == "backsolve" else diffrax.RecursiveCheckpointAdjoint()
    return (diffrax.Tsit5() if solver == "tsit5" else diffrax.Dopri5()), adjoint


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_fn(fn, sync, repeats):
    """(first call s, median s, all times s, last output); ``sync`` forces the result."""
    t0 = time.perf_counter()
    out = sync(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = sync(fn())
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), times, out


# --------------------------------------------------------------------------- odezoo (TF)
def compiled_calls(block, h0):
    """XLA-compiled forward and forward + gradient (of sum(h(1)²) w.r.t. the field's PARAMS) of a built block."""
    import tensorflow as tf

    variables = [getattr(block.field, k) for k in PARAMS]

    @tf.function(jit_compile=True)
    def fwd():
        return block(h0)

    @tf.function(jit_compile=True)
    def fwd_grad():
        with tf.GradientTape() as tape:
            h = block(h0)
            loss = tf.reduce_sum(tf.square(h))
        return h, tape.gradient(loss, variables)

    return fwd, fwd_grad


def run_odezoo(args, d):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf
    import tensorflow_probability as tfp

    import odezoo

    class PeerField(keras.layers.Layer):
        """f(t, h) = tanh(h W1 + b1) W2 + b2 with the shared weights; ``counter`` counts calls."""

        def __init__(self, counter=None, **kw):
            super().__init__(**kw)
            self.counter = counter

        def build(self, t_shape, y_shape):
            for k in PARAMS:
                setattr(
                    self, k, self.add_weight(name=k, shape=d[k].shape, initializer=keras.initializers.Constant(d[k]))
                )

        def call(self, t, h):
            out = tf.tanh(h @ self.w1 + self.b1) @ self.w2 + self.b2
            if self.counter is None:
                return out
            with tf.control_dependencies([self.counter.assign_add(1.0)]):
                return tf.identity(out)

    h0 = tf.constant(d["h0"])

    def make(counter=None):
        block = odezoo.ODEBlock(PeerField(counter), rtol=args.tol, atol=args.tol, **odezoo_options(args.mode))
        block(h0)  # build
        for k in PARAMS:  # same weights as the peers
            np.testing.assert_array_equal(getattr(block.field, k).numpy(), d[k])
        return (block, *compiled_calls(block, h0))

    def sync(out):
        return tf.nest.map_structure(lambda x: x.numpy(), out)

    rec = dict(
        tf_version=tf.__version__,
        tfp_version=tfp.__version__,
        keras_version=keras.__version__,
        intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads(),
        rss_after_import_mb=rss_mb(),
        execution="ODEBlock called inside tf.function(jit_compile=True)",
    )
    block, fwd, fwd_grad = make()
    first, med, times, h_final = time_fn(fwd, sync, args.repeats)
    rec.update(
        fwd_first_call_s=first, fwd_ms=med * 1e3, fwd_times_s=times, nfe_fwd_layer=int(block.nfe_forward.numpy())
    )
    rec["rss_after_fwd_mb"] = rss_mb()
    first, med, times, (h_grad, grads) = time_fn(fwd_grad, sync, args.repeats)
    rec.update(
        grad_first_call_s=first,
        fwd_grad_ms=med * 1e3,
        fwd_grad_times_s=times,
        nfe_fwd_layer_in_grad=int(block.nfe_forward.numpy()),
        nfe_bwd_layer=int(block.nfe_backward.numpy()),
        status=[int(x) for x in block.solver_status.numpy()],
    )
    rec["rss_peak_mb"] = rss_mb()
    block.check_status()  # raises SolverError if either solve failed
    rec["nfe_fwd"], rec["nfe_bwd"] = rec["nfe_fwd_layer"], rec["nfe_bwd_layer"]
    if not args.count:
        return rec, h_final, dict(zip(PARAMS, grads))
    # NFE counted inside the field (untimed, separate block with the same weights): checks the counters
    counter = tf.Variable(0.0, trainable=False)
    cblock, cfwd, cfwd_grad = make(counter)
    counter.assign(0.0)
    cfwd()
    rec["nfe_fwd"] = int(counter.numpy())
    counter.assign(0.0)
    cfwd_grad()
    rec["nfe_bwd"] = int(counter.numpy()) - rec["nfe_fwd"]
    rec["nfe_layer_counters"] = [int(cblock.nfe_forward.numpy()), int(cblock.nfe_backward.numpy())]
    rec["nfe_counted_in_field"] = True
    return rec, h_final, dict(zip(PARAMS, grads))


# --------------------------------------------------------------------------- torchdiffeq
def run_torch(args, d):
    import torch
    import torchdiffeq
    from torchdiffeq import odeint, odeint_adjoint

    torch.set_num_threads(args.torch_threads or os.cpu_count())
    rec = dict(
        torch_version=torch.__version__,
        torchdiffeq_version=torchdiffeq.__version__,
        torch_threads=torch.get_num_threads(),
        rss_after_import_mb=rss_mb(),
        execution="eager (torch has no compile step here)",
    )

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for k in PARAMS:
                setattr(self, k, torch.nn.Parameter(torch.from_numpy(d[k].copy())))
            self.nfe = 0

        def forward(self, t, h):
            self.nfe += 1
            return torch.tanh(h @ self.w1 + self.b1) @ self.w2 + self.b2

    func = Field()
    h0 = torch.from_numpy(d["h0"].copy())
    t = torch.tensor([0.0, 1.0], dtype=torch.float32)
    solve = odeint_adjoint if args.mode == "odeint_adjoint" else odeint
    kw = dict(rtol=args.tol, atol=args.tol, method="dopri5")  # library defaults otherwise

    def fwd():
        with torch.no_grad():
            return solve(func, h0, t, **kw)[-1]

    def fwd_grad():
        for p in func.parameters():
            p.grad = None
        h = solve(func, h0, t, **kw)[-1]
        (h**2).sum().backward()
        return h.detach(), [getattr(func, k).grad for k in PARAMS]

    def sync(out):
        if isinstance(out, tuple):
            return out[0].numpy(), [g.numpy() for g in out[1]]
        return out.numpy()

    first, med, times, h_final = time_fn(fwd, sync, args.repeats)
    rec.update(fwd_first_call_s=first, fwd_ms=med * 1e3, fwd_times_s=times)
    rec["rss_after_fwd_mb"] = rss_mb()
    func.nfe = 0
    fwd()
    rec["nfe_fwd"] = func.nfe
    first, med, times, (_, grads) = time_fn(fwd_grad, sync, args.repeats)
    rec.update(grad_first_call_s=first, fwd_grad_ms=med * 1e3, fwd_grad_times_s=times)
    func.nfe = 0
    fwd_grad()
    rec["nfe_counted_in_field"] = True
    rec["nfe_bwd"] = func.nfe - rec["nfe_fwd"]  # odeint: 0 (autograd replays the recorded graph)
    rec["rss_peak_mb"] = rss_mb()
    return rec, h_final, dict(zip(PARAMS, grads))


# --------------------------------------------------------------------------- diffrax
def _jax_problem(d, dtype):
    import jax.numpy as jnp

    params = {k: jnp.asarray(d[k], dtype=dtype) for k in PARAMS}
    return params, jnp.asarray(d["h0"], dtype=dtype)


def run_jax(args, d):
    import diffrax
    import equinox
    import jax
    import jax.numpy as jnp

    rec = dict(
        jax_version=jax.__version__,
        diffrax_version=diffrax.__version__,
        equinox_version=equinox.__version__,
        jax_devices=str(jax.devices()),
        rss_after_import_mb=rss_mb(),
        execution="jax.jit (compiled ahead of the timed calls)",
    )
    params, h0 = _jax_problem(d, jnp.float32)
    count = [0]

    def field(t, h, p):
        return jnp.tanh(h @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    def counted_field(t, h, p):
        jax.debug.callback(lambda: count.__setitem__(0, count[0] + 1))
        return field(t, h, p)

    solver_, adjoint = diffrax_parts(diffrax, args.mode)

    def make(fn):
        def solve(p, y0):
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(fn),
                solver_,
                t0=0.0,
                t1=1.0,
                dt0=None,
                y0=y0,
                args=p,
                stepsize_controller=diffrax.PIDController(rtol=args.tol, atol=args.tol),
                saveat=diffrax.SaveAt(t1=True),
                adjoint=adjoint,
                max_steps=4096,
            )
            return sol.ys[-1]

        def loss(p, y0):
            h = solve(p, y0)
            return jnp.sum(h**2), h

        return solve, jax.value_and_grad(loss, has_aux=True)

    def sync(out):
        return jax.tree_util.tree_map(np.asarray, jax.block_until_ready(out))

    solve, fwd_grad = make(field)
    t0 = time.perf_counter()
    fwd_c = jax.jit(solve).lower(params, h0).compile()
    compile_fwd = time.perf_counter() - t0
    first, med, times, h_final = time_fn(lambda: fwd_c(params, h0), sync, args.repeats)
    rec.update(fwd_first_call_s=first + compile_fwd, fwd_ms=med * 1e3, fwd_times_s=times)
    rec["rss_after_fwd_mb"] = rss_mb()
    t0 = time.perf_counter()
    grad_c = jax.jit(fwd_grad).lower(params, h0).compile()
    compile_grad = time.perf_counter() - t0
    first, med, times, (_, grads) = time_fn(lambda: grad_c(params, h0), sync, args.repeats)
    rec.update(grad_first_call_s=first + compile_grad, fwd_grad_ms=med * 1e3, fwd_grad_times_s=times)
    rec["rss_peak_mb"] = rss_mb()
    if not args.count:  # NFE is deterministic: the driver counts it in the first pass only
        return rec, h_final, grads
    rec["nfe_counted_in_field"] = True
    csolve, cfwd_grad = make(counted_field)
    cf, cg = jax.jit(csolve), jax.jit(cfwd_grad)
    sync(cf(params, h0))
    count[0] = 0
    sync(cf(params, h0))
    rec["nfe_fwd"] = count[0]
    sync(cg(params, h0))
    count[0] = 0
    sync(cg(params, h0))
    rec["nfe_bwd"] = count[0] - rec["nfe_fwd"]
    return rec, h_final, grads


def run_reference(args, d):
    """float64 diffrax Dopri8 at rtol = atol = 1e-10, discretise-then-optimise gradient."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import diffrax
    import jax.numpy as jnp

    params, h0 = _jax_problem(d, jnp.float64)

    def field(t, h, p):
        return jnp.tanh(h @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    def loss(p):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            diffrax.Dopri8(),
            0.0,
            1.0,
            None,
            h0,
            args=p,
            stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-10),
            saveat=diffrax.SaveAt(t1=True),
            max_steps=100000,
        )
        h = sol.ys[-1]
        return jnp.sum(h**2), h

    t0 = time.perf_counter()
    (_, h), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    rec = dict(
        method="diffrax Dopri8 float64 rtol=atol=1e-10, RecursiveCheckpointAdjoint",
        seconds=time.perf_counter() - t0,
        jax_version=jax.__version__,
        diffrax_version=diffrax.__version__,
    )
    return rec, np.asarray(h), {k: np.asarray(v) for k, v in g.items()}


# --------------------------------------------------------------------------- lockstep serving
def serve_callables(args, d):
    """{"<mode>@<tol>:<fwd|grad>": callable returning numpy} for this framework (used by lockstep.py)."""
    tols = [float(x) for x in args.tols.split(",")]
    out = {}
    if args.framework == "odezoo":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras
        import tensorflow as tf

        import odezoo

        class PeerField(keras.layers.Layer):
            def build(self, t_shape, y_shape):
                for k in PARAMS:
                    setattr(
                        self,
                        k,
                        self.add_weight(name=k, shape=d[k].shape, initializer=keras.initializers.Constant(d[k])),
                    )

            def call(self, t, h):
                return tf.tanh(h @ self.w1 + self.b1) @ self.w2 + self.b2

        h0 = tf.constant(d["h0"])

        def make_odezoo(mode, tol):
            block = odezoo.ODEBlock(PeerField(), rtol=tol, atol=tol, **odezoo_options(mode))
            block(h0)
            return compiled_calls(block, h0)

        for mode in args.modes.split(","):
            if mode == "floor":  # peer_floor.py's chains of N evaluations (lockstep.py --floor)
                from peer_floor import floor_chains

                chains, fh0 = floor_chains(args.weights)
                for name, fn in chains.items():
                    out[f"{name}@0:chain"] = lambda fn=fn: tf.nest.map_structure(lambda x: x.numpy(), fn(fh0))
                continue
            for tol in tols:
                f1, f2 = make_odezoo(mode, tol)
                sync = lambda o: tf.nest.map_structure(lambda x: x.numpy(), o)  # noqa: E731
                out[f"{mode}@{tol:g}:fwd"] = lambda f1=f1, sync=sync: sync(f1())
                out[f"{mode}@{tol:g}:grad"] = lambda f2=f2, sync=sync: sync(f2())
    elif args.framework == "jax":
        import diffrax
        import jax
        import jax.numpy as jnp

        params, h0 = _jax_problem(d, jnp.float32)

        def field(t, h, p):
            return jnp.tanh(h @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

        for mode in args.modes.split(","):
            solver_, adjoint = diffrax_parts(diffrax, mode)
            for tol in tols:

                def solve(p, y0, tol=tol, adjoint=adjoint):
                    sol = diffrax.diffeqsolve(
                        diffrax.ODETerm(field),
                        solver_,
                        t0=0.0,
                        t1=1.0,
                        dt0=None,
                        y0=y0,
                        args=p,
                        stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol),
                        saveat=diffrax.SaveAt(t1=True),
                        adjoint=adjoint,
                        max_steps=4096,
                    )
                    return sol.ys[-1]

                def loss(p, y0, solve=solve):
                    h = solve(p, y0)
                    return jnp.sum(h**2), h

                f1 = jax.jit(solve).lower(params, h0).compile()
                f2 = jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(params, h0).compile()
                sync = lambda o: jax.tree_util.tree_map(np.asarray, jax.block_until_ready(o))  # noqa: E731
                out[f"{mode}@{tol:g}:fwd"] = lambda f1=f1, sync=sync: sync(f1(params, h0))
                out[f"{mode}@{tol:g}:grad"] = lambda f2=f2, sync=sync: sync(f2(params, h0))
    elif args.framework == "torch":
        import torch
        from torchdiffeq import odeint, odeint_adjoint

        torch.set_num_threads(args.torch_threads or os.cpu_count())

        class Field(torch.nn.Module):
            def __init__(self):
                super().__init__()
                for k in PARAMS:
                    setattr(self, k, torch.nn.Parameter(torch.from_numpy(d[k].copy())))

            def forward(self, t, h):
                return torch.tanh(h @ self.w1 + self.b1) @ self.w2 + self.b2

        func = Field()
        h0 = torch.from_numpy(d["h0"].copy())
        t = torch.tensor([0.0, 1.0], dtype=torch.float32)
        for mode in args.modes.split(","):
            solve_ = odeint_adjoint if mode == "odeint_adjoint" else odeint
            for tol in tols:
                kw = dict(rtol=tol, atol=tol, method="dopri5")

                def fwd(solve_=solve_, kw=kw):
                    with torch.no_grad():
                        return solve_(func, h0, t, **kw)[-1].numpy()

                def fwd_grad(solve_=solve_, kw=kw):
                    for p_ in func.parameters():
                        p_.grad = None
                    h = solve_(func, h0, t, **kw)[-1]
                    (h**2).sum().backward()
                    return [getattr(func, k).grad.numpy() for k in PARAMS]

                out[f"{mode}@{tol:g}:fwd"] = fwd
                out[f"{mode}@{tol:g}:grad"] = fwd_grad
    return out


def serve(args, d):
    """Warm every callable up, print READY and its keys, then time one call per stdin line (a key)."""
    import sys

    fns = serve_callables(args, d)
    for fn in fns.values():
        fn()
        fn()
    print("READY " + json.dumps(sorted(fns)), flush=True)
    for line in sys.stdin:
        key = line.strip()
        if key == "quit":
            break
        t0 = time.perf_counter()
        fns[key]()
        print(f"{time.perf_counter() - t0:.6f}", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--framework", choices=["odezoo", "torch", "jax", "ref"], required=True)
    p.add_argument("--modes", required=True, help="comma-separated modes, run in this process in turn")
    p.add_argument("--tols", default="1e-3,1e-5", help="comma-separated rtol = atol values")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--weights", required=True)
    p.add_argument("--outdir", default=None, help="required unless --serve")
    p.add_argument("--tag", default="", help="prefix of the output files (e.g. the pass)")
    p.add_argument(
        "--count",
        action="store_true",
        help="odezoo, jax: also count NFE inside the field (an extra, untimed compile; torch always counts)",
    )
    p.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: all cores)")
    p.add_argument("--serve", action="store_true", help="lockstep.py's mode: time one call per stdin line")
    args = p.parse_args()
    d = {k: v for k, v in np.load(args.weights).items()}
    if args.serve:
        return serve(args, d)
    for mode in args.modes.split(","):
        if mode not in MODES[args.framework]:
            p.error(f"--modes: {mode!r} is not one of {MODES[args.framework]} for {args.framework}")
    run = dict(odezoo=run_odezoo, torch=run_torch, jax=run_jax, ref=run_reference)[args.framework]
    os.makedirs(args.outdir, exist_ok=True)
    for tol in [float(x) for x in args.tols.split(",")]:
        for mode in args.modes.split(","):
            args.mode, args.tol = mode, tol
            rec, h_final, grads = run(args, d)
            rec.update(
                framework=args.framework,
                mode=mode,
                tol=tol,
                repeats=args.repeats,
                python=platform.python_version(),
                cpu_count=os.cpu_count(),
                date_utc=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            )
            dtype = np.float64 if args.framework == "ref" else np.float32
            out = os.path.join(args.outdir, f"{args.tag}{args.framework}_{mode}_{tol:g}")
            np.savez(
                out + ".npz",
                h_final=np.asarray(h_final, dtype),
                **{f"grad_{k}": np.asarray(grads[k], dtype) for k in PARAMS},
            )
            with open(out + ".json", "w") as fh:
                json.dump(rec, fh, indent=1)
            print(json.dumps({k: v for k, v in rec.items() if not k.endswith("_times_s")}), flush=True)


if __name__ == "__main__":
    main()
