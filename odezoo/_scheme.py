"""The Scheme base class, explicit Runge-Kutta tableaux and the block context.

A scheme advances a state by one step of size ``h`` of dy/dt = f(t, y). The
same object serves as a network block (each step owns fresh weights), as a
fixed-grid ODE solver (every field is the same f) and as the subject of an
order test. Nothing here imports TensorFlow or Keras: ``step`` uses only
arithmetic operators on whatever tensors the fields return, so a scheme runs on
numpy arrays, TF tensors and Keras tensors alike.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Sequence

from odezoo._errors import PluginError


@dataclasses.dataclass(frozen=True)
class BlockContext:
    """Where a network block sits; given to ``block_step`` and ``run_stage``.

    Attributes:
        block: index of the block within its stage (0-based).
        stage: index of the stage (0-based).
        stage_length: number of scheme blocks in the stage.
        global_block: index of the block over the whole network.
        total_blocks: number of scheme blocks in the network.
        seed: the network's seed (for stochastic depth / drop-path), or None.
        column: FractalNet's globally chosen column for this batch (an int
            scalar tensor, -1 meaning "local drop-path"), or None outside
            training / when the family does not choose one.
    """

    block: int = 0
    stage: int = 0
    stage_length: int = 1
    global_block: int = 0
    total_blocks: int = 1
    seed: int | None = None
    column: Any = None

    def replace(self, **changes) -> "BlockContext":
        return dataclasses.replace(self, **changes)


class Scheme:
    """A one-step (or two-state multistep) method for dy/dt = f(t, y).

    Subclasses declare:
        order: convergence order of :meth:`step` as an ODE solver.
        num_fields: distinct fields one step calls.
        state_size: 1, or 2 when the state is a pair (a history, or two halves).

    and implement :meth:`step`. Constructor keyword arguments are the scheme's
    options (``linear_multistep(p_L=0.8)``); the base accepts none.

    Each field is called as ``fields[i](t, y)`` and returns dy/dt at (t, y).
    """

    name: str = None  # set by register_scheme
    order: int = None
    num_fields: int = 1
    state_size: int = 1

    def __init__(self):
        pass

    # -- state plumbing ------------------------------------------------------
    def init(self, y0):
        """The state a stage starts from, given its input ``y0``."""
        return y0

    def output(self, state):
        """The output ``y`` carried by a state."""
        return state

    # -- the solver form ---------------------------------------------------------
    def step(self, fields: Sequence[Callable], t, state, h):
        """Advance ``state`` from ``t`` to ``t + h``: the consistent solver form."""
        raise NotImplementedError(f"{type(self).__name__} does not implement step().")

    # -- the network form (optional) ---------------------------------------------
    def build_block(self, block) -> None:
        """Create per-block trainable coefficients on ``block`` (a Keras layer).

        Called once when the owning :class:`odezoo.SchemeBlock` is built; the
        scheme instance is owned by that block, so it may keep references
        (``self.k = block.add_weight(...)``).
        """

    def block_step(self, fields, t, state, h, *, training=None, ctx: BlockContext = None):
        """One network block; defaults to :meth:`step`."""
        return self.step(fields, t, state, h)

    def run_stage(self, blocks, state, *, training=None, ctx: BlockContext = None):
        """Run a whole stage of :class:`odezoo.SchemeBlock` layers on ``state``.

        The default calls each block's :meth:`block_step` in turn. ``ctx`` is
        the stage's context; each block's own is ``block.context``.
        """
        column = None if ctx is None else ctx.column
        for block in blocks:
            state = block.advance(state, training=training, column=column)
        return state

    def stage_supports_jit(self, blocks, input_shape) -> bool:
        """Whether a training step holding this stage may be compiled by XLA.

        :class:`odezoo.SchemeStage` reports the answer as its ``supports_jit``,
        so Keras's ``jit_compile`` and ``odezoo train`` leave the step to
        TensorFlow's graph executor when it is False (Keras warns when
        ``jit_compile=True`` was asked for). ``input_shape`` is the stage's
        built input shape. The default, True, suits a stage that runs its
        blocks in straight-line code; RevNet's ``backward="loop"`` answers False
        on CPU, where XLA's code for a convolution's gradient inside a
        ``while_loop`` is an order of magnitude slower (docs/ode.md, "Everything
        solves compiled").
        """
        return True

    def test_problem(self):
        """An order-test problem for schemes that y' = Ay + b·cos t does not fit.

        Returns None (use the default linear problem) or a dict with keys
        ``fields`` (a list of ``num_fields`` callables on numpy float64 states),
        ``y0`` (the initial state, a pair when state_size is 2), ``t0``, ``t1``
        and ``exact`` (a callable t -> state).
        """
        return None

    def block_fields(self, channels: int) -> list[int]:
        """Widths of the fields one network block needs, given the block's channels."""
        return [channels] * self.num_fields

    # -- introspection -----------------------------------------------------------
    @classmethod
    def option_names(cls) -> list[str]:
        """The scheme's options: its constructor's keyword arguments."""
        params = inspect.signature(cls.__init__).parameters
        return [p.name for p in list(params.values())[1:] if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]

    @classmethod
    def option_defaults(cls) -> dict:
        params = inspect.signature(cls.__init__).parameters
        return {
            p.name: p.default
            for p in list(params.values())[1:]
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is not p.empty
        }


class ExplicitRungeKutta(Scheme):
    """An explicit Runge-Kutta method from its Butcher tableau.

    Subclasses set class attributes ``A`` (strictly lower-triangular, s×s, as
    nested sequences; rows may be ragged, missing entries are 0), ``b`` (s
    weights), optionally ``c`` (defaults to the row sums of A) and ``order``.
    ``num_fields`` defaults to s, one field per stage, so a network block gets
    one set of weights per stage and a solver passes the same f s times::

        @odezoo.register_scheme("heun")
        class Heun(odezoo.ExplicitRungeKutta):
            order = 2
            A = [[], [1]]
            b = [1/2, 1/2]

    The tableau is checked when the class is created (explicit, consistent
    lengths, weights summing to 1).

    **Embedded pairs.** A tableau that also sets ``b_hat`` (the s weights of an
    embedded solution of order ``error_order``) is an adaptive solver besides:
    ``ODEBlock(field, solver=name)`` and ``odeint(..., solver=name)`` without
    ``num_steps``/``step_size`` solve with odezoo's adaptive integrator on this
    pair (error estimate h·Σ (b_i - b_hat_i) k_i), and with either of them on a
    fixed grid as before. Optional dense output for solution times inside a step:

    * ``dense``: s rows of polynomial coefficients, the continuous weights
      b_i(θ) = Σ_k dense[i][k]·θ^(k+1), so y(t + θh) = y + h·Σ b_i(θ) k_i
      (b_i(1) must equal b_i);
    * ``dense_shampine``: for a 5(4) pair, the s weights of Shampine's
      continuous extension as ``dopri5.f`` writes it (``contd5``);
    * neither: the cubic Hermite interpolant through (y, f) at both ends of
      the step (order 3: exact for the pair's order when that is at most 3;
      for higher orders it limits the accuracy at times inside a step, not
      at the steps themselves).

    * ``step_to_times = True`` instead: no interpolation; a step that would pass
      a solution time is shortened to end on it (for a high-order pair whose own
      continuous extension needs extra stages, where the cubic Hermite would lose
      accuracy).

    **A second estimate.** A pair may carry a second, lower-order embedded solution
    ``b_hat_low`` and combine the two scaled RMS error norms in the static method
    ``combine_errors(err, err_low)`` (arithmetic on scalar tensors; ``**`` allowed),
    as Hairer's dop853 does; ``estimate_order`` then says how the combined ratio
    scales with h (default ``error_order + 1``), which the step-size controllers use.

    Entries may be ``fractions.Fraction``: the error weights b - b_hat are then
    formed exactly before rounding.
    """

    A: Sequence[Sequence[float]] = None
    b: Sequence[float] = None
    c: Sequence[float] | None = None
    b_hat: Sequence[float] | None = None
    error_order: int | None = None
    dense: Sequence[Sequence[float]] | None = None
    dense_shampine: Sequence[float] | None = None
    step_to_times: bool = False
    b_hat_low: Sequence[float] | None = None
    estimate_order: int | None = None
    combine_errors = None  # a staticmethod (err, err_low) -> err, with b_hat_low

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("A") is None and cls.__dict__.get("b") is None:
            return  # an intermediate base class
        if cls.A is None or cls.b is None:
            raise PluginError(f"{cls.__qualname__}: an ExplicitRungeKutta needs both `A` and `b`.")
        s = len(cls.b)
        if len(cls.A) != s:
            raise PluginError(f"{cls.__qualname__}: A has {len(cls.A)} rows but b has {s} weights; they must match.")
        rows = []
        for i, row in enumerate(cls.A):
            row = list(row) + [0] * (s - len(row))
            if len(row) > s or any(row[j] != 0 for j in range(i, s)):
                raise PluginError(
                    f"{cls.__qualname__}: A must be strictly lower triangular (explicit); "
                    f"row {i} is {list(cls.A[i])!r}."
                )
            rows.append([float(v) for v in row])
        c = [sum(r) for r in rows] if cls.c is None else [float(v) for v in cls.c]
        if len(c) != s:
            raise PluginError(f"{cls.__qualname__}: c has {len(c)} entries, expected {s}.")
        if abs(sum(float(v) for v in cls.b) - 1.0) > 1e-12:
            raise PluginError(
                f"{cls.__qualname__}: the weights b sum to {sum(map(float, cls.b))!r}, not 1 "
                "(the method would be inconsistent)."
            )
        cls._A, cls._b, cls._c = rows, [float(v) for v in cls.b], c
        cls._check_embedded(s)
        # the stages a step uses: an embedded FSAL pair's last stage has b = 0 and only serves
        # the adaptive solver's error estimate, so a network block does not get a field for it
        cls._step_stages = max(i for i, v in enumerate(cls._b) if v != 0.0) + 1 if cls.b_hat is not None else s
        if "num_fields" not in cls.__dict__:
            cls.num_fields = cls._step_stages

    @property
    def stages(self) -> int:
        """s, the tableau's number of stages (an embedded FSAL pair's error-only last stage included)."""
        return len(self._b)

    @classmethod
    def _check_embedded(cls, s):
        name = cls.__qualname__
        extras = ("error_order", "dense", "dense_shampine", "b_hat_low", "estimate_order", "combine_errors")
        if cls.b_hat is None:
            given = [k for k in extras if getattr(cls, k) is not None]
            given += ["step_to_times"] if cls.step_to_times else []
            if given:
                raise PluginError(f"{name}: {', '.join(given)} without `b_hat` (the embedded weights).")
            return
        if len(cls.b_hat) != s:
            raise PluginError(f"{name}: b_hat has {len(cls.b_hat)} weights, expected {s}.")
        if abs(sum(float(v) for v in cls.b_hat) - 1.0) > 1e-12:
            raise PluginError(f"{name}: the embedded weights b_hat sum to {sum(map(float, cls.b_hat))!r}, not 1.")
        order = getattr(cls, "order", None)
        if not (isinstance(cls.error_order, int) and isinstance(order, int) and 1 <= cls.error_order < order + 1):
            raise PluginError(
                f"{name}: an embedded pair needs integer `order` and `error_order` with "
                f"1 <= error_order <= order; got order={order!r}, error_order={cls.error_order!r}."
            )
        if cls.dense is not None and cls.dense_shampine is not None:
            raise PluginError(f"{name}: give `dense` or `dense_shampine`, not both.")
        if cls.dense is not None:
            if len(cls.dense) != s or len({len(r) for r in cls.dense}) != 1:
                raise PluginError(f"{name}: dense needs {s} rows of one length (polynomial coefficients).")
            for i, (row, bi) in enumerate(zip(cls.dense, cls._b)):
                if abs(sum(float(v) for v in row) - bi) > 1e-10:
                    total = sum(map(float, row))
                    raise PluginError(f"{name}: dense row {i} gives b_{i}(1) = {total!r}, not b_{i} = {bi!r}.")
        if cls.dense_shampine is not None and len(cls.dense_shampine) != s:
            raise PluginError(f"{name}: dense_shampine has {len(cls.dense_shampine)} weights, expected {s}.")
        if cls.step_to_times and (cls.dense is not None or cls.dense_shampine is not None):
            raise PluginError(f"{name}: step_to_times with dense output: choose one way to reach solution times.")
        if (cls.b_hat_low is None) != (cls.combine_errors is None):
            raise PluginError(f"{name}: `b_hat_low` and `combine_errors` go together (a second estimate and its use).")
        if cls.b_hat_low is not None:
            if len(cls.b_hat_low) != s:
                raise PluginError(f"{name}: b_hat_low has {len(cls.b_hat_low)} weights, expected {s}.")
            if abs(sum(float(v) for v in cls.b_hat_low) - 1.0) > 1e-12:
                total = sum(map(float, cls.b_hat_low))
                raise PluginError(f"{name}: the embedded weights b_hat_low sum to {total!r}, not 1.")
            if not callable(cls.combine_errors):
                raise PluginError(f"{name}: combine_errors must be a static method (err, err_low) -> err.")
        if cls.estimate_order is not None and not (isinstance(cls.estimate_order, int) and cls.estimate_order >= 1):
            raise PluginError(f"{name}: estimate_order must be a positive integer; got {cls.estimate_order!r}.")

    @classmethod
    def is_embedded(cls) -> bool:
        """True when the tableau carries embedded weights (an adaptive solver besides)."""
        return cls.b_hat is not None

    @classmethod
    def coefficients(cls) -> dict:
        """The tableau as floats: ``A`` (s padded rows), ``b``, ``c``, and for an embedded pair
        ``b_hat``, ``error`` (b - b_hat, formed exactly), ``dense``, ``dense_shampine``,
        ``order``, ``error_order``, ``estimate_order``, ``step_to_times``, ``error_low``
        (b - b_hat_low, or None) and ``fsal`` (the last row of A is b, c_s = 1, b_s = 0).
        :func:`odezoo.ode.tableau.tableau_of` turns it into the integrator's data."""
        from fractions import Fraction

        s = len(cls._b)
        out = dict(name=getattr(cls, "name", None) or cls.__name__, A=[list(r) for r in cls._A], b=list(cls._b),
                   c=list(cls._c), order=getattr(cls, "order", None))  # fmt: skip
        if cls.is_embedded():
            out.update(
                b_hat=[float(v) for v in cls.b_hat],
                error=[float(Fraction(b) - Fraction(bh)) for b, bh in zip(cls.b, cls.b_hat)],
                dense=None if cls.dense is None else [[float(v) for v in r] for r in cls.dense],
                dense_shampine=None if cls.dense_shampine is None else [float(v) for v in cls.dense_shampine],
                error_order=cls.error_order,
                estimate_order=cls.estimate_order or cls.error_order + 1,
                step_to_times=bool(cls.step_to_times),
                error_low=None
                if cls.b_hat_low is None
                else [float(Fraction(b) - Fraction(bh)) for b, bh in zip(cls.b, cls.b_hat_low)],
                fsal=cls._c[-1] == 1.0 and cls._A[-1][: s - 1] == cls._b[: s - 1] and cls._b[-1] == 0.0,
            )
        return out

    def step(self, fields, t, y, h):
        s = self._step_stages
        per_stage = [fields[i % len(fields)] for i in range(s)] if len(fields) != s else fields
        ks = []
        for i in range(s):
            yi = y
            for j in range(i):
                a = self._A[i][j]
                if a != 0.0:
                    yi = yi + (h * a) * ks[j]
            ks.append(per_stage[i](t + self._c[i] * h, yi))
        incr = None
        for bi, k in zip(self._b, ks):
            if bi != 0.0:
                term = bi * k
                incr = term if incr is None else incr + term
        return y + h * incr


class DiagonallyImplicitRungeKutta(Scheme):
    """An ESDIRK pair: a diagonally implicit Runge-Kutta method with an explicit first stage,
    one diagonal entry γ for every other stage, and embedded weights for step control.

    Subclasses set ``A`` (s rows, lower triangular *including* the diagonal: row 0 is
    ``[0]``, row i ends in γ), ``b``, ``b_hat`` (s weights each), ``c`` (optional: the row
    sums of A), ``order`` and ``error_order``. Stage i solves
    Y_i = y + h·Σ_{j<i} a_ij k_j + hγ·f(t + c_i h, Y_i) by Newton's method
    (:mod:`odezoo.ode.newton`), so the pair is an adaptive solver for stiff problems:
    ``odeint(..., solver=name)``, ``ODEBlock(field, solver=name, rtol=..., atol=...)``,
    with the adjoint (its backward solve implicit too), the checkpoint gradient, guards
    and the controllers. Solution times: with ``step_to_times = True`` (the default) a step
    that would pass one is shortened to end on it; with False they come from the cubic
    Hermite interpolant, of order 3, whose error inside the long steps a stiff solve takes
    can exceed the solver's own (kvaerno5 on Robertson: 44 tolerance units at rtol 1e-4
    against 0.3 at the steps' ends; benchmarks/ode/stiff.md). A stiffly accurate pair (last
    row of A equal to b, c_s = 1) reuses its last stage as the next step's first.

    Optional: ``predictor`` (for each stage i >= 1, i weights α_ij summing to 1: Newton
    starts from the guess k_i ≈ Σ_j α_ij k_j for the stage's derivative; default: the
    previous stage's k), and the
    Newton settings ``linear_solver`` ("auto", "rows", "full", "krylov";
    :mod:`odezoo.ode.newton` says when "auto" picks each), ``newton_kappa`` (the
    iteration stops when its correction, in units of the error tolerance, is below it;
    default 0.01), ``newton_max_iterations`` (default 10) and ``krylov`` (GMRES's Krylov
    dimension). A stage whose iteration diverges or does not converge rejects the step
    and halves it; when that drives the step below rounding the solve fails with its own
    status ("newton"). No fixed grid and no network block: the pair is an adaptive solver
    only (``backward_euler`` is the implicit network block).
    """

    A: Sequence[Sequence[float]] = None
    b: Sequence[float] = None
    b_hat: Sequence[float] = None
    c: Sequence[float] | None = None
    error_order: int | None = None
    predictor: Sequence[Sequence[float]] | None = None
    step_to_times: bool = True
    linear_solver: str = "auto"
    newton_kappa: float = 1e-2
    newton_max_iterations: int = 10
    krylov: int = 10

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("A") is None and cls.__dict__.get("b") is None:
            return  # an intermediate base class
        name = cls.__qualname__
        if cls.A is None or cls.b is None or cls.b_hat is None:
            raise PluginError(f"{name}: a DiagonallyImplicitRungeKutta needs `A`, `b` and `b_hat`.")
        s = len(cls.b)
        if len(cls.A) != s or len(cls.b_hat) != s or s < 2:
            raise PluginError(
                f"{name}: A has {len(cls.A)} rows, b {s} and b_hat {len(cls.b_hat)} weights; "
                "they must match (at least 2 stages)."
            )
        rows = []
        for i, row in enumerate(cls.A):
            row = [float(v) for v in row] + [0.0] * (s - len(row))
            if len(row) > s or any(row[j] != 0.0 for j in range(i + 1, s)):
                raise PluginError(f"{name}: A must be lower triangular; row {i} is {list(cls.A[i])!r}.")
            rows.append(row)
        gamma = rows[1][1]
        if rows[0][0] != 0.0 or not gamma > 0.0 or any(rows[i][i] != gamma for i in range(1, s)):
            diagonal = [rows[i][i] for i in range(s)]
            raise PluginError(
                f"{name}: an ESDIRK has an explicit first stage (A[0][0] = 0) and one positive diagonal "
                f"entry γ for the others; the diagonal is {diagonal!r}."
            )
        c = [sum(r) for r in rows] if cls.c is None else [float(v) for v in cls.c]
        if len(c) != s:
            raise PluginError(f"{name}: c has {len(c)} entries, expected {s}.")
        for what, weights in (("b", cls.b), ("b_hat", cls.b_hat)):
            if abs(sum(float(v) for v in weights) - 1.0) > 1e-10:
                raise PluginError(f"{name}: the weights {what} sum to {sum(map(float, weights))!r}, not 1.")
        order = getattr(cls, "order", None)
        if not (isinstance(cls.error_order, int) and isinstance(order, int) and 1 <= cls.error_order <= order):
            raise PluginError(
                f"{name}: an ESDIRK pair needs integer `order` and `error_order` with 1 <= error_order <= order; "
                f"got order={order!r}, error_order={cls.error_order!r}."
            )
        if cls.predictor is not None and (
            len(cls.predictor) != s - 1 or any(len(r) != i + 1 for i, r in enumerate(cls.predictor))
        ):
            raise PluginError(f"{name}: predictor needs {s - 1} rows, row i (for stage i + 1) with i + 1 weights.")
        if cls.predictor is not None and any(abs(sum(map(float, r)) - 1.0) > 1e-10 for r in cls.predictor):
            raise PluginError(f"{name}: each predictor row must sum to 1 (a guess of the stage's derivative).")
        if cls.linear_solver not in ("auto", "rows", "full", "krylov"):
            raise PluginError(
                f"{name}: linear_solver={cls.linear_solver!r}; choose 'auto', 'rows', 'full' or 'krylov'."
            )
        if not (0.0 < float(cls.newton_kappa) < 1.0) or int(cls.newton_max_iterations) < 1 or int(cls.krylov) < 1:
            raise PluginError(
                f"{name}: newton_kappa must lie in (0, 1) and newton_max_iterations, krylov be >= 1; got "
                f"{cls.newton_kappa!r}, {cls.newton_max_iterations!r}, {cls.krylov!r}."
            )
        cls._A, cls._b, cls._c, cls._gamma = rows, [float(v) for v in cls.b], c, gamma
        cls.num_fields = s

    @classmethod
    def is_embedded(cls) -> bool:
        """True: every ESDIRK pair here carries embedded weights (an adaptive solver)."""
        return cls.b is not None

    @classmethod
    def is_implicit(cls) -> bool:
        return True

    @classmethod
    def coefficients(cls) -> dict:
        """The tableau as floats, with the keys of :meth:`ExplicitRungeKutta.coefficients` (``A``
        with its diagonal), plus ``implicit`` (True), ``gamma``, ``predictor`` and ``newton``
        (the Newton settings)."""
        from fractions import Fraction

        s = len(cls._b)
        return dict(
            name=getattr(cls, "name", None) or cls.__name__,
            A=[list(r) for r in cls._A],
            b=list(cls._b),
            c=list(cls._c),
            order=cls.order,
            b_hat=[float(v) for v in cls.b_hat],
            error=[float(Fraction(b) - Fraction(bh)) for b, bh in zip(cls.b, cls.b_hat)],
            dense=None,
            dense_shampine=None,
            error_order=cls.error_order,
            estimate_order=cls.error_order + 1,
            step_to_times=bool(cls.step_to_times),
            error_low=None,
            fsal=cls._c[-1] == 1.0 and cls._A[-1] == cls._b,
            implicit=True,
            gamma=cls._gamma,
            predictor=None if cls.predictor is None else [[float(v) for v in r] for r in cls.predictor],
            newton=dict(
                linear_solver=cls.linear_solver,
                kappa=float(cls.newton_kappa),
                max_iterations=int(cls.newton_max_iterations),
                krylov=int(cls.krylov),
            ),
            stages=s,
        )

    def step(self, fields, t, y, h):
        raise NotImplementedError(
            f"{type(self).__name__} is an implicit adaptive solver (ESDIRK): solve with tolerances "
            "(rtol, atol), not on a fixed grid or as a network block; the implicit network block is "
            "'backward_euler'."
        )
