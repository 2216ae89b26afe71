"""Regularised dynamics: RNODE's kinetic-energy and Jacobian-norm integrals on the solve itself.

Finlay, Jacobsen, Nurbekyan & Oberman, "How to train your neural ODE: the world of
Jacobian and kinetic regularization", ICML 2020. For a solve of dz/dt = f(t, z) from
t0 to t1, every row b of the batch gets

    kinetic_b  = ∫ ‖f(t, z_b)‖² dt            (summed over the state's entries)
    jacobian_b = ∫ ‖εᵀ ∂f/∂z(t, z_b)‖² dt     (Hutchinson: E[·] = ∫ ‖∂f/∂z‖_F² dt)

with one Rademacher probe ε per row held fixed over the solve (E[εεᵀ] = I, so the
expectation is the Frobenius norm; where ∂f/∂z·(∂f/∂z)ᵀ is diagonal the estimate is
exact for every ε). Both integrals run with |dt| (a solve backward in time gives
positive integrals). They are two extra components of the *same* forward solve, one VJP
of f per evaluation for the Jacobian term (none for the kinetic one), so the adjoint,
the checkpoint gradient and backprop differentiate them like any other output.

On odezoo's integrator (every embedded pair, shared batch mode) the two integrals are
left out of the error norm: the steps are the unregularised solve's, and the integrals
are as accurate as the method's quadrature of a smooth integrand along the solved path.
The other solvers (fixed grids, tfp's, ``batch_mode="independent"``) see the state and
the two integrals packed into one (batch, n + 2) tensor, error-controlled together (tfp's BDF,
which solves row by row, also carries each row's probe there, constant).
"""

from __future__ import annotations

import math

import tensorflow as tf

from odezoo import checks
from odezoo.ode.dispatch import solve, solve_list
from odezoo.ode.options import TFP_SOLVERS, is_adaptive, resolve_gradient

TERMS = ("kinetic", "jacobian")


def check_regularization(value):
    """``None`` or a dict with weights λ ≥ 0 for :data:`TERMS`; returns a full dict or None."""
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise checks.bad_value(
            "regularization", value, f"None or a non-empty dict of weights for {TERMS}, e.g. {{'kinetic': 0.01}}"
        )
    unknown = sorted(set(value) - set(TERMS))
    if unknown:
        raise checks.bad_value("regularization", value, f"a dict whose keys are among {TERMS} (unknown: {unknown})")
    out = {}
    for term in TERMS:
        weight = value.get(term, 0.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise checks.bad_value(f"regularization[{term!r}]", weight, "a finite float >= 0")
        out[term] = float(weight)
    return out


def rademacher(shape, dtype, seed):
    """A Rademacher probe (±1 entries) from a ``keras.random.SeedGenerator``."""
    import keras  # noqa: PLC0415

    u = keras.random.uniform(shape, seed=seed)
    return tf.cast(tf.where(u < 0.5, -1.0, 1.0), dtype)


def rates(field, t, y, noise, sign):
    """``(f, kinetic rate, jacobian rate)`` at (t, y); the rates per row, shape (batch,).

    ``noise``: the Hutchinson probe shaped like y, or None (no Jacobian term: rate zero,
    no VJP). ``sign``: +1 or -1, the direction of time, so the integrals grow.
    """
    axes = list(range(1, y.shape.rank))
    if noise is None:
        f = field(t, y)
        jac = tf.zeros_like(tf.reduce_sum(f, axes))
    else:
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(y)
            f = field(t, y)
        vjp = tape.gradient(f, y, output_gradients=noise, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        jac = tf.reduce_sum(tf.square(vjp), axes)
    kin = tf.reduce_sum(tf.square(f), axes)
    return f, sign * kin, sign * jac


def regularized_solve(f, y0, t0, times, *, noise=None, **options):
    """:func:`odezoo.ode.dispatch.solve` with the kinetic and Jacobian integrals carried along.

    ``noise``: the fixed Hutchinson probe (shaped like ``y0``), or None for the kinetic term
    only. ``options``: those of :func:`~odezoo.ode.dispatch.solve`. Returns
    ``(states, kinetic, jacobian, info)``: ``states`` as :func:`solve` gives them, the two
    integrals per row (shape (batch,)) from t0 to the last of ``times``.
    """
    dtype = y0.dtype
    times = tf.convert_to_tensor(times, dtype)
    t0 = tf.convert_to_tensor(t0, dtype)
    sign = tf.sign(tf.reshape(times, [-1])[-1] - t0)
    zero = tf.zeros_like(tf.reduce_sum(y0, list(range(1, y0.shape.rank))))
    solver = options.get("solver", "dopri5")
    grid = options.get("num_steps"), options.get("step_size")
    if options.get("batch_mode", "shared") == "shared" and solver not in TFP_SOLVERS and is_adaptive(solver, *grid):
        gradient = resolve_gradient(solver, options.get("gradient", "auto"), num_steps=None, step_size=None)

        def fn(t, ys):
            return list(rates(f, t, ys[0], noise, sign))

        keys = ("rtol", "atol", "first_step", "max_steps", "controller", "on_forward", "on_backward")
        (states, kin, jac), info = solve_list(
            fn, [y0, zero, zero], t0, times, solver=solver, gradient=gradient, norm_mask=[True, False, False],
            **{k: options[k] for k in keys if k in options},
        )  # fmt: skip
        return states, kin[-1], jac[-1], info
    # every other solver: one packed (batch, n + 2) state. tfp's BDF solves row by row (batch_axis=0),
    # where a row's probe cannot be looked up: it then rides in the state too, constant.
    shape = y0.shape[1:]
    n = shape.num_elements()
    batch = tf.shape(y0)[0]
    carry = noise is not None and solver == "bdf" and options.get("batch_axis") == 0
    width = 2 * n if carry else n

    def packed_fn(t, p):
        rows = tf.shape(p)[0]  # the batch, or one row
        y = tf.reshape(p[:, :n], tf.concat([[rows], shape], 0))
        probe = tf.reshape(p[:, n:width], tf.concat([[rows], shape], 0)) if carry else noise
        if t.shape.rank:  # independent mode: t is (batch, 1); the field expects (batch, 1, ..., 1)
            t = tf.reshape(t, [-1] + [1] * len(shape))
        dy, kin, jac = rates(f, t, y, probe, sign)
        parts = [tf.reshape(dy, [rows, n])] + ([tf.zeros([rows, n], dtype)] if carry else [])
        return tf.concat(parts + [kin[:, None], jac[:, None]], 1)

    parts = [tf.reshape(y0, [batch, n])] + ([tf.reshape(tf.cast(noise, dtype), [batch, n])] if carry else [])
    p0 = tf.concat(parts + [zero[:, None], zero[:, None]], 1)
    packed, info = solve(packed_fn, p0, t0, times, **options)
    steps = tf.shape(packed)[0]
    states = tf.reshape(packed[..., :n], tf.concat([[steps, batch], shape], 0))
    return states, packed[-1, :, width], packed[-1, :, width + 1], info


def regularization_penalty(weights, kinetic, jacobian):
    """λ_k·mean(kinetic) + λ_j·mean(jacobian): the batch means of the per-row integrals."""
    total = weights["kinetic"] * tf.reduce_mean(kinetic)
    if weights["jacobian"]:
        total += weights["jacobian"] * tf.reduce_mean(jacobian)
    return total


__all__ = ["TERMS", "check_regularization", "rademacher", "rates", "regularized_solve", "regularization_penalty"]
