"""Conformance kit for scheme authors: ``odezoo.testing.check_scheme(scheme)``."""

from __future__ import annotations

import math
import os
import tempfile

from collections.abc import Sequence
from typing import Any

import numpy as np

from odezoo import _registry
from odezoo._scheme import Scheme

__all__ = ["check_scheme", "convergence_slope", "linear_test_problem"]


def _resolve(scheme) -> Scheme:
    if isinstance(scheme, str):
        return _registry.get_scheme(scheme)()
    if isinstance(scheme, type) and issubclass(scheme, Scheme):
        return scheme()
    if isinstance(scheme, Scheme):
        return scheme
    raise TypeError(f"check_scheme takes a Scheme class, instance or registered name. Received: {scheme!r}.")


def linear_test_problem() -> dict[str, Any]:
    """y' = A y + b·cos t on [0, 1] in float64, with its closed-form solution.

    A = [[-1, 2], [-2, -1]] (eigenvalues −1 ± 2i: decaying rotation, inside every
    explicit method's stability region for the step sizes used), b = (1, 0.5).
    """
    A = np.array([[-1.0, 2.0], [-2.0, -1.0]])
    b = np.array([1.0, 0.5])
    y0 = np.array([1.0, -0.5])
    # particular solution y_p = P cos t + Q sin t: -P sin + Q cos = A(P cos + Q sin) + b cos
    #   cos: Q = A P + b ; sin: -P = A Q  =>  (A² + I) P = -A b
    P = np.linalg.solve(A @ A + np.eye(2), -A @ b)
    Q = A @ P + b
    w, V = np.linalg.eig(A)
    c = np.linalg.solve(V, (y0 - P).astype(complex))

    def exact(t):
        hom = (V @ (c * np.exp(w * t))).real
        return hom + P * np.cos(t) + Q * np.sin(t)

    def f(t, y):
        return A @ y + b * np.cos(t)

    return {"f": f, "y0": y0, "t0": 0.0, "t1": 1.0, "exact": exact}


def _flat(state):
    if isinstance(state, (tuple, list)):
        return np.concatenate([np.ravel(np.asarray(s, dtype=np.float64)) for s in state])
    return np.ravel(np.asarray(state, dtype=np.float64))


def _solve(scheme, fields, y0, t0, t1, n):
    h = (t1 - t0) / n
    state = scheme.init(y0)
    t = t0
    for _ in range(n):
        state = scheme.step(fields, t, state, h)
        t = t0 + (_ + 1) * h
    return scheme.output(state)


def convergence_slope(
    scheme: str | type[Scheme] | Scheme, steps: Sequence[int] | None = None
) -> tuple[float, list[tuple[float, float]]]:
    """Log-log slope of the global error against h, with the errors measured.

    Step counts are chosen so the finest error stays well above float64
    round-off (1e-11) and the coarsest is in the asymptotic regime.
    """
    scheme = _resolve(scheme)
    problem = scheme.test_problem()
    if problem is None:
        lin = linear_test_problem()
        fields = [lin["f"]] * scheme.num_fields
        y0, t0, t1, exact = lin["y0"], lin["t0"], lin["t1"], lin["exact"]
    else:
        fields, y0, t0, t1, exact = (problem[k] for k in ("fields", "y0", "t0", "t1", "exact"))
    if problem is not None and scheme.state_size == 2 and isinstance(y0, tuple):
        init_y0 = None
    else:
        init_y0 = y0
    ref = _flat(exact(t1))
    candidates = steps or [2**k for k in range(3, 13)]
    errs, hs = [], []
    for n in candidates:
        if init_y0 is None:
            # a partitioned problem gives the state itself; bypass init/output
            h = (t1 - t0) / n
            state = y0
            for i in range(n):
                state = scheme.step(fields, t0 + i * h, state, h)
            y = state
        else:
            y = _solve(scheme, fields, y0, t0, t1, n)
        err = float(np.max(np.abs(_flat(y) - ref)))
        if err < 1e-11:
            break
        errs.append(err)
        hs.append((t1 - t0) / n)
    if len(errs) < 2:
        raise AssertionError(
            f"the error is below round-off (1e-11) already at {candidates[0]} steps; pass larger `steps` "
            "or a harder test_problem() to measure a convergence slope."
        )
    # the asymptotic regime: the finest four step sizes kept
    hs_fit, errs_fit = np.log(hs[-4:]), np.log(errs[-4:])
    slope = float(np.polyfit(hs_fit, errs_fit, 1)[0])
    return slope, list(zip(hs, errs))


class _CountingField:
    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, t, y):
        self.calls += 1
        return self.f(t, y)


def _check_fields_and_state(scheme):
    problem = scheme.test_problem()
    n = scheme.num_fields
    if problem is None:
        lin = linear_test_problem()
        counting = [_CountingField(lin["f"]) for _ in range(n)]
        state = scheme.init(lin["y0"])
    else:
        counting = [_CountingField(f) for f in problem["fields"]]
        state = problem["y0"]
    if len(counting) != n:
        raise AssertionError(f"test_problem() gives {len(counting)} fields but num_fields = {n}.")
    if scheme.state_size == 2 and not (isinstance(state, (tuple, list)) and len(state) == 2):
        raise AssertionError("state_size = 2 but the state is not a pair.")
    if scheme.state_size == 1 and isinstance(state, (tuple, list)):
        raise AssertionError("state_size = 1 but init() returned a tuple.")
    new = scheme.step(counting, 0.0, state, 0.01)
    if scheme.state_size == 2 and not (isinstance(new, (tuple, list)) and len(new) == 2):
        raise AssertionError("state_size = 2 but step() did not return a pair.")
    unused = [i for i, c in enumerate(counting) if c.calls == 0]
    if unused:
        raise AssertionError(f"step() never called field(s) {unused} of num_fields = {n}.")


def _check_network(scheme_obj, tmpdir):
    import keras

    from odezoo._layers import ConvFieldFactory, SchemeBlock

    name = type(scheme_obj).__dict__.get("name")
    if name is None or name not in _registry.list_schemes() or _registry.get_scheme(name) is not type(scheme_obj):
        return "skipped (scheme not registered: a network needs a registered name)"
    options = {k: getattr(scheme_obj, k) for k in type(scheme_obj).option_names() if hasattr(scheme_obj, k)}
    inputs = keras.Input((8, 8, 4))
    block = SchemeBlock(name, ConvFieldFactory(), h=0.5, **options)
    model = keras.Model(inputs, block(inputs))
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 4)).astype("float32")
    y = np.asarray(model(x, training=False))
    if y.shape != x.shape or not np.all(np.isfinite(y)):
        raise AssertionError(f"network block gave shape {y.shape} (expected {x.shape}) or non-finite values.")
    path = os.path.join(tmpdir, "scheme_block.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    y2 = np.asarray(loaded(x, training=False))
    if not np.allclose(y, y2, atol=1e-6):
        raise AssertionError(f".keras round trip changed outputs by {np.max(np.abs(y - y2))}.")
    return "ok"


def check_scheme(
    scheme: str | type[Scheme] | Scheme, *, tolerance: float = 0.3, network: bool = True
) -> dict[str, Any]:
    """Check a scheme against its declarations; raise ``AssertionError`` on a violation.

    1. ``step`` as a fixed-grid solver on y' = Ay + b·cos t in float64 (or the
       scheme's own ``test_problem()``): the log-log slope of the global error
       must be within ``tolerance`` of the declared ``order``.
    2. ``step`` calls each of its ``num_fields`` fields, and the state is a
       pair exactly when ``state_size`` is 2.
    3. (``network=True``) the scheme as a :class:`odezoo.SchemeBlock` in a small
       Keras model: a forward pass and a ``.keras`` save/load round trip.

    Args:
        scheme: a Scheme class, instance, or registered name.

    Returns:
        ``{"order", "slope", "errors", "network"}``.
    """
    obj = _resolve(scheme)
    if not isinstance(obj.order, int) or obj.order < 1:
        raise AssertionError(f"order must be a positive int; got {obj.order!r}.")
    _check_fields_and_state(obj)
    slope, errors = convergence_slope(obj)
    if not math.isfinite(slope) or abs(slope - obj.order) > tolerance:
        table = ", ".join(f"h={h:.3g}: {e:.3g}" for h, e in errors)
        raise AssertionError(
            f"scheme {obj.name or type(obj).__name__!r} declares order {obj.order} but its measured "
            f"convergence slope is {slope:.3f} (errors: {table})."
        )
    result = {"order": obj.order, "slope": slope, "errors": errors, "network": None}
    if network:
        with tempfile.TemporaryDirectory() as tmp:
            result["network"] = _check_network(obj, tmp)
    return result
