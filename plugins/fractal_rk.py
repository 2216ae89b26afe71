"""FractalNet (Larsson, Maire & Shakhnarovich, ICLR 2017) read as a Runge-Kutta method."""

import keras
from keras import ops

import odezoo
from odezoo import checks

ODEZOO_PLUGIN_API = 1


@odezoo.register_scheme("fractal_rk")
class FractalRK(odezoo.Scheme):
    """Heun's method as the solver form; the fractal expansion as the network form.

    Write an Euler unit as f_1(z) = z + h·F(t, z). Heun's method (order 2) is

        y_{n+1} = y_n + (h/2)·[F(y_n) + F(y_n + h·F(y_n))] = ½·[y_n + f_1(f_1(y_n))],

    the mean join of the two-unit column f_1∘f_1 with the identity path. That is
    :meth:`step` (two fields; ``num_fields = 2``).

    The network form is FractalNet's expansion rule with a mean join,

        f_{C+1}(z) = join(f_C(f_C(z)), f_1(z)),

    whose C columns have 1, 2, ..., 2^(C−1) units and 2^C − 1 fields in all
    (``block_fields``). For C = 2 it joins f_1∘f_1 with f_1 instead of the
    identity, adding (h/2)·F(z): the same two stages as Heun with weights
    (1, ½) in place of (½, ½) — like PolyNet's and LM-ResNet's free forms, the
    paper's network is not itself a consistent solver.

    Drop-path (training only): with ``ctx.column`` = c ≥ 0 (global drop-path,
    chosen once per batch by the family) every join keeps only the path of
    column c (column 0 is the shallowest); otherwise each join drops each of its
    inputs with probability ``local_drop``, keeping at least one.

    Args:
        columns: C, the number of columns (default 2).
        local_drop: local drop-path probability per join input (default 0.15).
    """

    order = 2
    num_fields = 2

    def __init__(self, columns=2, local_drop=0.15):
        columns = checks.integer("columns", columns, minimum=1, maximum=6)
        if not checks.is_real(local_drop) or not 0.0 <= local_drop < 1.0:
            raise checks.bad_value("local_drop", local_drop, "a float in [0, 1)")
        self.columns = columns
        self.local_drop = float(local_drop)

    def step(self, fields, t, y, h):
        k1 = fields[0](t, y)
        k2 = fields[1](t + h, y + h * k1)
        return y + (0.5 * h) * (k1 + k2)

    def block_fields(self, channels):
        return [channels] * (2**self.columns - 1)

    def build_block(self, block):
        seed = None if block.context.seed is None else block.context.seed + 7919 * block.context.global_block
        self.seed_generator = keras.random.SeedGenerator(seed)

    # -- network form ---------------------------------------------------------
    def block_step(self, fields, t, y, h, *, training=None, ctx=None):
        column = None if ctx is None else ctx.column
        fields = list(fields)
        return self._fractal(self.columns, fields, t, y, h, training, column, offset=0)

    def _fractal(self, c, fields, t, z, h, training, column, offset):
        """f_c(z); consumes fields from the front of ``fields``; columns offset..offset+c-1."""
        if c == 1:
            return z + h * fields.pop(0)(t, z)
        deep = self._fractal(c - 1, fields, t, z, h, training, column, offset + 1)
        deep = self._fractal(c - 1, fields, t, deep, h, training, column, offset + 1)
        shallow = z + h * fields.pop(0)(t, z)
        return self._join(deep, shallow, training, column, offset)

    def _join(self, deep, shallow, training, column, offset):
        if not training:
            return 0.5 * (deep + shallow)
        u = keras.random.uniform((3,), seed=self.seed_generator)
        keep_deep = ops.cast(u[0] >= self.local_drop, deep.dtype)
        keep_shallow = ops.cast(u[1] >= self.local_drop, deep.dtype)
        none = (1.0 - keep_deep) * (1.0 - keep_shallow)  # both dropped: keep one at random
        pick_deep = ops.cast(u[2] < 0.5, deep.dtype)
        keep_deep = keep_deep + none * pick_deep
        keep_shallow = keep_shallow + none * (1.0 - pick_deep)
        if column is not None:
            col = ops.cast(column, "int32")
            is_global = ops.cast(col >= 0, deep.dtype)
            g_shallow = ops.cast(ops.equal(col, offset), deep.dtype)
            g_deep = ops.cast(col > offset, deep.dtype)
            keep_deep = is_global * g_deep + (1.0 - is_global) * keep_deep
            keep_shallow = is_global * g_shallow + (1.0 - is_global) * keep_shallow
        total = ops.maximum(keep_deep + keep_shallow, 1.0)
        return (keep_deep * deep + keep_shallow * shallow) / total
