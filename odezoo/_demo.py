"""``odezoo demo``: a short tour of the zoo, runnable on a laptop CPU in seconds.

1. the zoo: every registered model and scheme, with each scheme's measured
   convergence order as a fixed-grid solver (the scheme's third use);
2. one model built, summarised (parameters, scheme, order, ODE reading);
3. a forward pass on random raw-pixel images.
"""

from __future__ import annotations

import time

import numpy as np

import odezoo
from odezoo import cli
from odezoo.testing import convergence_slope

DEMO_INPUT_SHAPE = (32, 32, 3)
DEMO_BATCH = 4


def _section(title: str, out) -> None:
    out("")
    out(f"== {title}")


def measured_orders() -> dict:
    """``{scheme: log-log error slope}`` of each scheme's ``step`` on the linear test problem."""
    slopes = {}
    for name in odezoo.list_schemes():
        try:
            slopes[name] = convergence_slope(name)[0]
        except Exception:  # a plugin's scheme that cannot be measured must not stop the tour
            slopes[name] = None
    return slopes


def _count_params(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


def run(model: str = "lm_resnet", out=print) -> dict:
    """Run the tour; return what it measured (for tests).

    Args:
        model: a registered classifier name or alias to build at (32, 32, 3).
        out: where lines go (``print`` by default).

    Returns:
        ``{"model", "params", "output_shape", "seconds"}``.
    """
    start = time.perf_counter()
    info = odezoo.describe(model)  # unknown names fail here, before anything heavy
    if info["kind"] != "classifier":
        raise ValueError(
            f"Invalid value for `model`. Received: model={model!r} (a {info['kind']}). "
            f"Allowed: a classifier, e.g. {', '.join(cli.registered_models())}."
        )
    out(f"odezoo {odezoo.__version__}: neural networks read as differential equations.")

    _section(f"Models ({len(odezoo.list_models())} names; aliases build the family at a set depth)", out)
    out(cli.models_table())

    _section("Schemes (measured = error slope of step() on y' = Ay + b cos t, float64)", out)
    out(cli.schemes_table(measured_orders()))

    config = {"input_shape": DEMO_INPUT_SHAPE}
    _section(f"Building {model} with {config}", out)
    t0 = time.perf_counter()
    net = odezoo.build(model, **config)
    build_s = time.perf_counter() - t0
    trainable = _count_params(net.trainable_weights)
    total = net.count_params()
    depth = info["defaults"].get("depth")
    lines = [
        ("model", f"{net.name} (kind {info['kind']}, depth {depth})" if depth else net.name),
        ("parameters", f"{total:,} ({trainable:,} trainable)"),
        ("input", f"{net.input_shape} raw pixels, normalised inside the model"),
        ("scheme", f"{info['scheme']} (order {info['order']})"),
        ("ODE reading", info["ode_reading"]),
        ("paper", info["paper"]),
        ("built in", f"{build_s:.1f} s"),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        out(f"  {key.ljust(width)}  {value}")

    _section(f"Forward pass on {DEMO_BATCH} random raw-pixel images (values 0-255)", out)
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 255.0, size=(DEMO_BATCH, *DEMO_INPUT_SHAPE)).astype("float32")
    t0 = time.perf_counter()
    y = np.asarray(net(x, training=False))
    fwd_s = time.perf_counter() - t0
    out(f"  input  {x.shape}")
    out(f"  output {y.shape}  (class probabilities; rows sum to {float(np.mean(y.sum(axis=1))):.4f})")
    out(f"  predicted classes {y.argmax(axis=1).tolist()} (untrained), {fwd_s:.2f} s")

    seconds = time.perf_counter() - start
    out("")
    out(f"Done in {seconds:.1f} s. Next: `odezoo describe {model}`, `odezoo schemes`, `odezoo plugins`.")
    return {"model": model, "params": total, "output_shape": tuple(y.shape), "seconds": seconds}
