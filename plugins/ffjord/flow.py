"""FFJORD as a Keras model: ``tfp.bijectors.FFJORD`` with odezoo's solver and XLA-safe traces.

The FFJORD plugin's layers, written against odezoo's public API only
(:mod:`odezoo.ode`, :mod:`odezoo.checks`), as a third-party plugin would be.

FFJORD (Grathwohl et al., ICLR 2019) maps data x to a latent z by an ODE,
dz/dt = f(t, z), and tracks the log-density with d log p/dt = −tr(∂f/∂z).
tfp ships the bijector; this module supplies what a Keras user needs around it:

* trace functions that compile under XLA once: Hutchinson's estimator as one
  ``tape.gradient(f, z, output_gradients=ε)`` (tfp's own uses ``vectorized_map``,
  with which the XLA gradient recompiles every step; see docs/flows.md), and the exact trace as ``d`` such products with
  the unit vectors (tfp's ``trace_jacobian_exact`` does not compile under XLA);
* odezoo's Dormand-Prince (adjoint with seminorm, step budget, NaN guard) as
  ``ode_solve_fn``;
* maximum-likelihood ``fit``, ``evaluate`` with the exact trace in low dimension,
  NFE counters, ``.keras`` save/load, and ``trace``/``noise`` switchable after
  training or loading.

Convention (tfp's): base N(0, I) at t = 0, data at t = t1; ``to_latent`` is the
bijector's inverse, ``to_data`` its forward.
"""

from __future__ import annotations

import math
import threading

import keras
import tensorflow as tf

from odezoo import checks
from odezoo.ode import (
    Setting,
    Settings,
    SolverChecked,
    SolverStatus,
    apply_if_solved,
    check_regularization,
    rademacher,
    regularization_penalty,
    solve_flat,
)
from odezoo.ode.compilation import COMPILE_MODES, compiled_function, resolve_compile, uses_convolution
from odezoo.ode.controllers import CONTROLLERS
from odezoo.ode.options import embedded_pair
from odezoo.ode.tableau import tableau_of

# The Keras package "odezoo": files saved before the flow became a plugin name "odezoo>FFJORDFlow".
_serializable = keras.saving.register_keras_serializable(package="odezoo")

TRACES = ("hutchinson", "exact")
NOISES = ("rademacher", "gaussian")
FLOW_GRADIENTS = ("adjoint", "checkpoint")
# The flow's choice among odezoo.ode.SOLVERS: the two Dormand-Prince solvers (tfp's BDF solves per
# sample); besides them, any registered embedded pair ("tsit5", "bosh3", ...) on odezoo's integrator
SOLVERS = ("dopri5", "tfp_dopri5")


def _check_solver(name, value):
    if value not in SOLVERS and embedded_pair(value) is not None:
        return value
    import odezoo

    pairs = [n for n in odezoo.list_schemes() if n not in SOLVERS and embedded_pair(n) is not None]
    return checks.choice(name, value, SOLVERS + tuple(pairs))


@_serializable
class TimeMLPField(keras.layers.Layer):
    """FFJORD's toy field: an MLP on concat(z, t); ``field(t, z)`` has z's shape.

    Args:
        data_dim: dimension of z.
        hidden: widths of the hidden layers (default (64, 64, 64)).
        activation: hidden activation (default "tanh"; smooth, as the trace needs).
    """

    def __init__(self, data_dim, hidden=(64, 64, 64), activation="tanh", **kwargs):
        super().__init__(**kwargs)
        self.data_dim = int(data_dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        self.layers_ = [
            keras.layers.Dense(w, activation=activation, name=f"dense{i}") for i, w in enumerate(self.hidden)
        ]
        self.layers_.append(keras.layers.Dense(self.data_dim, name=f"dense{len(self.hidden)}"))

    def build(self, t_shape=None, z_shape=None):
        width = self.data_dim + 1
        for layer in self.layers_:
            layer.build((None, width))
            width = layer.units

    def call(self, t, z):
        t_col = tf.ones_like(z[..., :1]) * tf.cast(t, z.dtype)
        h = tf.concat([z, t_col], axis=-1)
        for layer in self.layers_:
            h = layer(h)
        return h

    def compute_output_shape(self, t_shape, z_shape):
        return z_shape

    def get_config(self):
        config = super().get_config()
        config.update(data_dim=self.data_dim, hidden=list(self.hidden), activation=self.activation)
        return config


@_serializable
class TimeConvField(keras.layers.Layer):
    """FFJORD's image field: 3x3 convolutions with t concatenated as a channel before each.

    The paper's MNIST field (Grathwohl et al. 2019, single scale: "concat" layers, stride 1).
    The flow's state is the flattened image; the field reshapes it to ``image_shape``, applies
    ``len(hidden)`` convolutions of those widths with ``activation`` and a last one back to the
    image's channels, and flattens again, so the flow's solves and traces are unchanged.

    Args:
        image_shape: (height, width, channels) of the data.
        hidden: channels of the hidden convolutions (default (64, 64, 64)).
        activation: hidden activation (smooth, as the trace needs; "softplus" in the paper).
    """

    def __init__(self, image_shape, hidden=(64, 64, 64), activation="softplus", **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        channels = self.image_shape[-1]
        self.convs = [keras.layers.Conv2D(w, 3, padding="same", name=f"conv{i}") for i, w in enumerate(self.hidden)]
        self.convs.append(keras.layers.Conv2D(channels, 3, padding="same", name=f"conv{len(self.hidden)}"))
        self._act = keras.activations.get(activation)

    def build(self, t_shape=None, z_shape=None):
        height, width, channels = self.image_shape
        for conv in self.convs:
            conv.build((None, height, width, channels + 1))
            channels = conv.filters

    def call(self, t, z):
        h = tf.reshape(z, (-1,) + self.image_shape)
        t_map = tf.ones_like(h[..., :1]) * tf.cast(t, h.dtype)
        for i, conv in enumerate(self.convs):
            h = conv(tf.concat([h, t_map], axis=-1))
            if i < len(self.convs) - 1:
                h = self._act(h)
        return tf.reshape(h, tf.shape(z))

    def compute_output_shape(self, t_shape, z_shape):
        return z_shape

    def get_config(self):
        config = super().get_config()
        config.update(image_shape=list(self.image_shape), hidden=list(self.hidden), activation=self.activation)
        return config


FIELDS = ("mlp", "conv")


# --------------------------------------------------------------------------- traces
def _with_penalties(state_and_logdet, f, squared_jacobian):
    """The derivative tuple: (f, trace terms) and, when the solve carries RNODE's two integrals
    (a 4-tuple state, :meth:`FFJORDFlow._ode_solve_fn`), their rates ‖f‖² and ‖∂f/∂z‖_F² (estimate)."""
    if len(state_and_logdet) == 2:
        return ()
    return (tf.reduce_sum(tf.square(f), -1), squared_jacobian())


def hutchinson_trace(noise):
    """A tfp ``trace_augmentation_fn``: Hutchinson's estimator with one probe ε per solve.

    ``noise(shape, dtype)`` draws ε (Rademacher or Gaussian); the per-coordinate
    terms ε ⊙ (Jᵀε) are returned unreduced, as tfp's FFJORD expects. With the
    regularisation's integrals in the state, the same VJP gives ‖Jᵀε‖², the Jacobian
    norm's estimate (RNODE reuses the trace's probe the same way).
    """

    def trace_fn(ode_fn, state_shape, dtype):
        eps = noise(state_shape, dtype)

        def augmented(time, state_and_logdet, **kwargs):
            state = state_and_logdet[0]
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(state)
                f = ode_fn(time, state, **kwargs)
            vjp = tape.gradient(f, state, output_gradients=eps)
            penalties = _with_penalties(state_and_logdet, f, lambda: tf.reduce_sum(tf.square(vjp), -1))
            return (f, eps * vjp) + penalties

        return augmented

    return trace_fn


def exact_trace(ode_fn, state_shape, dtype):
    """A tfp ``trace_augmentation_fn`` with the exact diagonal of ∂f/∂z (d VJPs; for small d).

    The d VJPs are the Jacobian's rows, so the regularisation's ‖∂f/∂z‖_F² is exact here too.
    """

    def augmented(time, state_and_logdet, **kwargs):
        state = state_and_logdet[0]
        with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
            tape.watch(state)
            f = ode_fn(time, state, **kwargs)
        d = state.shape[-1]
        rows = []
        for i in range(d):
            unit = tf.one_hot(i, d, dtype=f.dtype) * tf.ones_like(f)
            rows.append(tape.gradient(f, state, output_gradients=unit))
        del tape
        diag = tf.stack([row[..., i] for i, row in enumerate(rows)], axis=-1)
        penalties = _with_penalties(state_and_logdet, f, lambda: tf.add_n([tf.reduce_sum(r * r, -1) for r in rows]))
        return (f, diag) + penalties

    return augmented


class _SolveResults:
    """The part of ``tfp.math.ode.Results`` tfp's FFJORD reads."""

    def __init__(self, times, states):
        self.times, self.states = times, states


@_serializable
class FFJORDFlow(SolverChecked, SolverStatus, Settings, keras.Model):
    """A continuous normalising flow (FFJORD) as a Keras model.

    Args:
        data_dim: dimension of the data.
        hidden, activation: the field's hidden widths and activation (the MLP's units on concat(z, t),
            or the convolutions' channels).
        field: "mlp" (:class:`TimeMLPField`, default) or "conv" (:class:`TimeConvField`, the paper's
            image field; needs ``image_shape``).
        image_shape: (height, width, channels) with a product of ``data_dim``: the data are flattened
            images, which the conv field sees as images (e.g. (8, 8, 1) for the digits).
        trace: "hutchinson" (training default) or "exact".
        noise: Hutchinson probe distribution, "rademacher" or "gaussian".
        solver: "dopri5" (odezoo's; default), "tfp_dopri5" (tfp's, the reference), or a registered
            embedded pair ("tsit5", "bosh3", "heun_euler", a plugin's) on odezoo's integrator.
        rtol, atol: solver tolerances (default 1e-5).
        num_blocks: FFJORD blocks chained, each with its own field.
        t1: integration time of each block.
        max_steps: step budget per solve (attempted steps).
        data_log_scale: log of the factor the data were divided by, so that
            ``bits_per_dim`` refers to the raw values (digits scaled by 1/17: log 17).
        eval_probes: Hutchinson probes averaged by ``evaluate`` when data_dim > 8.
        seed: seed of the Hutchinson noise and of unseeded sampling.
        regularization: None, or RNODE's penalties (Finlay et al., ICML 2020) as weights
            ``{"kinetic": λ_k, "jacobian": λ_j}``: in ``fit``, λ_k·mean ∫‖f‖² dt + λ_j·mean
            ∫‖∂f/∂z‖_F² dt (summed over the blocks) is added to the NLL, the two integrals
            carried by the same solves as extra components outside the error norm; the
            Jacobian norm by the trace's own VJP (Hutchinson, the same probe; exact with
            ``trace="exact"``). ``fit`` logs ``kinetic`` and ``jacobian``.
        controller: the step-size controller of odezoo's integrator, a name in
            ``odezoo.ode.controllers.CONTROLLERS`` ("predictive", "pi", "pid"; not with "tfp_dopri5").
        gradient: how ``fit`` differentiates the solves: "adjoint" (default; a backward solve,
            memory independent of the steps) or "checkpoint" (odezoo's integrator only: the exact
            gradient of the discrete forward solve, replayed from checkpointed step states, as
            :class:`odezoo.ODEBlock`'s ``gradient="checkpoint"``; the shipped conv digits flow
            trained with it, its adjoint runs at 1e-3 having gone unsteady: docs/results.md).
        solver_compile: how ``log_prob``/``sample``/``to_latent``/``to_data`` compile their solves
            (:mod:`odezoo.ode.compilation`): "auto" (XLA for these MLP fields on any device;
            the graph executor on CPU for a field with convolutions), "xla" or "graph"; the
            ``compile=`` of :class:`odezoo.ODEBlock` (a Keras model's ``compile`` is taken).

    Methods: ``log_prob(x)``, ``sample(n, seed=None)``, ``to_latent(x)``,
    ``to_data(z)``; ``call``/``predict`` return log-densities; ``fit(x)``
    maximises likelihood, logging ``nll`` (nats), ``bits_per_dim``,
    ``nfe_forward`` and ``nfe_backward`` (and ``kinetic``, ``jacobian`` when regularised).
    """

    # switchable after training or loading (odezoo.ode.settings); read while tracing, so a change has
    # Keras trace fit/evaluate/predict again (odezoo's own compiled functions are keyed by them)
    trace = Setting(lambda name, v: checks.choice(name, v, TRACES))
    noise = Setting(lambda name, v: checks.choice(name, v, NOISES))
    solver = Setting(_check_solver)
    rtol = Setting(checks.positive)
    atol = Setting(checks.positive)
    solver_compile = Setting(lambda name, v: checks.choice(name, v, COMPILE_MODES))
    controller = Setting(lambda name, v: checks.choice(name, v, tuple(CONTROLLERS)))
    gradient = Setting(lambda name, v: checks.choice(name, v, FLOW_GRADIENTS))

    def __init__(
        self,
        data_dim,
        hidden=(64, 64, 64),
        activation="tanh",
        trace="hutchinson",
        noise="rademacher",
        solver="dopri5",
        rtol=1e-5,
        atol=1e-5,
        num_blocks=1,
        t1=1.0,
        max_steps=10000,
        data_log_scale=0.0,
        eval_probes=4,
        seed=None,
        solver_compile="auto",
        controller="predictive",
        regularization=None,
        field="mlp",
        image_shape=None,
        gradient="adjoint",
        **kwargs,
    ):
        super().__init__(**kwargs)
        checks.choice("field", field, FIELDS)
        if image_shape is not None:
            try:
                image_shape = tuple(int(d) for d in image_shape)
            except (TypeError, ValueError):
                raise checks.bad_value("image_shape", image_shape, "None or (height, width, channels)") from None
            if len(image_shape) != 3 or min(image_shape) < 1 or math.prod(image_shape) != data_dim:
                raise checks.bad_value(
                    "image_shape",
                    image_shape,
                    f"(height, width, channels) of positive ints with product data_dim={data_dim}",
                )
        if field == "conv" and image_shape is None:
            raise checks.bad_value("image_shape", image_shape, "(height, width, channels) with field='conv'")
        self.field_kind = field
        self.image_shape = image_shape
        checks.positive_int("data_dim", data_dim)
        checks.positive_int("num_blocks", num_blocks)
        hidden = tuple(hidden)
        if not hidden or any(not checks.is_int(h) or h < 1 for h in hidden):
            raise checks.bad_value("hidden", hidden, "a non-empty sequence of positive ints")
        checks.positive("t1", t1)
        checks.positive_int("max_steps", max_steps)
        checks.positive_int("eval_probes", eval_probes)
        self.data_dim = data_dim
        self.hidden = hidden
        self.activation = activation
        self.num_blocks = num_blocks
        self.t1 = float(t1)
        self.max_steps = max_steps
        self.data_log_scale = float(data_log_scale)
        self.eval_probes = eval_probes
        self.seed = seed
        self.trace, self.noise, self.solver, self.rtol, self.atol = trace, noise, solver, rtol, atol
        self.solver_compile = solver_compile
        self.controller = controller
        self.gradient = gradient
        self.regularization = check_regularization(regularization)
        # while fit's step runs, a list collecting its solves' integrals; per thread, as MirroredStrategy
        # traces its replicas in threads
        self.__dict__["_penalty_sink"] = threading.local()
        if field == "conv":
            self.fields = [TimeConvField(image_shape, hidden, activation, name=f"field{i}") for i in range(num_blocks)]
        else:
            self.fields = [TimeMLPField(data_dim, hidden, activation, name=f"field{i}") for i in range(num_blocks)]
        self._noise_seed = keras.random.SeedGenerator(seed, name="noise_seed")
        self._compiled = {}
        self.settings_ready()
        self.build((None, data_dim))

    def _validate_settings(self):
        if self.solver == "tfp_dopri5" and self.controller != "predictive":
            raise ValueError(
                f"controller={self.controller!r} steers odezoo's integrator; solver='tfp_dopri5' is tfp's and "
                "has no use for it: leave it 'predictive' or pick one of odezoo's solvers."
            )
        if self.solver == "tfp_dopri5" and self.gradient != "adjoint":
            raise ValueError(
                f"gradient={self.gradient!r} runs on odezoo's integrator; solver='tfp_dopri5' is tfp's, with "
                "its own adjoint: leave gradient 'adjoint' or pick one of odezoo's solvers."
            )

    def _settings_changed(self, name):
        """Keras traced fit/evaluate/predict with the old setting: have them traced again."""
        for attr in ("train_function", "test_function", "predict_function"):
            if getattr(self, attr, None) is not None:
                setattr(self, attr, None)

    def build(self, input_shape):
        for field in self.fields:
            field.build((), (None, self.data_dim))
        self.add_status_weights(track_steps=False)  # nfe_forward, nfe_backward, solver_status (in this order)
        self.nll_tracker = keras.metrics.Mean(name="nll")
        self.bpd_tracker = keras.metrics.Mean(name="bits_per_dim")
        self.se_tracker = keras.metrics.Mean(name="nll_se")
        self.built = True

    # -- the tfp objects ---------------------------------------------------------------
    def _noise_fn(self, shape, dtype):
        if self.noise == "gaussian":
            return tf.cast(keras.random.normal(shape, seed=self._noise_seed), dtype)
        return rademacher(shape, dtype, self._noise_seed)

    def _ode_solve_fn(self, ode_fn, initial_time, initial_state, solution_times, constants=None, _mask=None, **unused):
        sink = getattr(self.__dict__["_penalty_sink"], "list", None)
        if sink is not None and isinstance(initial_state, tuple) and len(initial_state) == 2:
            # a log-density solve in fit: carry RNODE's two integrals (the trace functions see a 4-tuple)
            zero = tf.zeros_like(initial_state[0][..., 0])
            results = self._ode_solve_fn(ode_fn, initial_time, tuple(initial_state) + (zero, zero), solution_times,
                                         constants, _mask=[True, True, False, False])  # fmt: skip
            state, logdet, kinetic, jacobian = results.states
            sink.append((kinetic[-1], jacobian[-1]))
            return _SolveResults(results.times, (state, logdet))
        dtype = tf.nest.flatten(initial_state)[0].dtype
        times = tf.cast(tf.reshape(tf.convert_to_tensor(solution_times), [-1]), dtype)
        if self.solver == "tfp_dopri5":
            import tensorflow_probability as tfp

            solver = tfp.math.ode.DormandPrince(rtol=self.rtol, atol=self.atol, max_num_steps=self.max_steps)
            return solver.solve(ode_fn, initial_time, initial_state, times, constants=constants)

        on_forward, on_backward = self.status_hooks(accumulate=True)  # several solves per step
        constants = {} if constants is None else constants
        flat = [tf.convert_to_tensor(s) for s in tf.nest.flatten(initial_state)]
        flat_c = [tf.convert_to_tensor(c) for c in tf.nest.flatten(constants)]
        options = dict(rtol=self.rtol, atol=self.atol, first_step=None, max_steps=self.max_steps,
                       controller=self.controller)  # fmt: skip
        if self.solver != "dopri5":  # a registered embedded pair
            options["tableau"] = tableau_of(embedded_pair(self.solver))
        if _mask is not None:
            options["norm_mask"] = _mask
        outputs, _ = solve_flat(
            ode_fn,
            initial_state,
            constants,
            tf.cast(initial_time, dtype),
            flat,
            times,
            flat_c,
            options=options,
            gradient=self.gradient,
            on_forward=on_forward,
            on_backward=on_backward,
        )
        return _SolveResults(times, tf.nest.pack_sequence_as(initial_state, outputs))

    def _bijector(self, trace):
        import tensorflow_probability as tfp

        trace_fn = exact_trace if trace == "exact" else hutchinson_trace(self._noise_fn)
        blocks = []
        for field in self.fields:
            blocks.append(
                tfp.bijectors.FFJORD(
                    state_time_derivative_fn=lambda t, z, field=field: field(t, z),
                    ode_solve_fn=self._ode_solve_fn,
                    trace_augmentation_fn=trace_fn,
                    initial_time=0.0,
                    final_time=self.t1,
                    dtype=tf.float32,
                )
            )
        # Chain applies its last bijector first; data = blocks[-1](...(blocks[0](z)))
        return tfp.bijectors.Chain(list(reversed(blocks)))

    def _distribution(self, trace):
        import tensorflow_probability as tfp

        base = tfp.distributions.MultivariateNormalDiag(loc=tf.zeros([self.data_dim], tf.float32))
        return tfp.distributions.TransformedDistribution(base, self._bijector(trace))

    # -- compiled entry points ---------------------------------------------------------
    def _check_x(self, x, what="x"):
        x = tf.convert_to_tensor(x, dtype=tf.float32)
        if x.shape.rank != 2 or x.shape[-1] != self.data_dim:
            raise ValueError(
                f"FFJORD model with data_dim={self.data_dim} expects {what} of shape (batch, {self.data_dim}). "
                f"Received: {what}.shape={tuple(x.shape)}."
            )
        return x

    def _fn(self, key, builder):
        # One trace for every batch size (XLA still compiles per concrete shape), so that
        # the same input always runs the same executable: seeded sampling is bit-reproducible.
        # Settings are read while tracing, so they are part of the key: switching back and forth
        # reuses what was compiled before.
        key = (key, self.trace, self.noise, self.solver, self.rtol, self.atol, self.controller, self.compiled_by)
        fn = self._compiled.get(key)
        if fn is None:
            spec = tf.TensorSpec([None, self.data_dim], tf.float32)
            fn = compiled_function(builder, self.compiled_by, input_signature=[spec])
            self._compiled[key] = fn
        return fn

    @property
    def compiled_by(self):
        """``"xla"`` or ``"graph"``: what compiles the flow's solves (``solver_compile="auto"`` resolved)."""

        def convolution():
            spec = tf.TensorSpec([None, self.data_dim], tf.float32)
            t = tf.TensorSpec((), tf.float32)
            return any(uses_convolution(lambda tt, z, f=f: f(tt, z), t, spec) for f in self.fields)

        if self.__dict__.get("_compiled_by_key") != self.solver_compile:
            self.__dict__["_compiled_by"] = resolve_compile(self.solver_compile, convolution)
            self.__dict__["_compiled_by_key"] = self.solver_compile
        return self.__dict__["_compiled_by"]

    @property
    def supports_jit(self):
        """False when the solves run in the graph executor (Keras's own XLA would compile them anyway)."""
        return "fields" not in self.__dict__ or self.compiled_by == "xla"

    @supports_jit.setter
    def supports_jit(self, value):
        pass  # keras.Model's __init__ sets True; here it follows `solver_compile`

    def _transport(self, state, inverse):
        """The flow map alone, without the log-determinant (no trace, no noise: deterministic)."""
        fields = list(reversed(self.fields)) if inverse else list(self.fields)
        for field in fields:

            def fn(t, z, field=field):
                # tfp's inverse dynamics: -f(t1 - s, z) from s = 0 to t1
                return -field(self.t1 - t, z) if inverse else field(t, z)

            state = self._ode_solve_fn(fn, 0.0, state, [self.t1]).states[-1]
        return state

    def _log_prob_graph(self, x, trace=None):
        self.nfe_forward.assign(0)
        return self._distribution(trace or self.trace).log_prob(x)

    def log_prob(self, x, trace=None):
        """log q(x) in nats, shape (batch,). ``trace`` overrides the model's for this call."""
        x = self._check_x(x)
        trace = trace or self.trace
        checks.choice("trace", trace, TRACES)
        self.reset_status()
        out = self._fn(("log_prob", trace), lambda x: self._log_prob_graph(x, trace))(x)
        self.check_status()
        return out

    def to_latent(self, x):
        """Data → base (the bijector's inverse), shape (batch, data_dim)."""
        x = self._check_x(x)
        self.reset_status()
        out = self._fn("to_latent", lambda x: self._transport(x, inverse=True))(x)
        self.check_status()
        return out

    def to_data(self, z):
        """Base → data (the bijector's forward), shape (batch, data_dim)."""
        z = self._check_x(z, "z")
        self.reset_status()
        out = self._fn("to_data", lambda z: self._transport(z, inverse=False))(z)
        self.check_status()
        return out

    def sample(self, n, seed=None):
        """``n`` samples (float32, (n, data_dim)); the same ``seed`` gives the same samples."""
        checks.positive_int("n", n)
        if seed is None:
            z = keras.random.normal((n, self.data_dim), seed=self._noise_seed)
        else:
            z = tf.random.stateless_normal((n, self.data_dim), seed=[int(seed), 0x0DE])
        return self.to_data(z)

    def status_label(self):
        return "FFJORD"

    # -- Keras -----------------------------------------------------------------------------
    def call(self, x, training=None):
        return self._distribution(self.trace).log_prob(tf.cast(x, tf.float32))

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

    @property
    def metrics(self):
        return [self.nll_tracker, self.bpd_tracker]

    def _bits_per_dim(self, nll):
        return (nll / self.data_dim + self.data_log_scale) / math.log(2.0)

    def _logs(self):
        return {
            "nll": self.nll_tracker.result(),
            "bits_per_dim": self.bpd_tracker.result(),
            "nfe_forward": self.nfe_forward.value,
            "nfe_backward": self.nfe_backward.value,
        }

    def _penalized_nll(self, x):
        """The batch's NLL, and with ``regularization`` the penalty and the integrals' batch means
        (summed over the blocks): ``(loss, nll, {"kinetic": ..., "jacobian": ...} or {})``."""
        if self.regularization is None:
            nll = -tf.reduce_mean(self._distribution(self.trace).log_prob(x))
            return nll, nll, {}
        local = self.__dict__["_penalty_sink"]
        sink = local.list = []
        try:
            nll = -tf.reduce_mean(self._distribution(self.trace).log_prob(x))
        finally:
            local.list = None
        if len(sink) != self.num_blocks:  # one log-density solve per block, as tfp's bijector caches them
            raise RuntimeError(f"FFJORD's regularisation expected {self.num_blocks} solves, saw {len(sink)}.")
        kinetic = tf.add_n([tf.reduce_mean(k) for k, _ in sink])
        jacobian = tf.add_n([tf.reduce_mean(j) for _, j in sink])
        loss = nll + regularization_penalty(self.regularization, kinetic, jacobian)
        return loss, nll, {"kinetic": kinetic, "jacobian": jacobian}

    def train_step(self, data):
        x = data[0] if isinstance(data, (tuple, list)) else data
        # The batch size is forgotten: with it static, TensorFlow's graph optimiser (grappler's
        # memory optimiser) rewrites the sums in the checkpoint gradient's nested loops into
        # temporary variables whose names collide from one outer iteration to the next
        # (AlreadyExistsError on a conv field in the graph executor; seen with fit on numpy arrays).
        x = tf.raw_ops.PlaceholderWithDefault(input=tf.cast(x, tf.float32), shape=[None, self.data_dim])
        self.nfe_forward.assign(0)
        self.nfe_backward.assign(0)
        self.reset_status()
        with tf.GradientTape() as tape:
            loss, nll, penalties = self._penalized_nll(x)
        variables = self.trainable_variables
        grads = tape.gradient(loss, variables)
        # a failed solve applies no update, on one device or under a strategy (odezoo.ode.gate)
        apply_if_solved(
            lambda: [self.solver_status.value],
            grads,
            lambda: self.optimizer.apply(grads, variables),
            list(self.optimizer.variables) + list(variables),
        )
        self.nll_tracker.update_state(nll)
        self.bpd_tracker.update_state(self._bits_per_dim(nll))
        return {**self._logs(), **penalties}

    def test_step(self, data):
        x = data[0] if isinstance(data, (tuple, list)) else data
        x = tf.cast(x, tf.float32)
        self.nfe_forward.assign(0)
        self.reset_status()
        if self.data_dim <= 8:
            nll = -tf.reduce_mean(self._distribution("exact").log_prob(x))
            logs_se = tf.zeros([])
        else:
            dist = self._distribution("hutchinson")
            per_probe = tf.stack([-tf.reduce_mean(dist.log_prob(x)) for _ in range(self.eval_probes)])
            nll = tf.reduce_mean(per_probe)
            logs_se = tf.math.reduce_std(per_probe) / math.sqrt(self.eval_probes)
            self.se_tracker.update_state(logs_se)
        self.nll_tracker.update_state(nll)
        self.bpd_tracker.update_state(self._bits_per_dim(nll))
        logs = self._logs()
        if self.data_dim > 8:
            logs["nll_se"] = self.se_tracker.result()
        return logs

    # -- SolverError from every Keras entry point (the status is read after each batch) --------
    def _solver_checks(self):
        return [self]

    def get_config(self):
        return dict(
            name=self.name,
            data_dim=self.data_dim,
            hidden=list(self.hidden),
            activation=self.activation,
            trace=self.trace,
            noise=self.noise,
            solver=self.solver,
            rtol=self.rtol,
            atol=self.atol,
            num_blocks=self.num_blocks,
            t1=self.t1,
            max_steps=self.max_steps,
            data_log_scale=self.data_log_scale,
            eval_probes=self.eval_probes,
            seed=self.seed,
            solver_compile=self.solver_compile,
            controller=self.controller,
            gradient=self.gradient,
            regularization=self.regularization,
            field=self.field_kind,
            image_shape=None if self.image_shape is None else list(self.image_shape),
        )

    @classmethod
    def from_config(cls, config):
        return cls(**config)
