"""Newton's method for the stages of implicit Runge-Kutta schemes, written for XLA.

An ESDIRK stage solves ``Y = known + hγ·f(T, Y)`` for Y. :func:`linearise` prepares
the linear solves of one step from the Jacobian of the field at the step's start
(a simplified, "chord" Newton, as Hairer & Wanner's SDIRK codes and diffrax's
``VeryChord`` do); :func:`solve_stage` iterates to convergence in the error norm's
scaled units. The linear algebra, by ``linear_solver``:

* ``"rows"``: the leading axis is a batch of independent systems. One Jacobian per
  row, (batch, d, d) by ``batch_jacobian`` (d = the per-row size of the state), each
  I − hγJ factorised by QR (XLA on CPU has no LU); never the dense Jacobian of the
  whole flattened batch.
* ``"full"``: one system: the Jacobian of the whole flattened state, (1, n, n).
* ``"krylov"``: Jacobian-free Newton-Krylov: each Newton correction by GMRES on
  finite-difference Jacobian-vector products at the current iterate (for large states,
  such as a convolutional field, where d×d matrices would not fit).
* ``"auto"`` (:func:`resolve_linear_solver`): "rows" when the solved components share a
  leading batch axis (one at least of rank 2, none of rank 0: a flow's state (z, log p) is
  batched) and a row holds at most :data:`DENSE_LIMIT` numbers,
  "full" when the state is not batched (a component of rank <= 1) and holds at most
  :data:`DENSE_LIMIT`, else "krylov".

Only the components selected by ``mask`` (the error norm's: the adjoint's state and
adjoint, not its parameter integrals) enter the Jacobian; the others enter no field
(the parameter integrals of the adjoint do not), so their block of I − hγJ is the identity
and they converge one iteration after the rest.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

LINEAR_SOLVERS = ("auto", "rows", "full", "krylov")
DENSE_LIMIT = 256  # the largest row (or unbatched state) given a dense Jacobian by "auto"


def resolve_linear_solver(linear_solver, y, mask):
    """``linear_solver`` with "auto" resolved for the state ``y`` (a flat list) and ``mask``."""
    if linear_solver not in LINEAR_SOLVERS:
        raise ValueError(f"linear_solver must be one of {LINEAR_SOLVERS}. Received: {linear_solver!r}.")
    if linear_solver != "auto":
        return linear_solver
    solved = [c for c, m in zip(y, mask) if m]
    ranks = [c.shape.rank for c in solved]
    leading = {c.shape[0] for c in solved if c.shape.rank and c.shape[0] is not None}
    batched = None not in ranks and min(ranks) >= 1 and max(ranks) >= 2 and len(leading) <= 1
    if batched and all(c.shape[1:].is_fully_defined() for c in solved):  # e.g. a flow's (z, log p)
        row = sum(int(np.prod(c.shape[1:])) for c in solved)
        return "rows" if row <= DENSE_LIMIT else "krylov"
    size = sum(int(np.prod(c.shape)) if c.shape.is_fully_defined() else DENSE_LIMIT + 1 for c in solved)
    return "full" if size <= DENSE_LIMIT else "krylov"


def gmres(matvec, b, m):
    """x ≈ A⁻¹b in the Krylov space K_m(A, b), for one tensor ``b`` (x0 = 0; m Arnoldi steps
    by modified Gram-Schmidt; ``matvec(v)`` = A·v on tensors shaped like ``b``).

    The small least-squares problem min ‖βe₁ − Hy‖ is solved by QR, a direction whose
    diagonal entry of R vanishes (a breakdown: the solution lies in a smaller space) dropped.
    """
    dtype = b.dtype
    tiny = tf.constant(np.finfo(dtype.as_numpy_dtype).tiny, dtype)
    eps = tf.constant(np.finfo(dtype.as_numpy_dtype).eps, dtype)
    zero = tf.zeros([], dtype)
    beta = tf.norm(tf.reshape(b, [-1]))
    basis = [b / tf.maximum(beta, tiny)]
    columns = []
    for j in range(m):
        w = matvec(basis[j])
        col = []
        for v in basis:
            hij = tf.reduce_sum(w * v)
            w = w - hij * v
            col.append(hij)
        norm = tf.norm(tf.reshape(w, [-1]))
        col.append(norm)
        columns.append(tf.stack(col + [zero] * (m - j - 1)))
        basis.append(w / tf.maximum(norm, tiny))
    hess = tf.stack(columns, axis=1)  # (m + 1, m)
    q, r = tf.linalg.qr(hess)
    rhs = beta * q[0]  # Qᵀ(βe₁)
    coeffs = [zero] * m
    scale = tf.reduce_max(tf.abs(tf.linalg.diag_part(r)))
    for i in reversed(range(m)):
        acc = rhs[i] - sum(r[i, k] * coeffs[k] for k in range(i + 1, m)) if i + 1 < m else rhs[i]
        usable = tf.abs(r[i, i]) > 100.0 * eps * scale
        coeffs[i] = tf.where(usable, acc / tf.where(usable, r[i, i], tf.ones_like(r[i, i])), zero)
    return sum(c * v for c, v in zip(coeffs, basis[:m]))


class Linearisation(NamedTuple):
    """What :func:`solve_stage` needs to apply (I − hγJ)⁻¹: the factors, or (krylov) nothing."""

    kind: str
    mask: list
    q: tf.Tensor | None = None  # (rows, d, d): I − hγJ = QR per row
    r: tf.Tensor | None = None
    krylov: int = 10


def _flatten(kind, parts):
    """The solved components as one (rows, d) matrix ("rows": leading axis kept; "full": one row)."""
    if kind == "rows":
        return tf.concat([tf.reshape(p, [tf.shape(p)[0], -1]) for p in parts], 1)
    return tf.reshape(tf.concat([tf.reshape(p, [-1]) for p in parts], 0), [1, -1])


def _unflatten(kind, flat, like):
    out, start = [], 0
    for p in like:
        size = int(np.prod(p.shape[1:])) if kind == "rows" else int(np.prod(p.shape))
        piece = flat[:, start : start + size] if kind == "rows" else flat[0, start : start + size]
        out.append(tf.reshape(piece, tf.shape(p)))
        start += size
    return out


def jacobian(call, t, y, mask, kind):
    """∂f/∂y over the masked components at (t, y): (rows, d, d) ("rows") or (1, n, n) ("full").

    A ``call`` with a ``jacobian`` attribute, ``jacobian(t, y, mask, kind)``, gives it itself: the
    adjoint fields do (:mod:`odezoo.ode.interpolated`), whose Jacobian -(∂f/∂y)ᵀ needs one order of
    differentiation fewer than autodiff of the adjoint field would (a field that holds a gradient
    itself, the flow's trace, has none of a third order)."""
    custom = getattr(call, "jacobian", None)
    if custom is not None:
        return tf.stop_gradient(custom(t, y, mask, kind))
    solved = [p for p, m in zip(y, mask) if m]
    x = _flatten(kind, solved)
    with tf.GradientTape() as tape:
        tape.watch(x)
        parts = iter(_unflatten(kind, x, solved))
        full = [next(parts) if m else tf.stop_gradient(p) for p, m in zip(y, mask)]
        out = _flatten(kind, [o for o, m in zip(call(t, full), mask) if m])
    return tf.stop_gradient(tape.batch_jacobian(out, x))


def linearise(call, t, y, hg, mask, kind, *, krylov=10):
    """Prepare the step's linear solves with I − hγ·J(t, y) (nothing to prepare for "krylov");
    ``hg`` a scalar, or (batch,) with "rows" (every row its own step)."""
    if kind == "krylov":
        return Linearisation(kind, list(mask), krylov=krylov)
    jac = jacobian(call, t, y, mask, kind)
    eye = tf.eye(tf.shape(jac)[-1], dtype=jac.dtype)
    if kind == "rows" and hg.shape.rank == 1:  # every row its own step (batch_mode="independent")
        hg = tf.reshape(hg, [-1, 1, 1])
    q, r = tf.linalg.qr(eye - tf.stop_gradient(hg) * jac)
    return Linearisation(kind, list(mask), q, r)


def _rms(parts, scale, mask):
    total, count = tf.zeros([], parts[0].dtype), 0.0
    for p, s, m in zip(parts, scale, mask):
        if m:
            total += tf.reduce_sum(tf.square(p / s))
            count += tf.cast(tf.size(p), p.dtype)
    return tf.stop_gradient(tf.sqrt(total / tf.maximum(count, 1.0)))


def _correction(lin, call, t, y, fy, hg, residual):
    """Δ = −(I − hγJ)⁻¹·G on the masked components, −G on the others."""
    solved = [g for g, m in zip(residual, lin.mask) if m]
    if lin.kind == "krylov":
        vec = tf.concat([tf.reshape(g, [-1]) for g in solved], 0)
        ys = [p for p, m in zip(y, lin.mask) if m]
        fs = [p for p, m in zip(fy, lin.mask) if m]
        dtype = vec.dtype
        root_eps = float(np.sqrt(np.finfo(dtype.as_numpy_dtype).eps))
        ynorm = tf.sqrt(tf.reduce_mean(tf.square(tf.concat([tf.reshape(p, [-1]) for p in ys], 0))))

        def split(v):
            out, start = [], 0
            for p in ys:
                size = int(np.prod(p.shape)) if p.shape.is_fully_defined() else tf.size(p)
                out.append(tf.reshape(v[start : start + size], tf.shape(p)))
                start = start + size
            return out

        def matvec(v):  # (I − hγJ)v, Jv by a forward difference at the current iterate
            vn = tf.sqrt(tf.reduce_mean(tf.square(v)))
            eps = root_eps * (1.0 + ynorm) / tf.maximum(vn, tf.constant(1e-30, dtype))
            moved = iter([p + eps * d for p, d in zip(ys, split(v))])
            full = [next(moved) if m else p for p, m in zip(y, lin.mask)]
            fv = [o for o, m in zip(call(t, full), lin.mask) if m]
            jv = tf.concat([tf.reshape((a - b) / eps, [-1]) for a, b in zip(fv, fs)], 0)
            return v - hg * jv

        step = -gmres(matvec, vec, lin.krylov)
        deltas = iter(split(step))
    else:
        rhs = -_flatten(lin.kind, solved)[..., None]
        x = tf.linalg.triangular_solve(lin.r, tf.linalg.matmul(lin.q, rhs, adjoint_a=True), lower=False)
        deltas = iter(_unflatten(lin.kind, x[..., 0], solved))
    return [next(deltas) if m else -g for g, m in zip(residual, lin.mask)]


def stage_calls(lin):
    """Field evaluations per Newton iteration: one, plus GMRES's ``krylov`` JVPs."""
    return 1 + (lin.krylov if lin.kind == "krylov" else 0)


def newton_tolerance(kappa, rtol, dtype):
    """The Newton iteration's stopping tolerance in the error norm's units: ``kappa``, but no less
    than 10·eps/rtol (Hairer's RADAU5 floors it so): near the dtype's precision (float32 at rtol
    1e-6) a correction cannot shrink below rounding, and the iteration would stall, be judged
    divergent and halve the step to underflow (status 5) on a problem it had solved."""
    eps = np.finfo(tf.as_dtype(dtype).as_numpy_dtype).eps
    return tf.maximum(tf.cast(kappa, dtype), 10.0 * eps / tf.cast(rtol, dtype))


def _judge(m, size, prev, kappa):
    """Iteration ``m``'s verdict from its correction's scaled RMS ``size`` and the previous one
    (elementwise): ``(done, failed)`` by Hairer & Wanner's rate test (:func:`solve_stage`)."""
    rate = size / tf.where(prev > 0.0, prev, tf.ones_like(prev))
    contracting = tf.logical_and(m > 0, rate < 1.0)
    inf = tf.constant(np.inf, size.dtype)
    factor = tf.where(contracting, rate / (1.0 - tf.where(contracting, rate, tf.zeros_like(rate))), inf)
    done = tf.logical_or(size <= kappa, factor * size <= kappa)
    failed = tf.logical_or(tf.logical_not(tf.math.is_finite(size)), tf.logical_and(m > 0, rate >= 1.0))
    return done, tf.logical_and(failed, tf.logical_not(done))


def solve_stage(call, t, known, hg, guess, lin, scale, *, kappa, max_iterations):
    """Solve ``Y = known + hγ·f(t, Y)`` by Newton from ``guess``.

    Converged when the scaled RMS of a correction is at most ``kappa`` or, once the
    iteration contracts at rate θ < 1, when θ/(1 − θ) times it is (Hairer & Wanner II,
    IV.8); diverged when θ >= 1 or a value is not finite. Returns ``(Y, k, converged,
    iterations)`` with k = (Y − known)/(hγ), the stage derivative (not f(t, Y), which
    would amplify the iteration's error by the stiffness).
    """
    dtype = known[0].dtype

    def cond(m, y, prev, done, failed):
        return tf.logical_and(m < max_iterations, tf.logical_not(tf.logical_or(done, failed)))

    def body(m, y, prev, done, failed):
        fy = call(t, y)
        residual = [a - b - hg * c for a, b, c in zip(y, known, fy)]
        delta = _correction(lin, call, t, y, fy, hg, residual)
        y = [a + d for a, d in zip(y, delta)]
        size = _rms(delta, scale, lin.mask)
        done, failed = _judge(m, size, prev, kappa)
        return m + 1, y, size, done, failed

    start = (tf.constant(0, tf.int32), list(guess), tf.zeros([], dtype), tf.constant(False), tf.constant(False))
    m, y, _, done, _ = tf.while_loop(cond, body, start, maximum_iterations=max_iterations)
    k = [(a - b) / hg for a, b in zip(y, known)]
    return y, k, done, m


def _row_rms(parts, scale, mask):
    """The scaled RMS of each row over the masked components: shape (batch,)."""
    total, count = None, 0
    for p, c, m in zip(parts, scale, mask):
        if m:
            q = tf.reduce_sum(tf.square(tf.reshape(p / c, [tf.shape(p)[0], -1])), 1)
            total = q if total is None else total + q
            count += int(np.prod(p.shape[1:]))
    return tf.stop_gradient(tf.sqrt(total / max(count, 1)))


def solve_stage_rows(call, t, known, hg, guess, lin, scale, *, kappa, max_iterations):
    """:func:`solve_stage` with every row its own Newton iteration (``batch_mode="independent"``):
    ``t`` and ``hg`` of shape (batch,), ``lin`` a "rows" linearisation with per-row factors.

    Each row converges, diverges or runs out of iterations by itself (the same tests, on the
    row's scaled RMS); a row that is done keeps its iterate. Returns ``(Y, k, converged,
    iterations)``, the last two of shape (batch,) (a row's iterations: its field calls).
    """
    if lin.kind != "rows":
        raise ValueError(f"Per-row Newton needs the 'rows' linear solver; received {lin.kind!r}.")
    dtype = known[0].dtype

    def rows(x, like):
        return tf.reshape(x, tf.concat([tf.shape(x), tf.ones([like.shape.rank - 1], tf.int32)], 0))

    hgs = [rows(hg, c) for c in known]
    batch = tf.shape(hg)

    def cond(m, y, prev, done, failed, count):
        return tf.logical_and(m < max_iterations, tf.reduce_any(tf.logical_not(tf.logical_or(done, failed))))

    def body(m, y, prev, done, failed, count):
        running = tf.logical_not(tf.logical_or(done, failed))
        fy = call(t, y)
        residual = [a - b - h * c for a, b, c, h in zip(y, known, fy, hgs)]
        delta = _correction(lin, call, t, y, fy, hg, residual)
        moved = [a + d for a, d in zip(y, delta)]
        y = [tf.where(rows(running, a), b, a) for a, b in zip(y, moved)]
        size = _row_rms(delta, scale, lin.mask)
        now_done, now_failed = _judge(m, size, prev, kappa)
        done = tf.logical_or(done, tf.logical_and(running, now_done))
        failed = tf.logical_or(failed, tf.logical_and(running, now_failed))
        return m + 1, y, tf.where(running, size, prev), done, failed, count + tf.cast(running, tf.int32)

    false = tf.zeros(batch, tf.bool)
    start = (tf.constant(0, tf.int32), list(guess), tf.zeros(batch, dtype), false, false, tf.zeros(batch, tf.int32))
    _, y, _, done, _, count = tf.while_loop(cond, body, start, maximum_iterations=max_iterations)
    k = [(a - b) / h for a, b, h in zip(y, known, hgs)]
    return y, k, done, count
