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
    values = tf.convert_to_tensor(inputs["values"], tf.float32)
    times = tf.convert_to_tensor(inputs["times"], tf.float32)
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
    vt = tf.transpose(values, [0, 2, 1])  # (N, C, T)
    tt = tf.broadcast_to(times[:, None, :], tf.shape(vt))
    pick = lambda a, i: tf.transpose(tf.gather(a, tf.transpose(i, [0, 2, 1]), batch_dims=2), [0, 2, 1])  # noqa: E731
    v0, v1 = pick(vt, prev_c), pick(vt, nxt_c)
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
class SeriesModel(ode.SolverChecked, keras.Model):
    """A functional time-series model with solving layers: ``nfe_forward`` / ``nfe_backward`` in the
    ``fit`` / ``evaluate`` logs, and every Keras entry point raises :class:`odezoo.SolverError` after
    a batch whose solve failed."""

    def solving_layers(self):
        return [layer for layer in self._flatten_layers() if isinstance(layer, _Solving)]

    def _nfe_logs(self, backward=True):
        layers = self.solving_layers()
        logs = {"nfe_forward": tf.add_n([tf.cast(x.nfe_forward.value, tf.float32) for x in layers])}
        if backward:
            logs["nfe_backward"] = tf.add_n([tf.cast(x.nfe_backward.value, tf.float32) for x in layers])
        return logs

    def train_step(self, data):
        logs = dict(super().train_step(data))
        logs.update(self._nfe_logs())
        return logs

    def test_step(self, data):
        logs = dict(super().test_step(data))
        logs.update(self._nfe_logs(backward=False))
        return logs

    def _solver_checks(self):
        return self.solving_layers()


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


__all__ = ["ODERNN", "NeuralCDE", "SeriesModel", "compact", "path_knots", "series_inputs", "series_model"]
