"""ODE-RNN and Neural CDE layers and their classifiers (TensorFlow; imported by the builders when called).

Both take the dict ``{"values" (N, T, C), "times" (N, T), "mask" (N, T, C)}``
(:meth:`odezoo.data.Series.inputs`) and first *compact* each sample: its steps
with at least one observed entry move to the front, in order, and the rest
(padding, and steps whose every entry was dropped) to the back, where they
take part in nothing. A value whose mask is 0 is never read. So neither
padding, nor an unobserved entry, nor a wholly unobserved step changes a
result (tests/test_timeseries.py checks it to 1e-6). A sample with no
observation at all is an error (an InvalidArgumentError naming it), not a
prediction from nothing.

Both solve with odezoo's adaptive integrator through the public
:func:`odezoo.ode.solve_flat` (any embedded pair). ODE-RNN flows each row
over its own gap between observations by a change of variable (the batch
shares s in [0, 1], row b's field is scaled by its own gap); the Neural CDE
follows the path's index, whose knots every row shares.
"""

from __future__ import annotations

import keras
import tensorflow as tf

import odezoo.ode as ode
from odezoo import checks

_serializable = keras.saving.register_keras_serializable(package="odezoo")
INTERPOLATIONS = ("hermite", "linear")
GRADIENTS = ("auto", "backprop")  # "auto" is "backprop" here


def compact(inputs):
    """``(values, times, mask, lengths)`` with each row's observed steps first (module docstring).

    ``values`` is 0 wherever ``mask`` is 0 (a NaN there never propagates); ``lengths``
    (N,) int32 counts each row's steps with an observation; past it a row's time stays
    at its last observed one.
    """
    values = tf.cast(tf.convert_to_tensor(inputs["values"]), tf.float32)  # float64 numpy arrays too
    times = tf.cast(tf.convert_to_tensor(inputs["times"]), tf.float32)
    mask = tf.cast(tf.convert_to_tensor(inputs["mask"]) > 0, tf.float32)
    steps = tf.shape(values)[1]
    observed = tf.reduce_max(mask, axis=-1) > 0  # (N, T)
    rank = tf.where(observed, 0, steps) + tf.range(steps)[None, :]  # observed first, stable
    order = tf.argsort(rank, axis=1, stable=True)
    mask = tf.gather(mask, order, batch_dims=1)
    values = tf.where(mask > 0, tf.gather(values, order, batch_dims=1), 0.0)
    lengths = tf.reduce_sum(tf.cast(observed, tf.int32), axis=1)
    empty = tf.debugging.assert_positive(
        lengths, message="odezoo: a sample has no observations (its mask is 0 everywhere); rows' observation counts"
    )
    with tf.control_dependencies([empty]):
        lengths = tf.identity(lengths)
    times = tf.gather(times, order, batch_dims=1)
    last = tf.gather(times, tf.maximum(lengths - 1, 0), batch_dims=1)
    inside = tf.range(steps)[None, :] < lengths[:, None]
    times = tf.where(inside, times, last[:, None])
    return values, times, mask, lengths


class _Solving(ode.SolverStatus, keras.layers.Layer):
    """A layer that solves ODEs with odezoo's integrator: options, status variables, one solve helper."""

    def __init__(self, *, solver="dopri5", rtol=1e-3, atol=1e-4, max_steps=1000, gradient="auto", **kwargs):
        # the solves sit inside a loop over the observations (or the path's segments), where
        # TensorFlow cannot differentiate the adjoint's (or the checkpoint's) custom gradient
        if gradient not in GRADIENTS:
            raise checks.bad_value("gradient", gradient, f"{GRADIENTS} (backprop through the solver's steps)")
        super().__init__(**kwargs)
        # no XLA: XLA's backprop through the loop over observations preallocates every inner
        # solve's max_steps stages for every observation (53 GiB for a Neural CDE on
        # JapaneseVowels); TensorFlow's graph executor keeps only the steps taken
        self.supports_jit = False
        solver = ode.check_solver(solver)
        if solver != "dopri5" and ode.embedded_pair(solver) is None:
            raise checks.bad_value("solver", solver, "an embedded pair on odezoo's integrator ('dopri5', 'tsit5', ...)")
        ode.check_options(solver, rtol=rtol, atol=atol, num_steps=None, step_size=None, first_step=None,
                          max_steps=max_steps)  # fmt: skip
        self.solver, self.rtol, self.atol, self.max_steps = solver, rtol, atol, max_steps
        self.gradient = gradient
        self._resolved = ode.resolve_gradient(solver, "backprop")

    def _options(self):
        tableau = ode.DOPRI5 if self.solver == "dopri5" else ode.tableau_of(ode.embedded_pair(self.solver))
        return dict(rtol=self.rtol, atol=self.atol, first_step=None, max_steps=self.max_steps, tableau=tableau)

    def _solve(self, ode_fn, y0, constants):
        """y(1) of ``dy/ds = ode_fn(s, y, **constants)`` from y(0) = ``y0``; counts into the status."""
        on_forward, on_backward = self.status_hooks(accumulate=True)
        outs, _ = ode.solve_flat(
            ode_fn,
            y0,
            {k: None for k in constants},
            tf.constant(0.0),
            [y0],
            tf.constant([1.0]),
            [constants[k] for k in sorted(constants)],  # tf.nest's order of a dict
            options=self._options(),
            gradient=self._resolved,
            on_forward=on_forward,
            on_backward=on_backward,
        )
        return outs[0][-1]

    def _reset(self):
        return [self.nfe_forward.assign(0), self.nfe_backward.assign(0), self.solver_status.assign([0, 0])]

    def get_config(self):
        config = super().get_config()
        config.update(
            solver=self.solver, rtol=self.rtol, atol=self.atol, max_steps=self.max_steps, gradient=self.gradient
        )
        return config


@_serializable
class ODERNN(_Solving):
    """ODE-RNN (Rubanova, Chen & Duvenaud, NeurIPS 2019): a GRU whose state flows by an ODE between observations.

    At each observed step k (compacted, :func:`compact`): h ← ODESolve(f, h, from the
    previous observation's time to t_k), then h ← GRU([x_k·m_k, m_k], h) (values and
    mask in, so a partly observed step says which channels it saw). f is an MLP of h
    (``field_units``, tanh). Returns the state after the last observation, (N, units).

    Gradients: backprop through the solver's steps ("auto" = "backprop"), the exact gradient
    of the discrete solves; the adjoint's custom gradient cannot be differentiated inside
    TensorFlow's loop over observations.
    """

    def __init__(self, units=32, field_units=32, **kwargs):
        super().__init__(**kwargs)
        self.units = checks.positive_int("units", units)
        self.field_units = checks.positive_int("field_units", field_units)
        self.cell = keras.layers.GRUCell(self.units, name="gru")
        self.f_hidden = keras.layers.Dense(self.field_units, activation="tanh", name="field_hidden")
        self.f_out = keras.layers.Dense(self.units, name="field_out")

    def build(self, input_shape):
        channels = input_shape["values"][-1]
        self.cell.build((None, 2 * channels))
        self.f_hidden.build((None, self.units))
        self.f_out.build((None, self.field_units))
        self.add_status_weights(track_steps=False)
        super().build(input_shape)

    def _field(self, s, h, span):
        return span[:, None] * self.f_out(self.f_hidden(h))

    def call(self, inputs):
        values, times, mask, lengths = compact(inputs)
        batch, steps = tf.shape(values)[0], tf.shape(values)[1]
        with tf.control_dependencies(self._reset()):
            h = tf.zeros([batch, self.units])
        tau = times[:, 0]

        def body(k, h, tau):
            seen = k < lengths  # (N,)
            t_k = times[:, k]
            span = tf.where(seen, t_k - tau, 0.0)
            h_flow = self._solve(self._field, h, {"span": span})
            x = tf.concat([values[:, k], mask[:, k]], axis=-1)
            h_new, _ = self.cell(x, [h_flow])
            return k + 1, tf.where(seen[:, None], h_new, h), tf.where(seen, t_k, tau)

        _, h, _ = tf.while_loop(
            lambda k, h, tau: k < tf.reduce_max(lengths), body, (tf.constant(0), h, tau), maximum_iterations=steps
        )
        return h

    def compute_output_shape(self, input_shape):
        return (input_shape["values"][0], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, field_units=self.field_units)
        return config


def path_knots(values, times, mask, lengths):
    """The control path's knots X_k, (N, T, 1 + 2C): time since the first observation, each channel
    filled by linear interpolation in time between its own observations (held flat before the first
    and after the last; 0 where a channel is never observed), and each channel's running count of
    observations (the "observational intensity" of Kidger et al. 2020). Compacted inputs."""
    steps = tf.shape(values)[1]
    k = tf.range(steps)
    seen = (mask > 0)[:, None, :, :]  # (N, 1, J, C): step j of channel c observed
    j = k[None, None, :, None]
    at = k[None, :, None, None]  # (1, K, 1, 1): the step being filled
    # the last observed step <= k and the first >= k, per (k, channel): O(T^2 C) per row
    prev = tf.reduce_max(tf.where(seen & (j <= at), j, -1), axis=2)  # (N, T, C)
    nxt = tf.reduce_min(tf.where(seen & (j >= at), j, steps), axis=2)
    prev_c = tf.where(prev < 0, nxt, prev)
    nxt_c = tf.where(nxt >= steps, prev_c, nxt)
    prev_c = tf.clip_by_value(prev_c, 0, steps - 1)
    nxt_c = tf.clip_by_value(nxt_c, 0, steps - 1)
    # row n, step k, channel c reads step idx[n, k, c] of channel c (a gather along the steps)
    # (by gather_nd: a gather that transposes int32 indices makes oneDNN print a fallback warning)
    shape = tf.shape(values)
    rows = tf.broadcast_to(tf.range(shape[0])[:, None, None], shape)
    cols = tf.broadcast_to(tf.range(shape[2])[None, None, :], shape)
    pick = lambda a, idx: tf.gather_nd(a, tf.stack([rows, idx, cols], axis=-1))  # noqa: E731
    tt = tf.broadcast_to(times[:, :, None], tf.shape(values))
    v0, v1 = pick(values, prev_c), pick(values, nxt_c)
    t0, t1 = pick(tt, prev_c), pick(tt, nxt_c)
    t_here = times[:, :, None]
    w = tf.math.divide_no_nan(t_here - t0, t1 - t0)
    filled = tf.where(prev_c == nxt_c, v0, v0 + w * (v1 - v0))
    never = tf.reduce_max(mask, axis=1, keepdims=True) == 0  # (N, 1, C)
    filled = tf.where(never, 0.0, filled)
    counts = tf.cumsum(mask, axis=1)
    inside = (k[None, :] < lengths[:, None])[:, :, None]
    knots = tf.concat([(times - times[:, :1])[:, :, None], filled, counts], axis=-1)
    last = tf.gather(knots, tf.maximum(lengths - 1, 0), batch_dims=1)[:, None, :]
    return tf.where(inside, knots, last)


@_serializable
class NeuralCDE(_Solving):
    """Neural CDE (Kidger, Morrill, Foster & Lyons, NeurIPS 2020): dz = g(z) dX.

    X is the path through :func:`path_knots`, parameterised by the observation index (a
    CDE's solution does not depend on the parameterisation; time is one of X's channels):
    ``interpolation="hermite"``, cubic Hermite with backward differences (C¹, Morrill et al.
    2021; slope 0 at a row's last knot), or ``"linear"``, the polygon through the knots. One
    adaptive solve per segment [k, k+1], shared by the rows, so no step straddles a knot (where
    the linear path's derivative jumps); a row past its last knot has dX = 0. z(0) = Linear(X_0);
    g: an MLP (``field_units``, ReLU, two layers) to a (units x channels) matrix with tanh.
    Returns z at the end, (N, units). Gradient: backprop through the steps (as ODE-RNN's).
    """

    def __init__(self, units=32, field_units=64, interpolation="hermite", **kwargs):
        super().__init__(**kwargs)
        self.units = checks.positive_int("units", units)
        self.field_units = checks.positive_int("field_units", field_units)
        self.interpolation = checks.choice("interpolation", interpolation, INTERPOLATIONS)
        self.initial = keras.layers.Dense(self.units, name="initial")
        self.g1 = keras.layers.Dense(self.field_units, activation="relu", name="field_1")
        self.g2 = keras.layers.Dense(self.field_units, activation="relu", name="field_2")
        self.g3 = None

    def build(self, input_shape):
        self.path_channels = 1 + 2 * input_shape["values"][-1]
        # started near g = 0: the path's time and count channels grow by 1 per step, so a field of
        # order one would throw z (and the softmax) far out before training began
        small = keras.initializers.VarianceScaling(scale=0.01, seed=None)
        self.g3 = keras.layers.Dense(
            self.units * self.path_channels, activation="tanh", kernel_initializer=small, name="field_3"
        )
        self.initial.build((None, self.path_channels))
        self.g1.build((None, self.units))
        self.g2.build((None, self.field_units))
        self.g3.build((None, self.field_units))
        self.add_status_weights(track_steps=False)
        super().build(input_shape)

    def _piece(self, u, z, x0, x1, m0, m1, active):
        """dz/du on one segment of the path, u in [0, 1]: g(z)·dX/du; 0 for a row past its last knot."""
        if self.interpolation == "linear":
            dx = x1 - x0
        else:  # cubic Hermite between the knots, with slopes m0, m1
            dx = (6 * u * u - 6 * u) * (x0 - x1) + (3 * u * u - 4 * u + 1) * m0 + (3 * u * u - 2 * u) * m1
        dx = tf.where(active[:, None], dx, 0.0)
        g = tf.reshape(self.g3(self.g2(self.g1(z))), [-1, self.units, self.path_channels])
        return tf.einsum("nud,nd->nu", g, dx)

    def call(self, inputs):
        values, times, mask, lengths = compact(inputs)
        knots = path_knots(values, times, mask, lengths)
        steps = tf.shape(knots)[1]
        # Hermite's slopes: backward differences (the first segment's: its forward difference),
        # and 0 at a row's last knot, so the path comes to rest there without a kink
        diffs = knots[:, 1:] - knots[:, :-1]
        slopes = tf.concat([diffs[:, :1], diffs], axis=1)
        at_rest = tf.range(steps)[None, :] >= (lengths - 1)[:, None]
        slopes = tf.where(at_rest[:, :, None], 0.0, slopes)
        with tf.control_dependencies(self._reset()):
            z = self.initial(knots[:, 0])

        # one solve per segment [k, k+1] of the path, shared by the rows: no step straddles a knot
        def body(k, z):
            piece = {
                "x0": knots[:, k],
                "x1": knots[:, k + 1],
                "m0": slopes[:, k],
                "m1": slopes[:, k + 1],
                "active": k < lengths - 1,
            }
            return k + 1, self._solve(self._piece, z, piece)

        _, z = tf.while_loop(
            lambda k, z: k < tf.reduce_max(lengths) - 1, body, (tf.constant(0), z), maximum_iterations=steps
        )
        return z

    def compute_output_shape(self, input_shape):
        return (input_shape["values"][0], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, field_units=self.field_units, interpolation=self.interpolation)
        return config


@_serializable
class LatentTrajectory(_Solving):
    """z(t) at every step of each row's own times: dz/dt = f(z) (an MLP, tanh) from z(t_0) = z0.

    ``call(z0, times, lengths)``: z0 (N, d) at each row's ``times[:, 0]``; returns (N, T, d), one
    adaptive solve per step over each row's own gap (the change of variable of :class:`ODERNN`);
    a row past its ``lengths`` stays at its last state.
    """

    def __init__(self, latent_dim=4, field_units=32, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = checks.positive_int("latent_dim", latent_dim)
        self.field_units = checks.positive_int("field_units", field_units)
        self.f_hidden = keras.layers.Dense(self.field_units, activation="tanh", name="field_hidden")
        self.f_out = keras.layers.Dense(self.latent_dim, name="field_out")

    def build(self, z_shape, times_shape=None, lengths_shape=None):
        self.f_hidden.build((None, self.latent_dim))
        self.f_out.build((None, self.field_units))
        self.add_status_weights(track_steps=False)
        self.built = True

    def _field(self, s, z, span):
        return span[:, None] * self.f_out(self.f_hidden(z))

    def call(self, z0, times, lengths):
        times, lengths = tf.convert_to_tensor(times, z0.dtype), tf.cast(lengths, tf.int32)
        steps = tf.shape(times)[1]
        with tf.control_dependencies(self._reset()):
            z0 = tf.identity(z0)
        out = tf.TensorArray(z0.dtype, size=steps, element_shape=z0.shape).write(0, z0)

        def body(k, z, out):
            span = tf.where(k < lengths, times[:, k] - times[:, k - 1], 0.0)
            z = self._solve(self._field, z, {"span": span})
            return k + 1, z, out.write(k, z)

        _, _, out = tf.while_loop(
            lambda k, z, out: k < steps, body, (tf.constant(1), z0, out), maximum_iterations=steps
        )
        return tf.transpose(out.stack(), [1, 0, 2])

    def get_config(self):
        config = super().get_config()
        config.update(latent_dim=self.latent_dim, field_units=self.field_units)
        return config


def _reverse(values, times, mask, lengths):
    """Compacted rows reversed within their lengths, times negated (so they increase): the
    encoder reads each row from its last observation back to its first."""
    steps = tf.shape(values)[1]
    k = tf.range(steps)[None, :]
    index = tf.where(k < lengths[:, None], lengths[:, None] - 1 - k, k)
    flip = lambda a: tf.gather(a, index, batch_dims=1)  # noqa: E731
    return {"values": flip(values), "times": -flip(times), "mask": flip(mask)}


@_serializable
class LatentODE(ode.SolvingModel, keras.Model):
    """Latent ODE (Rubanova, Chen & Duvenaud, NeurIPS 2019; Chen et al. 2018's time-series VAE).

    Encoder: an :class:`ODERNN` run backwards in time over each row's observations, then a
    dense layer to the mean and log-variance of q(z0), z0 the latent state at the row's first
    observation. Decoder: z(t) by :class:`LatentTrajectory` (a latent ODE), x̂(t) = Linear(z(t)).
    Training maximises the ELBO: a Gaussian likelihood (standard deviation ``obs_std``) of the
    *observed* entries only, minus KL(q(z0) ‖ N(0, I)); ``fit`` logs ``loss`` (negative ELBO per
    sample), ``nll`` (per observed entry), ``kl`` and ``nfe_forward``. Inputs as the classifiers'
    (``fit(series.inputs())``, no labels).

    ``model(inputs)``: the reconstruction from the mean of q(z0) at each row's observed steps, in
    their compacted order (N, T, C); ``extrapolate(inputs, times)``: the same z0 decoded at
    ``times`` (N, T') after each row's first observation; ``sample(times, n)``: z0 ~ N(0, I).

    ``encode_fraction`` f (None: all): in ``fit`` and ``evaluate`` the encoder sees only each
    row's observations at times up to t_first + f·(t_last − t_first), while the likelihood
    counts every observed entry, so the model learns to extrapolate from a series' beginning
    (Rubanova et al.'s extrapolation setting). ``model(inputs)`` and ``extrapolate`` encode
    whatever they are given.
    """

    def __init__(
        self,
        input_channels=2,
        latent_dim=4,
        units=25,
        field_units=32,
        obs_std=0.1,
        solver="dopri5",
        rtol=1e-3,
        atol=1e-4,
        max_steps=1000,
        encode_fraction=None,
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.input_channels = checks.positive_int("input_channels", input_channels)
        self.encode_fraction = checks.real(
            "encode_fraction", encode_fraction, exclusive_minimum=0.0, maximum=1.0, allow_none=True,
            allowed="None or a number in (0, 1]",
        )  # fmt: skip
        self.latent_dim = checks.positive_int("latent_dim", latent_dim)
        self.obs_std = checks.real("obs_std", obs_std, exclusive_minimum=0.0, allowed="a positive number")
        solving = dict(solver=solver, rtol=rtol, atol=atol, max_steps=max_steps)
        self.solving = solving
        self.units, self.field_units, self.seed = units, field_units, seed
        self.encoder = ODERNN(units=units, field_units=field_units, name="encoder", **solving)
        self.to_latent = keras.layers.Dense(2 * self.latent_dim, name="to_latent")
        self.trajectory = LatentTrajectory(self.latent_dim, field_units, name="decoder", **solving)
        self.readout = keras.layers.Dense(self.input_channels, name="readout")
        self._noise = keras.random.SeedGenerator(seed)
        self.supports_jit = False

    def build(self, input_shape=None):
        c = self.input_channels
        self.encoder.build({"values": (None, None, c), "times": (None, None), "mask": (None, None, c)})
        self.to_latent.build((None, self.encoder.units))
        self.trajectory.build((None, self.latent_dim))
        self.readout.build((None, None, self.latent_dim))
        self.built = True

    def encode(self, inputs, fraction=None):
        """``(mean, log_variance, (values, times, mask, lengths))``: q(z0) and the compacted inputs;
        with ``fraction`` f, q(z0) from each row's observations up to the fraction f of its span."""
        parts = compact(inputs)
        seen = parts
        if fraction is not None:
            values, times, mask, lengths = parts
            first, last = times[:, 0], tf.gather(times, lengths - 1, batch_dims=1)
            early = tf.cast(times <= (first + fraction * (last - first))[:, None], mask.dtype)
            seen = compact({"values": values, "times": times, "mask": mask * early[..., None]})
        h = self.encoder(_reverse(*seen))
        stats = self.to_latent(h)
        return stats[:, : self.latent_dim], stats[:, self.latent_dim :], parts

    def decode(self, z0, times, lengths):
        return self.readout(self.trajectory(z0, times, lengths))

    def call(self, inputs):
        mean, _, (_, times, _, lengths) = self.encode(inputs)
        return self.decode(mean, times, lengths)

    def _elbo(self, inputs, training):
        mean, log_var, (values, times, mask, lengths) = self.encode(inputs, self.encode_fraction)
        z0 = mean
        if training:
            z0 = mean + tf.exp(0.5 * log_var) * keras.random.normal(tf.shape(mean), seed=self._noise)
        x_hat = self.decode(z0, times, lengths)
        residual = (values - x_hat) / self.obs_std
        observed = tf.reduce_sum(mask)
        nll_sum = tf.reduce_sum(mask * (0.5 * tf.square(residual) + tf.math.log(self.obs_std) + 0.9189385332))
        kl = 0.5 * tf.reduce_sum(tf.exp(log_var) + tf.square(mean) - 1.0 - log_var, axis=1)
        batch = tf.cast(tf.shape(values)[0], tf.float32)
        loss = nll_sum / batch + tf.reduce_mean(kl)
        return loss, {"nll": nll_sum / observed, "kl": tf.reduce_mean(kl)}

    def _logs(self, loss, parts):  # backprop only: no backward solve to count
        return {"loss": loss, **parts, **self._nfe_logs(backward=False)}

    def train_step(self, data):
        inputs = data[0] if isinstance(data, tuple) else data
        with tf.GradientTape() as tape:
            loss, parts = self._elbo(inputs, training=True)
        grads = tape.gradient(loss, self.trainable_variables)
        with self.solve_gate():
            self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return self._logs(loss, parts)

    def test_step(self, data):
        inputs = data[0] if isinstance(data, tuple) else data
        loss, parts = self._elbo(inputs, training=False)
        return self._logs(loss, parts)

    def extrapolate(self, inputs, times):
        """The mean of q(z0), decoded at ``times`` ((N, T') or (T',), each after the row's first
        observation): (N, T', C). Runs as one compiled graph (the solves' loops in eager mode
        would be Python loops)."""
        inputs = {k: tf.convert_to_tensor(inputs[k], tf.float32) for k in ("values", "times", "mask")}
        times = tf.convert_to_tensor(times, tf.float32)
        if times.shape.rank == 1:
            times = tf.tile(times[None], [tf.shape(inputs["values"])[0], 1])
        return self._graph("_extrapolate")(inputs, times)

    def _extrapolate(self, inputs, times):
        mean, _, (_, observed_times, _, _) = self.encode(inputs)
        grid = tf.concat([observed_times[:, :1], times], axis=1)
        lengths = tf.fill([tf.shape(grid)[0]], tf.shape(grid)[1])
        return self.decode(mean, grid, lengths)[:, 1:]

    def _graph(self, method):
        """``method`` as a ``tf.function`` (made once per model, retraced only for new shapes)."""
        cache = self.__dict__.setdefault("_graphs", {})
        if method not in cache:
            cache[method] = tf.function(getattr(self, method), reduce_retracing=True)
        return cache[method]

    def sample(self, times, n=1, seed=0):
        """``n`` trajectories from the prior z0 ~ N(0, I) at ``times`` (T,), z0 at ``times[0]``: (n, T, C)."""
        times = tf.convert_to_tensor(times, tf.float32)
        z0 = keras.random.normal((n, self.latent_dim), seed=seed)
        grid = tf.tile(times[None], [n, 1])
        return self._graph("decode")(z0, grid, tf.fill([n], tf.shape(grid)[1]))

    def solving_layers(self):
        return [self.encoder, self.trajectory]

    def get_config(self):
        config = super().get_config()
        config.update(
            input_channels=self.input_channels,
            latent_dim=self.latent_dim,
            units=self.units,
            field_units=self.field_units,
            obs_std=self.obs_std,
            encode_fraction=self.encode_fraction,
            seed=self.seed,
            **self.solving,
        )
        return config


@_serializable
class SeriesModel(ode.SolvingModel, keras.Model):
    """A functional time-series model with solving layers: ``nfe_forward`` / ``nfe_backward`` in the
    ``fit`` / ``evaluate`` logs; a batch whose solve failed applies no update, and every Keras entry
    point raises :class:`odezoo.SolverError` after it (:class:`odezoo.ode.SolvingModel`)."""

    def solving_layers(self):
        return [layer for layer in self._flatten_layers() if isinstance(layer, _Solving)]


def series_inputs(input_channels):
    """The three named Keras inputs of a series model (any number of steps)."""
    checks.positive_int("input_channels", input_channels)
    return {
        "values": keras.Input((None, input_channels), name="values"),
        "times": keras.Input((None,), name="times"),
        "mask": keras.Input((None, input_channels), name="mask"),
    }


def series_model(encoder, *, input_channels, num_classes=None, outputs=None, name):
    """``encoder`` on the series inputs, then a softmax head (``num_classes``) or a linear one (``outputs``)."""
    if (num_classes is None) == (outputs is None):
        raise ValueError(f"{name}: give exactly one of num_classes (a classifier) or outputs (a regressor).")
    inputs = series_inputs(input_channels)
    h = encoder(inputs)
    if num_classes is not None:
        checks.integer("num_classes", num_classes, minimum=2)
        out = keras.layers.Dense(num_classes, activation="softmax", name="classifier")(h)
    else:
        checks.positive_int("outputs", outputs)
        out = keras.layers.Dense(outputs, name="regressor")(h)
    return SeriesModel(inputs, out, name=name)


__all__ = [
    "ODERNN",
    "NeuralCDE",
    "LatentODE",
    "LatentTrajectory",
    "SeriesModel",
    "compact",
    "path_knots",
    "series_inputs",
    "series_model",
]
