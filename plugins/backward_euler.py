"""Backward (implicit) Euler as a scheme: the step PolyNet's PolyInception approximates."""

import math

import keras
import numpy as np

import odezoo
from odezoo import checks
from odezoo.layers import frozen_batchnorm_statistics

ODEZOO_PLUGIN_API = 1

GRADIENTS = ("implicit", "unrolled")
SOLVERS = ("fixed_point", "newton")


@odezoo.register_scheme("backward_euler")
class BackwardEuler(odezoo.Scheme):
    """y₁ = y₀ + h·f(t + h, y₁), solved by fixed-point or Newton iteration. Order 1.

    The step is the solution of an equation, found by an iteration from y = y₀ until its
    correction Δ is below ``tol`` in the norm sqrt(mean((Δ / (tol·(1 + |y|)))²)) ≤ 1, at
    most ``iterations`` times; one more evaluation then gives the output. ``solver``:

    - ``"fixed_point"`` (default): y ← y₀ + h·f(t + h, y), one evaluation an iteration. It
      converges when y ↦ y₀ + h·f(y) is a contraction (h times the field's Lipschitz
      constant below 1), which is also when PolyInception's series I + F + F² + ...
      converges: for a linear field the k-th iterate *is* that series cut after F^k
      (PolyNet's poly-2 is k = 2; scheme ``polyinception``, option ``degree``).
    - ``"newton"``: Newton's method on r(y) = y − y₀ − h·f(t + h, y), each correction from
      GMRES(``krylov``) on (I − hJ)Δ = −r with Jacobian-vector products by a forward
      difference (Jacobian-free Newton-Krylov; Knoll & Keyes, J. Comput. Phys. 193, 2004), so
      no Jacobian is formed, whatever the state's size: ``krylov`` + 1 evaluations an
      iteration. It converges for stiff and expansive steps where the fixed-point iteration
      diverges (h·|λ| ≫ 1), at a higher cost per iteration. (On numpy arrays, for the order
      test, the Jacobian is formed by central differences.)

    A step that does not converge is a failed computation: its output is NaN (a
    ``ValueError`` on numpy arrays), never the last iterate. As a network block (h = 1 by
    default in the families) the fixed-point iteration needs a small enough h: at
    initialisation on digits, ResNet-20's blocks converged at h = 0.3 and diverged at 0.5.

    The gradient (TensorFlow backend, ``gradient="implicit"``, the default) comes from the
    implicit function theorem, not from the iterations: for a cotangent g of y₁, the
    adjoint equation w = g + h·Jᵀw (J = ∂f/∂y at y₁) is solved by the same kind of
    iteration (fixed point, one VJP each; or restarted GMRES on VJPs), and then
    ∂L/∂y₀ = w, ∂L/∂θ = h·(∂f/∂θ)ᵀw; memory does not grow with the iterations. If the
    adjoint iteration does not converge the gradients are NaN. ``gradient="unrolled"``
    differentiates through the iterations instead, as does the solver form (the scheme as a
    fixed-grid solver, ``ODEBlock(field, solver="backward_euler", num_steps=n)``: inside the
    grid's ``while_loop`` TensorFlow cannot take a custom gradient that reads variables).
    Under the other Keras backends the step is the fixed-point iteration, differentiated
    through (``solver`` and ``gradient`` are TensorFlow's).

    While iterating, BatchNormalization in the field uses the batch's statistics but
    updates its moving statistics only at the final evaluation (once per batch).

    Args:
        iterations: the most iterations per step (default 50).
        tol: the iteration's tolerance (default 1e-4).
        gradient: "implicit" (default) or "unrolled".
        solver: "fixed_point" (default) or "newton".
        krylov: GMRES's Krylov dimension for "newton" (default 10).
    """

    order = 1
    num_fields = 1

    def __init__(self, iterations=50, tol=1e-4, gradient="implicit", solver="fixed_point", krylov=10):
        self.iterations = checks.positive_int("iterations", iterations)
        self.tol = checks.positive("tol", tol)
        self.gradient = checks.choice("gradient", gradient, GRADIENTS)
        self.solver = checks.choice("solver", solver, SOLVERS)
        self.krylov = checks.positive_int("krylov", krylov)

    def step(self, fields, t, y, h):
        # The solver form runs inside the fixed-grid solver's while_loop, where TensorFlow
        # cannot take a custom gradient that reads variables: differentiated through.
        return self._solve(fields[0], t + h, y, h, implicit=False)

    def block_step(self, fields, t, y, h, *, training=None, ctx=None):
        return self._solve(fields[0], t + h, y, h, implicit=self.gradient == "implicit")

    def _solve(self, field, t1, y0, h, *, implicit):
        newton = self.solver == "newton"
        if isinstance(y0, (np.ndarray, float, np.floating)):
            return _numpy_solve(field, t1, y0, h, self.iterations, self.tol, newton)
        if keras.backend.backend() == "tensorflow":
            return _tf_solve(field, t1, y0, h, self.iterations, self.tol, implicit, self.krylov if newton else 0)
        return _unrolled_solve(field, t1, y0, h, self.iterations, self.tol)


def _scaled_change(delta, y, tol):
    """sqrt(mean((Δ / (tol·(1 + |y|)))²)): at most 1 once an iteration has converged."""
    return np.sqrt(np.mean(np.square(delta / (tol * (1.0 + np.abs(y))))))


def _numpy_solve(field, t1, y0, h, iterations, tol, newton):
    """The iteration on numpy arrays (the order test): a ValueError when it does not converge.

    Newton here forms the Jacobian by central differences (the states of an order test are small).
    """
    y = np.asarray(y0, dtype=float)
    for _ in range(iterations):
        if newton:
            r = y - y0 - h * field(t1, y)
            n = y.size
            jac = np.empty((n, n))
            for i in range(n):
                e = np.zeros(n)
                e[i] = 1e-7 * (1.0 + abs(y.flat[i]))
                up = field(t1, y + e.reshape(y.shape)).ravel()
                down = field(t1, y - e.reshape(y.shape)).ravel()
                jac[:, i] = (up - down) / (2 * e[i])
            delta = np.linalg.solve(np.eye(n) - h * jac, -r.ravel()).reshape(y.shape)
            y_next = y + delta
        else:
            y_next = y0 + h * field(t1, y)
        change = _scaled_change(y_next - y, y_next, tol)
        y = y_next
        if change <= 1.0:
            return y0 + h * field(t1, y)
    raise ValueError(
        f"backward_euler: the {'Newton' if newton else 'fixed-point'} iteration did not converge in "
        f"iterations={iterations} at h={h!r} (last scaled change {change:.3g} > 1; tol={tol!r})."
        + (
            ""
            if newton
            else " The fixed-point iteration needs h times the field's Lipschitz constant below 1: "
            "solver='newton', a smaller h, or more iterations."
        )
    )


def _unrolled_solve(field, t1, y0, h, iterations, tol):
    """Backend-neutral: every iteration traced (differentiated through), converged entries frozen."""
    from keras import ops

    y, done = y0, None
    for _ in range(iterations):
        y_next = y0 + h * field(t1, y)
        change = ops.sqrt(ops.mean(ops.square((y_next - y) / (tol * (1.0 + ops.abs(y_next))))))
        y = y_next if done is None else ops.where(done, y, y_next)
        done = change <= 1.0 if done is None else ops.logical_or(done, change <= 1.0)
    out = y0 + h * field(t1, y)
    return ops.where(done, out, ops.full_like(out, math.nan))


def _tf_solve(field, t1, y0, h, iterations, tol, implicit, krylov):
    """``krylov`` > 0: Newton with GMRES(krylov) on finite-difference JVPs; 0: fixed-point."""
    import tensorflow as tf

    from odezoo.ode import gmres

    dtype = y0.dtype
    inf = tf.constant(np.inf, dtype)
    root_eps = float(np.sqrt(np.finfo(dtype.as_numpy_dtype).eps))

    def change(a, b):
        return tf.sqrt(tf.reduce_mean(tf.square((b - a) / (tol * (1.0 + tf.abs(b))))))

    def iterate(update, x0):
        """x <- update(x) until converged: (x, converged)."""

        def body(k, x, err):
            x_next = update(x)
            return k + 1, x_next, change(x, x_next)

        def running(k, x, err):
            return tf.logical_and(k < iterations, tf.logical_not(err <= 1.0))

        _, x, err = tf.while_loop(running, body, (0, x0, inf), maximum_iterations=iterations)
        return x, err <= 1.0

    def rms(x):
        return tf.sqrt(tf.reduce_mean(tf.square(x)))

    def newton_update(y0):
        def update(y):
            fy = field(t1, y)

            def matvec(v):  # (I − hJ)v, Jv by a forward difference (Knoll & Keyes 2004, eq. 13)
                eps = root_eps * (1.0 + rms(y)) / tf.maximum(rms(v), tf.constant(1e-30, dtype))
                return v - h * (field(t1, y + eps * v) - fy) / eps

            return y + gmres(matvec, y0 + h * fy - y, krylov)

        return update

    def forward(y0):
        with frozen_batchnorm_statistics([field]):
            update = newton_update(y0) if krylov else (lambda y: y0 + h * field(t1, y))
            y, converged = iterate(update, y0)
        y1 = y0 + h * field(t1, y)  # the evaluation that updates BatchNorm's moving statistics
        return tf.where(converged, y1, tf.constant(np.nan, dtype))

    if not implicit:
        return forward(y0)

    @tf.custom_gradient
    def solve(y0):
        y1 = forward(y0)

        def grad(g, variables=None):
            variables = list(variables or [])

            def vjp(w, wrt):
                with tf.GradientTape() as tape:
                    tape.watch(y1)
                    fy = field(t1, y1)
                return tape.gradient(fy, wrt, output_gradients=w, unconnected_gradients=tf.UnconnectedGradients.ZERO)

            with frozen_batchnorm_statistics([field]):
                if krylov:  # (I − hJᵀ)w = g by restarted GMRES: each pass corrects the residual
                    op = lambda v: v - h * vjp(v, y1)  # noqa: E731
                    w, converged = iterate(lambda w: w + gmres(op, g - op(w), krylov), tf.zeros_like(g))
                else:
                    w, converged = iterate(lambda w: g + h * vjp(w, y1), g)
                grads_v = vjp(h * w, variables) if variables else []
            nan = tf.constant(np.nan, dtype)
            w = tf.where(converged, w, nan)
            grads_v = [tf.where(converged, gv, tf.cast(nan, gv.dtype)) for gv in grads_v]
            return w, grads_v

        return y1, grad

    return solve(y0)
