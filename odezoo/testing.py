"""Conformance kits: ``odezoo.testing.check_scheme(scheme)`` and, for embedded pairs, ``check_solver(name)``."""

from __future__ import annotations

import math
import os
import tempfile

from collections.abc import Sequence
from typing import Any

import numpy as np

from odezoo import _registry
from odezoo._scheme import Scheme

__all__ = ["check_scheme", "check_solver", "convergence_slope", "linear_test_problem"]


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

    return {"f": f, "y0": y0, "t0": 0.0, "t1": 1.0, "exact": exact, "A": A, "b": b}


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


# --- adaptive solvers: check_solver ---------------------------------------------------------


def _pair_class(solver):
    from odezoo._scheme import DiagonallyImplicitRungeKutta, ExplicitRungeKutta

    cls = _registry.get_scheme(solver) if isinstance(solver, str) else solver
    cls = type(cls) if isinstance(cls, Scheme) else cls
    pair = isinstance(cls, type) and issubclass(cls, (ExplicitRungeKutta, DiagonallyImplicitRungeKutta))
    if not (pair and cls.is_embedded()):
        raise AssertionError(
            "check_solver needs an embedded pair (an ExplicitRungeKutta with `b_hat`, or a "
            f"DiagonallyImplicitRungeKutta); got {solver!r}."
        )
    return cls


def _implicit_stage(f, t, known, hg):
    """Y = known + hγ·f(t, Y) by Newton with a central-difference Jacobian (numpy, float64), to rounding."""
    y = np.array(known, dtype=np.float64)
    eye = np.eye(y.size)
    for _ in range(50):
        jac = np.stack([(f(t, y + 1e-7 * e) - f(t, y - 1e-7 * e)) / 2e-7 for e in eye], axis=1)
        delta = np.linalg.solve(eye - hg * jac, -(y - known - hg * f(t, y)))
        y = y + delta
        if np.max(np.abs(delta)) <= 1e-15 * (1.0 + np.max(np.abs(y))):
            break
    return y


def _rk_step(k, f, t, y, h, weights):
    """One step of the tableau ``k`` with ``weights`` (an ESDIRK's diagonal stages solved by Newton)."""
    stages = []
    for i, row in enumerate(k["A"]):
        yi = y + h * sum((a * s for a, s in zip(row[:i], stages)), np.zeros_like(y))
        if k.get("implicit") and row[i] != 0.0:
            stage = _implicit_stage(f, t + k["c"][i] * h, yi, h * row[i])
            stages.append((stage - yi) / (h * row[i]))
        else:
            stages.append(f(t + k["c"][i] * h, yi))
    return y + h * sum((w * s for w, s in zip(weights, stages)), np.zeros_like(y))


def _attempt(tableau):
    """The integrator's one-step function for ``tableau`` (explicit or implicit), as ``attempt_step``'s."""
    from odezoo.ode import integrator

    if not tableau.implicit:
        return integrator.attempt_step
    return lambda *args, **kwargs: integrator.attempt_implicit_step(*args, **kwargs)[:5]


def _slope(hs, errors):
    return float(np.polyfit(np.log(hs), np.log(errors), 1)[0])


def _weights_order(k, weights, problem, ns=(16, 32, 64)):
    """The log-log slope of the global error of ``weights`` on a fixed grid (numpy, float64)."""
    f, y0, t0, t1, exact = (problem[key] for key in ("f", "y0", "t0", "t1", "exact"))
    errors = []
    for n in ns:
        y, h = np.array(y0, dtype=np.float64), (t1 - t0) / n
        for i in range(n):
            y = _rk_step(k, f, t0 + i * h, y, h, weights)
        errors.append(float(np.max(np.abs(y - exact(t1)))))
    return _slope([(t1 - t0) / n for n in ns], errors), errors


def _estimate_order(k, problem, hs=(0.2, 0.1, 0.05)):
    """The slope of the embedded error estimate |h·Σ e_i k_i| over one step from t0: error_order + 1."""
    f, y0, t0 = problem["f"], np.array(problem["y0"], dtype=np.float64), problem["t0"]
    sizes = [float(np.max(np.abs(_rk_step(k, f, t0, y0, h, k["error"]) - y0))) for h in hs]
    return _slope(hs, sizes), sizes


def _ratio_order(tableau, problem, hs=(0.2, 0.1, 0.05)):
    """The slope of the integrator's error ratio over one step (rtol = atol = 1): estimate_order."""
    import tensorflow as tf

    A, b = problem["A"], problem["b"]

    def call(t, y):
        return [tf.linalg.matvec(tf.constant(A), y[0]) + tf.constant(b) * tf.cos(t)]

    ratios = []
    for h in hs:
        t0, y = tf.constant(problem["t0"], tf.float64), [tf.constant(problem["y0"], tf.float64)]
        *_, ratio, _ = _attempt(tableau)(
            tableau, call, t0, y, call(t0, y), tf.constant(h, tf.float64), rtol=1.0, atol=1.0, mask=[True]
        )
        ratios.append(float(ratio))
    return _slope(hs, ratios), ratios


def _dense_order(tableau, problem, hs=(0.2, 0.1, 0.05), theta=0.37):
    """The slope of the dense output's error at t0 + θh over one step, through the integrator's code."""
    import tensorflow as tf

    from odezoo.ode import integrator

    A, b = problem["A"], problem["b"]

    def call(t, y):
        return [tf.linalg.matvec(tf.constant(A), y[0]) + tf.constant(b) * tf.cos(t)]

    errors = []
    for h in hs:
        t0, hh = tf.constant(problem["t0"], tf.float64), tf.constant(h, tf.float64)
        y = [tf.constant(problem["y0"], tf.float64)]
        y_new, ks, f_new, _, _ = _attempt(tableau)(
            tableau, call, t0, y, call(t0, y), hh, rtol=1.0, atol=1.0, mask=[True]
        )
        t_i = tf.constant(problem["t0"] + theta * h, tf.float64)
        (value,) = integrator.dense_output(tableau, t0, hh, y, y_new, ks, t_i, t0 + hh, f_new)
        errors.append(float(np.max(np.abs(value.numpy() - problem["exact"](problem["t0"] + theta * h)))))
    return _slope(hs, errors), errors


def _proportionality(name, problem, tols, *, step_to_times=False):
    import tensorflow as tf

    from odezoo.ode import odeint

    A, b = problem["A"], problem["b"]
    # times inside steps: the dense output serves them; a step_to_times pair ends its steps on
    # them, so its times are spread out for the tolerance, not the times, to set the steps
    times = np.linspace(problem["t0"], 20.0, 5) if step_to_times else np.linspace(problem["t0"], 4.0, 9)
    exact = np.stack([problem["exact"](t) for t in times])
    errors = []
    for tol in tols:
        out = odeint(
            lambda t, y: tf.linalg.matvec(tf.constant(A), y) + tf.constant(b) * tf.cos(t),
            tf.constant(problem["y0"], tf.float64),
            tf.constant(times),
            solver=name,
            rtol=tol,
            atol=tol,
            max_steps=200000,
        )
        errors.append(float(np.max(np.abs(out.numpy() - exact))))
    return errors


def _central_differences(loss, variable, eps=1e-6):
    """The gradient of ``loss()`` (a float) in ``variable`` by central differences, entry by entry."""
    old = np.array(variable.numpy())  # an array also for a scalar variable
    fd = np.zeros_like(old)
    for index in np.ndindex(*old.shape):
        sides = []
        for sign in (1.0, -1.0):
            moved = old.copy()
            moved[index] += sign * eps
            variable.assign(moved)
            sides.append(loss())
        fd[index] = (sides[0] - sides[1]) / (2 * eps)
    variable.assign(old)
    return fd


def _gradient_errors(name, tol):
    """Relative errors of ODEBlock's adjoint, backprop and checkpoint gradients against central differences."""
    import keras
    import tensorflow as tf

    from odezoo.ode import ODEBlock

    class Field(keras.layers.Layer):
        def build(self, t_shape, y_shape):
            self.w = self.add_weight(shape=(y_shape[-1], y_shape[-1]), initializer="orthogonal", dtype="float64")

        def call(self, t, y):
            return tf.tanh(tf.matmul(y, self.w)) * tf.cos(t)

    x = tf.constant(np.random.default_rng(0).normal(size=(3, 2)))
    out = {}
    for gradient in ("adjoint", "backprop", "checkpoint"):
        keras.utils.set_random_seed(0)
        block = ODEBlock(Field(dtype="float64"), solver=name, rtol=tol, atol=tol, gradient=gradient,
                         dtype="float64", max_steps=200000)  # fmt: skip
        block.build(x.shape)
        w = block.field.w

        with tf.GradientTape() as tape:
            value = tf.reduce_sum(tf.sin(block(x)))
        (g,) = tape.gradient(value, [w])
        fd = _central_differences(lambda block=block: float(tf.reduce_sum(tf.sin(block(x)))), w)
        out[gradient] = float(np.linalg.norm(g.numpy() - fd) / np.linalg.norm(fd))
    return out


def _round_trip(name, tmpdir):
    import keras
    import tensorflow as tf

    from odezoo.ode import ODEBlock

    @keras.saving.register_keras_serializable(package="odezoo_check_solver")
    class CheckSolverField(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(3)

        def build(self, t_shape, y_shape):
            self.dense.build(y_shape)

        def call(self, t, y):
            return tf.tanh(self.dense(y))

    inputs = keras.Input((3,))
    model = keras.Model(inputs, ODEBlock(CheckSolverField(), solver=name, rtol=1e-5, atol=1e-5)(inputs))
    x = np.random.default_rng(1).normal(size=(4, 3)).astype("float32")
    path = os.path.join(tmpdir, "check_solver.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    if loaded.layers[-1].solver != name:
        raise AssertionError(f"the loaded ODEBlock solves with {loaded.layers[-1].solver!r}, not {name!r}.")
    diff = float(np.max(np.abs(loaded.predict(x, verbose=0) - model.predict(x, verbose=0))))
    if diff > 1e-5:
        raise AssertionError(f".keras round trip of an ODEBlock with solver={name!r} changed outputs by {diff}.")
    return "ok"


def check_solver(
    solver: str | type, *, tolerance: float = 0.4, gradients: bool = True, round_trip: bool = True
) -> dict[str, Any]:
    """Check an embedded Runge-Kutta pair as an adaptive solver; raise ``AssertionError`` on a violation.

    On :func:`linear_test_problem` (closed-form solution), in float64:

    1. the main weights ``b`` on a fixed grid converge at ``order`` and the embedded
       weights ``b_hat`` at ``error_order`` (log-log slopes within ``tolerance``; numpy,
       from the coefficients alone);
    2. the error estimate h·Σ (b_i − b_hat_i) k_i of one step shrinks as h^(error_order + 1),
       and the error ratio the integrator's controller sees (through ``combine_errors`` for
       a pair with a second estimate) as h^estimate_order;
    3. the dense output (the pair's own, or the cubic Hermite interpolant) at a time inside
       one step, through the integrator's code: slope at least min(order, 3) + 1 − ``tolerance``
       (the measured slope is reported; skipped for a ``step_to_times`` pair, which
       interpolates nothing: check 4 covers its solution times);
    4. adaptive solves with ``odeint(solver=name)`` at solution times inside steps: error
       below 100·tol at two tolerances 1000× apart, and falling at least 100× between them;
    5. (``gradients``) ODEBlock's adjoint, backprop and checkpoint gradients against central finite
       differences (relative error below 1e-4; 2e-3 for pairs of order ≤ 2, whose tightest
       affordable solve is looser);
    6. (``round_trip``) a ``.keras`` save/load round trip of an ODEBlock using it.

    The name must be registered (``odezoo.register_scheme``): ODEBlock and odeint find
    solvers by name. Returns the measurements.
    """
    from odezoo.ode import require_tensorflow
    from odezoo.ode.tableau import tableau_of

    require_tensorflow("odezoo.testing.check_solver")
    cls = _pair_class(solver)
    name = cls.__dict__.get("name")
    if name is None or _registry.get_scheme(name) is not cls:
        raise AssertionError(f"{cls.__qualname__} is not registered: register it with odezoo.register_scheme first.")
    k = cls.coefficients()
    problem = linear_test_problem()
    result: dict[str, Any] = {"solver": name, "order": k["order"], "error_order": k["error_order"]}

    def expect(what, measured, wanted, errors):
        result[what] = measured
        if not math.isfinite(measured) or measured < wanted - tolerance:
            table = ", ".join(f"{e:.3g}" for e in errors)
            raise AssertionError(f"{name!r}: {what} measured {measured:.3f}, expected {wanted} (errors: {table}).")

    for what, weights, order in (("order_measured", k["b"], k["order"]), ("error_order_measured", k["b_hat"],
                                                                            k["error_order"])):  # fmt: skip
        # a high order reaches rounding within a few steps on this problem: fewer, longer steps
        slope, errors = _weights_order(k, weights, problem, ns=(16, 32, 64) if order <= 6 else (4, 6, 8))
        expect(what, slope, order, errors)
        if slope > order + tolerance + 0.6:  # a declared order far below the measured one is a mistake too
            raise AssertionError(f"{name!r}: {what} {slope:.3f} is well above the declared {order}.")
    slope, sizes = _estimate_order(k, problem)
    expect("estimate_order_measured", slope, k["error_order"] + 1, sizes)
    tableau = tableau_of(cls)
    slope, ratios = _ratio_order(tableau, problem)  # the ratio the controller sees (combine_errors, if any)
    expect("ratio_order_measured", slope, k["estimate_order"], ratios)
    result["dense"] = tableau.dense_kind
    if tableau.dense_kind != "step":  # step_to_times: no interpolation; the solves below end steps on the times
        slope, errors = _dense_order(tableau, problem)
        expect("dense_order_measured", slope, min(k["order"], 3) + 1, errors)
    tols = (1e-4, 1e-7) if k["order"] <= 2 else (1e-5, 1e-8)
    errors = _proportionality(name, problem, tols, step_to_times=tableau.dense_kind == "step")
    result["tolerance_errors"] = dict(zip(tols, errors))
    if any(e > 100 * t for e, t in zip(errors, tols)) or errors[1] > errors[0] / 100:
        raise AssertionError(f"{name!r}: adaptive errors {errors} at tolerances {tols} are not proportional.")
    if gradients:
        tol, limit = (1e-8, 2e-3) if k["order"] <= 2 else (1e-10, 1e-4)
        result["gradient_errors"] = _gradient_errors(name, tol)
        bad = {g: e for g, e in result["gradient_errors"].items() if not e < limit}
        if bad:
            raise AssertionError(f"{name!r}: gradients against finite differences off by {bad} (limit {limit}).")
    if round_trip:
        with tempfile.TemporaryDirectory() as tmp:
            result["round_trip"] = _round_trip(name, tmp)
    return result
