"""LM-ResNet (Lu, Zhong, Li & Dong, ICML 2018): a linear two-step method."""

import keras
from keras import ops

import odezoo
from odezoo import checks

ODEZOO_PLUGIN_API = 1


@odezoo.register_scheme("linear_multistep")
class LinearMultistep(odezoo.Scheme):
    """A consistent linear two-step method; LM-ResNet's block as the network form. Order 1.

    Solver form, for a fixed k with |k| < 1::

        u_{n+1} = (1 − k)·u_n + k·u_{n−1} + (1 + k)·h·f(t_n, u_n).

    Its characteristic polynomials are ρ(ζ) = ζ² − (1 − k)ζ − k = (ζ − 1)(ζ + k)
    and σ(ζ) = (1 + k)ζ: ρ(1) = 0 and ρ'(1) = 1 + k = σ(1), so it is
    consistent; the second root −k lies inside the unit circle, so it is
    zero-stable; the next error constant is (1 − k)/2 ≠ 0, so it has order 1.
    The state is (u_n, u_{n−1}); ``init`` starts from (y0, y0), which makes the
    first step y0 + (1 + k)·h·f: an O(h) start that keeps the order at 1.

    Network form (Lu et al. 2018), with a trainable k_n per block (but a stage's first) made in
    :meth:`build_block` and initialised uniformly in [−0.1, 0] as in the paper::

        u_{n+1} = (1 − k_n)·u_n + k_n·u_{n−1} + h·f(u_n),

    the first block of each stage taking a forward-Euler step (no u_{n−1} yet).
    Dropping the (1 + k_n) factor is what makes it the paper's free form rather
    than a consistent solver. With ``p_L`` set, the stochastic-dynamics variant
    multiplies f(u_n) by η_n ~ Bernoulli(p_n) per sample in training and by p_n
    at inference, with survival p_n falling linearly over the network's blocks
    from 1 to p_L (the paper uses 0.8 for depth 56 and 0.5 for 110).

    Args:
        k: the fixed k of the solver form (default −0.05), |k| < 1.
        p_L: survival probability of the last block, or None (default) for no
            stochastic depth.
    """

    order, num_fields, state_size = 1, 1, 2

    def __init__(self, k=-0.05, p_L=None):
        if not checks.is_real(k) or not -1.0 < k < 1.0:
            raise checks.bad_value("k", k, "a float with |k| < 1 (zero-stability)")
        checks.real("p_L", p_L, exclusive_minimum=0.0, maximum=1.0, allow_none=True, allowed="a float in (0, 1]")
        self.k = float(k)
        self.p_L = None if p_L is None else float(p_L)

    def init(self, y0):
        return (y0, y0)

    def output(self, state):
        return state[0]

    def step(self, fields, t, state, h):
        u, u_prev = state
        k = self.k
        return ((1.0 - k) * u + k * u_prev + ((1.0 + k) * h) * fields[0](t, u), u)

    # -- network form ---------------------------------------------------------
    def build_block(self, block):
        if block.context.block > 0:  # a stage's first block is an Euler step: no k_n
            self.k_n = block.add_weight(
                shape=(),
                name="k",
                trainable=True,
                initializer=keras.initializers.RandomUniform(-0.1, 0.0, seed=block.context.seed),
            )
        if self.p_L is not None:
            ctx = block.context
            self.survival = 1.0 - (ctx.global_block + 1) / ctx.total_blocks * (1.0 - self.p_L)
            seed = None if ctx.seed is None else ctx.seed + 104729 * ctx.global_block
            self.seed_generator = keras.random.SeedGenerator(seed)

    def block_step(self, fields, t, state, h, *, training=None, ctx=None):
        u, u_prev = state
        f = fields[0](t, u)
        if self.p_L is not None:
            if training:
                shape = (ops.shape(f)[0],) + (1,) * (len(f.shape) - 1)
                eta = keras.random.uniform(shape, seed=self.seed_generator) < self.survival
                f = f * ops.cast(eta, f.dtype)
            else:
                f = f * self.survival
        if ctx is not None and ctx.block == 0:
            return (u + h * f, u)
        k = ops.cast(self.k_n, u.dtype)
        return ((1.0 - k) * u + k * u_prev + h * f, u)
