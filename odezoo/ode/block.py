"""The Neural-ODE layer :class:`ODEBlock` (Chen, Rubanova, Bettencourt & Duvenaud, NeurIPS 2018)."""

from __future__ import annotations

import inspect
import math
import threading

import keras
import numpy as np
import tensorflow as tf

from odezoo import checks
from odezoo.ode.compilation import check_compile, compiled_function, resolve_compile, uses_convolution
from odezoo.ode.controllers import CONTROLLERS
from odezoo.ode.options import (
    INDEPENDENT_GRADIENTS,
    TFP_SOLVERS,
    check_options,
    check_solver,
    embedded_pair,
    is_adaptive,
    resolve_gradient,
)
from odezoo.ode.dispatch import solve
from odezoo.ode.regularization import check_regularization, rademacher, regularization_penalty, regularized_solve
from odezoo.ode.settings import Setting, Settings
from odezoo.ode.status import SolverStatus
from odezoo.ode.tfp import TFPGuard


class _Field:
    """``field(t, y)`` with ``training`` passed explicitly (the adjoint runs outside the layer's call)."""

    def __init__(self, layer, training, dtype, y_shape, augment):
        self.layer, self.training, self.dtype = layer, training, dtype
        self.takes_training = "training" in inspect.signature(layer.call).parameters

    def __call__(self, t, y):
        t = tf.cast(t, self.dtype)
        if self.takes_training and self.training is not None:
            return self.layer(t, y, training=self.training)
        return self.layer(t, y)


@keras.saving.register_keras_serializable(package="odezoo")
class ODEBlock(SolverStatus, Settings, keras.layers.Layer):
    """A Neural-ODE block: y(t1) from y(t0) = input, solving dy/dt = field(t, y).

    Chen, Rubanova, Bettencourt & Duvenaud, "Neural Ordinary Differential
    Equations", NeurIPS 2018.

    Args:
        field: a Keras layer called as ``field(t, y)`` (t a scalar tensor, y the
            state) returning dy/dt of y's shape. Weights sized from the state
            are made in ``build(self, t_shape, y_shape)``.
        solver: "dopri5" (odezoo's own adaptive Dormand-Prince 5(4), default),
            "tfp_dopri5", "bdf" (tfp's, per sample), or a registered fixed-grid
            scheme ("euler", "rk4", ...) with ``num_steps`` or ``step_size``.
        rtol, atol: tolerances of the adaptive solvers (1e-3, 1e-6).
        t0, t1: integration interval (0, 1).
        solution_times: None, or a list of times in (t0, t1]-order: the block
            then returns the states there, shape (batch, len(times), ...).
        batch_mode: "shared" (default: one step size for the batch) or "independent": every
            row its own steps, error norm and accept/reject decision (:mod:`odezoo.ode.independent`;
            embedded pairs, the ESDIRK ones with per-row Newton; gradient "auto" = "adjoint", every row's
            adjoint on its own steps (:mod:`odezoo.ode.independent_adjoint`), or "backprop"; the field then
            receives t of shape (batch, 1, ..., 1); ``nfe_forward`` counts the batch's field calls).
        num_steps, step_size: grid of a fixed-grid solver (exactly one).
        first_step: None (Hairer's selection for dopri5) or a first step size.
        max_steps: hard budget of attempted steps (10000).
        gradient: "auto" (adjoint for adaptive solvers, backprop for fixed
            grids), "adjoint", "backprop" (odezoo's integrator and fixed grids) or
            "checkpoint" (odezoo's integrator: backprop's exact gradient of the
            discrete solve by checkpointed replay, in O(sqrt(max_steps)) states;
            :mod:`odezoo.ode.checkpoint`).
        augment_dims: ANODE (Dupont, Doucet & Teh 2019): zeros appended to the
            last axis of the state, dropped from the output.
        event_fn: None, or a terminal event ``event_fn(t, y)``: the block integrates from t0
            until it crosses zero (at most to t1, which must be after t0) and returns the state
            there (:func:`odezoo.odeint_event`; the event time is differentiable). Shared mode:
            one scalar for the whole batch's state; ``batch_mode="independent"``: a (batch,)
            tensor, every row stopping at its own event, ``t`` shaped (batch, 1, ..., 1). A Keras
            layer (its weights train with the block's) or a function; ``y`` is the state the
            field sees (with ``augment_dims``). An event that does not happen by t1 fails the
            solve (status 7). Embedded pairs only, no ``solution_times``.
        event_direction: 0 (any crossing), +1 (upward only) or -1 (downward only).
        regularization: None, or RNODE's penalties (Finlay et al., ICML 2020) as weights
            ``{"kinetic": λ_k, "jacobian": λ_j}`` (either may be left out):
            ``λ_k·mean_b ∫‖f‖² dt + λ_j·mean_b ∫‖∂f/∂y‖_F² dt`` over the solve's interval,
            the Jacobian norm by Hutchinson's estimator with one Rademacher probe per row
            held fixed over the solve. Both integrals are extra components of the same
            forward solve (:mod:`odezoo.ode.regularization`). Only in training calls
            (``training=True``, as ``fit`` makes them): the penalty joins the layer's
            ``losses`` (as ``add_loss`` would, kept per replica) and the batch means are kept
            in the ``kinetic`` and ``jacobian`` variables (logged by ODE-Net's ``fit``). Not
            with ``event_fn``.
        compile: how the solve is compiled (:mod:`odezoo.ode.compilation`): "auto"
            (default: TensorFlow's graph executor when the field contains a
            convolution and no GPU/TPU is visible, XLA otherwise), "xla" or "graph".
            :attr:`compiled_by` says which one "auto" chose.

    Attributes:
        nfe_forward, nfe_backward: non-trainable int32 variables: field
            evaluations of the last forward and backward solve (aggregation
            ONLY_FIRST_REPLICA, so they survive tf.distribute).
        solver_status: int32 variable ``[forward reason, backward reason,
            forward steps, backward steps]`` (0 = success; see ``odezoo.ode.REASONS``).
        time_reached: float32 variable ``[forward, backward]``.

    ``solver``, ``rtol``, ``atol``, ``num_steps`` (and ``step_size``,
    ``first_step``, ``max_steps``, ``gradient``, ``compile``) can be set on a built or
    loaded block; the next call retraces (re-``compile()`` a Keras model so that
    its cached train/predict functions pick the change up).

    Raises :class:`odezoo.SolverError` when called eagerly and the solve fails;
    inside a compiled function the states are NaN and ``solver_status`` is set
    (:class:`ODEClassifier` checks it after every batch).
    """

    solver = Setting()
    rtol = Setting()
    atol = Setting()
    num_steps = Setting()
    step_size = Setting()
    first_step = Setting()
    max_steps = Setting()
    gradient = Setting()  # all checked together by _validate_settings (they depend on each other)
    compile = Setting(check_compile)
    controller = Setting(lambda name, v: checks.choice(name, v, tuple(CONTROLLERS)))

    def __init__(
        self,
        field,
        solver="dopri5",
        rtol=1e-3,
        atol=1e-6,
        t0=0.0,
        t1=1.0,
        solution_times=None,
        num_steps=None,
        step_size=None,
        first_step=None,
        max_steps=10000,
        gradient="auto",
        augment_dims=0,
        compile="auto",
        controller="predictive",
        batch_mode="shared",
        event_fn=None,
        event_direction=0,
        regularization=None,
        dtype=None,
        **kwargs,
    ):
        if dtype is None and keras.config.dtype_policy().name.startswith("mixed_"):
            # Adaptive error control needs float32: under a mixed policy the block solves in float32
            # (its inputs are cast up, its output is float32). Give the field dtype="float32" too.
            dtype = "float32"
        super().__init__(dtype=dtype, **kwargs)
        if isinstance(field, dict):
            field = keras.saving.deserialize_keras_object(field)
        if not isinstance(field, keras.layers.Layer):
            raise TypeError(
                f"ODEBlock's `field` must be a Keras layer called as field(t, y). Received: field={field!r}."
            )
        self.field = field
        self.solver = solver
        self.rtol, self.atol = rtol, atol
        self.num_steps, self.step_size, self.first_step = num_steps, step_size, first_step
        self.max_steps = max_steps
        self.gradient = gradient
        self.compile = compile
        self.controller = controller
        self.batch_mode = checks.choice("batch_mode", batch_mode, ("shared", "independent"))
        self._y_shape = None  # the state's shape, known once built
        self._resolved_compile = None
        checks.finite("t0", t0)
        checks.finite("t1", t1)
        if t1 == t0:
            raise checks.bad_value("t1", t1, f"a float different from t0={t0!r}")
        self.t0, self.t1 = float(t0), float(t1)
        if solution_times is not None:
            try:
                times = [float(x) for x in solution_times]
            except (TypeError, ValueError):
                raise checks.bad_value("solution_times", solution_times, "None or a list of floats") from None
            sign = 1.0 if t1 > t0 else -1.0
            rel = [sign * (x - t0) for x in times]
            if (
                not times
                or not all(map(math.isfinite, times))
                or any(r < 0 for r in rel)
                or any(b <= a for a, b in zip(rel, rel[1:]))
            ):
                raise checks.bad_value(
                    "solution_times",
                    solution_times,
                    "a non-empty list of finite times from t0 onwards, strictly monotone in the direction t0 -> t1",
                )
            solution_times = times
        self.solution_times = solution_times
        checks.non_negative_int("augment_dims", augment_dims)
        self.augment_dims = augment_dims
        if isinstance(event_fn, dict):
            event_fn = keras.saving.deserialize_keras_object(event_fn)
        if event_fn is not None and not callable(event_fn):
            raise TypeError(
                f"ODEBlock's `event_fn` must be None or callable as event_fn(t, y). Received: event_fn={event_fn!r}."
            )
        self.event_fn = event_fn
        self.event_direction = checks.choice("event_direction", event_direction, (-1, 0, 1))
        if event_fn is not None:
            if solution_times is not None:
                raise ValueError("ODEBlock(event_fn=...) returns the state at the event: give no solution_times.")
            if t1 < t0:
                raise checks.bad_value("t1", t1, f"a time after t0={t0!r} with event_fn (events are found forward)")
        self.regularization = check_regularization(regularization)
        if self.regularization is not None and event_fn is not None:
            raise ValueError(
                "ODEBlock(regularization=...) integrates the penalties over a known interval: it does not take "
                "an event_fn (give one or the other)."
            )
        self._compiled = {}
        self.settings_ready()

    # -- settable solver options (odezoo.ode.settings) ---------------------------------------
    def _settings_changed(self, name):
        self._compiled = {}
        self._resolved_compile = None

    def _validate_settings(self):
        check_solver(self.solver)
        check_options(
            self.solver,
            rtol=self.rtol,
            atol=self.atol,
            num_steps=self.num_steps,
            step_size=self.step_size,
            first_step=self.first_step,
            max_steps=self.max_steps,
        )
        self._gradient_used()
        integrator = self.solver not in TFP_SOLVERS and is_adaptive(self.solver, self.num_steps, self.step_size)
        if self.controller != "predictive" and not integrator:
            raise ValueError(
                f"controller={self.controller!r} steers odezoo's adaptive integrator; solver={self.solver!r} "
                f"with num_steps={self.num_steps!r}, step_size={self.step_size!r} does not use it: leave it "
                "'predictive', or pick an embedded pair without a grid."
            )

    def _gradient_used(self):
        needs = []
        if getattr(self, "event_fn", None) is not None:
            needs.append("with event_fn")
        if getattr(self, "batch_mode", "shared") == "independent":
            needs.append("for batch_mode='independent'")
        if needs and (embedded_pair(self.solver) is None or self.num_steps or self.step_size):
            raise checks.bad_value(
                "solver", self.solver, f"an embedded pair without a grid {' and '.join(needs)} ('dopri5', 'tsit5', "
                "'bosh3', 'heun_euler', 'dopri8', 'kvaerno3', 'kvaerno5' or a registered one)"
            )  # fmt: skip
        if getattr(self, "batch_mode", "shared") == "independent":
            if getattr(self, "event_fn", None) is not None:
                if self.gradient not in ("auto", "backprop"):
                    raise checks.bad_value("gradient", self.gradient, "'auto' or 'backprop' with batch_mode="
                                           "'independent' and an event_fn")  # fmt: skip
                return "backprop"
            if self.gradient not in INDEPENDENT_GRADIENTS:
                raise checks.bad_value("gradient", self.gradient, "'auto' (the adjoint), 'adjoint' or 'backprop' "
                                       "with batch_mode='independent'")  # fmt: skip
            return "backprop" if self.gradient == "backprop" else "adjoint"
        return resolve_gradient(self.solver, self.gradient, num_steps=self.num_steps, step_size=self.step_size)

    # -- Keras plumbing -------------------------------------------------------------------
    def _state_shape(self, input_shape):
        shape = tuple(input_shape)
        if self.augment_dims:
            shape = shape[:-1] + (shape[-1] + self.augment_dims,)
        return shape

    def build(self, input_shape):
        y_shape = self._state_shape(input_shape)
        self._y_shape = y_shape
        if not self.field.built:
            params = [
                p
                for p in inspect.signature(self.field.build).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
            if len(params) >= 2:
                self.field.build((), y_shape)
            else:
                self.field(
                    keras.KerasTensor((), dtype=self.compute_dtype),
                    keras.KerasTensor(y_shape, dtype=self.compute_dtype),
                )
        if isinstance(self.event_fn, keras.layers.Layer) and not self.event_fn.built:
            t_shape = (y_shape[0],) + (1,) * (len(y_shape) - 1) if self.batch_mode == "independent" else ()
            self.event_fn(
                keras.KerasTensor(t_shape, dtype=self.compute_dtype),
                keras.KerasTensor(y_shape, dtype=self.compute_dtype),
            )
        self.add_status_weights()  # nfe_forward, nfe_backward, solver_status, time_reached (in this order)
        if self.regularization is not None:  # the last training batch's integrals (batch means)
            self.kinetic, self.jacobian = (
                self.add_weight(name=name, shape=(), dtype="float32", trainable=False, initializer="zeros",
                                aggregation="only_first_replica")
                for name in ("kinetic", "jacobian")
            )  # fmt: skip
            if self.regularization["jacobian"]:
                self._probe_seed = keras.random.SeedGenerator(name="probe_seed")
        self._guard_state = self.add_weight(
            name="tfp_guard",
            shape=(3,),
            dtype="int32",
            trainable=False,
            initializer="zeros",
            aggregation="only_first_replica",
        )

    # -- compilation (odezoo.ode.compilation) -------------------------------------------------
    @property
    def compiled_by(self):
        """``"xla"`` or ``"graph"``: what compiles this block's solve (``compile="auto"`` resolved)."""
        if self._resolved_compile is None:
            self._resolved_compile = resolve_compile(self.compile, self._field_uses_convolution)
        return self._resolved_compile

    def _field_uses_convolution(self):
        if self._y_shape is None:
            raise RuntimeError(f"ODEBlock {self.name!r} is not built: compile='auto' looks at the field's ops.")
        dtype = self.compute_dtype
        field = _Field(self.field, None, dtype, None, None)
        return uses_convolution(field, tf.TensorSpec((), dtype), tf.TensorSpec(self._y_shape, dtype))

    @property
    def supports_jit(self):
        """False when the solve runs in the graph executor: Keras's own XLA would compile it anyway."""
        if self._y_shape is None and self.compile == "auto":
            return True  # not built yet: decided at build
        return self.compiled_by == "xla"

    @supports_jit.setter
    def supports_jit(self, value):
        pass  # keras.layers.Layer.__init__ sets True; here it follows `compile`

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        if self.solution_times is not None:
            return (shape[0], len(self.solution_times)) + shape[1:]
        return shape

    # -- solving ----------------------------------------------------------------------------
    def _solve(self, inputs, training, recompute=False, noise=None, regularize=False):
        dtype = inputs.dtype
        y0 = inputs
        if self.augment_dims:
            pad = [[0, 0]] * (inputs.shape.rank - 1) + [[0, self.augment_dims]]
            y0 = tf.pad(inputs, pad)
        times = self.solution_times if self.solution_times is not None else [self.t1]
        times = tf.constant(times, dtype)
        field = _Field(self.field, training, dtype, None, None)
        fwd, bwd = self.status_hooks()
        if recompute:  # backprop's recompute: its field calls are the backward's
            fwd, bwd = (lambda info: [self.nfe_backward.assign(tf.cast(info["nfe"], tf.int32))]), None
        guard = TFPGuard(self._guard_state, 0) if self.solver in TFP_SOLVERS else None
        if self.event_fn is not None:
            return self._solve_to_event(field, y0, inputs, fwd, bwd)
        options = dict(
            solver=self.solver,
            rtol=self.rtol,
            atol=self.atol,
            first_step=self.first_step,
            max_steps=self.max_steps,
            num_steps=self.num_steps,
            step_size=self.step_size,
            gradient=self.gradient,
            guard=guard,
            controller=self.controller,
            batch_mode=self.batch_mode,
            batch_axis=0,
            on_forward=fwd,
            on_backward=bwd,
        )
        t0 = tf.constant(self.t0, dtype)
        if regularize:  # (states, kinetic, jacobian, info)
            out = regularized_solve(field, y0, t0, times, noise=noise, **options)
        else:
            out = solve(field, y0, t0, times, **options)
        states = out[0]
        if self.augment_dims:
            states = states[..., : inputs.shape[-1]]
        if self.solution_times is None:
            states = states[-1]
        else:
            states = tf.transpose(states, [1, 0] + list(range(2, states.shape.rank)))
        return (states, out[1], out[2]) if regularize else states

    def _solve_to_event(self, field, y0, inputs, on_forward, on_backward):
        from odezoo.ode.events import _wrapped, event_solve  # noqa: PLC0415  (events imports this package)

        dtype = y0.dtype
        training_field = field
        field, event = _wrapped(lambda t, y: training_field(t, y), self.event_fn, dtype, self.batch_mode)
        _, y_event = event_solve(field, event, y0, tf.constant(self.t0, dtype), tf.constant(self.t1, dtype),
                                 solver=self.solver, rtol=self.rtol, atol=self.atol, max_steps=self.max_steps,
                                 gradient=self._gradient_used(), controller=self.controller,
                                 direction=self.event_direction, batch_mode=self.batch_mode, on_forward=on_forward,
                                 on_backward=on_backward)  # fmt: skip
        if self.augment_dims:
            y_event = y_event[..., : inputs.shape[-1]]
        return y_event

    def call(self, inputs, training=None):
        inputs = tf.convert_to_tensor(inputs)
        if inputs.dtype != self.compute_dtype:
            inputs = tf.cast(inputs, self.compute_dtype)
        # a Python flag selects the trace; a symbolic one (rare) falls back to the call context
        training = bool(training) if isinstance(training, (bool, int, np.bool_)) else None
        regularize = bool(training) and self.regularization is not None
        extra = []  # the Hutchinson probe, an input of the compiled solve (backprop's recompute reuses it)
        if regularize and self.regularization["jacobian"]:
            shape = tf.concat([tf.shape(inputs)[:-1], [inputs.shape[-1] + self.augment_dims]], 0)
            extra.append(rademacher(shape, inputs.dtype, self._probe_seed))
        key = (training, regularize)
        fn = self._compiled.get(key)
        if fn is None:
            solve_fn = lambda x, *e: self._solve(x, training, noise=e[0] if e else None, regularize=regularize)  # noqa: E731
            fn = compiled_function(solve_fn, self.compiled_by, reduce_retracing=True)
            self._compiled[key] = fn
        if tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context():
            # in a replica: the counters' ONLY_FIRST_REPLICA assignment is a merge_call, which a
            # nested tf.function cannot hold; the replica step is the compiled function here
            out = self._solve(inputs, training, noise=extra[0] if extra else None, regularize=regularize)
        elif self._gradient_used() == "backprop":
            out = self._backprop_call(fn, inputs, extra, training, regularize)
        else:
            out = fn(inputs, *extra)
        if regularize:
            out, kinetic, jacobian = out
            self._penalty_store().losses.append(regularization_penalty(self.regularization, kinetic, jacobian))
            self.kinetic.assign(tf.cast(tf.reduce_mean(kinetic), tf.float32))
            self.jacobian.assign(tf.cast(tf.reduce_mean(jacobian), tf.float32))
        if tf.executing_eagerly():
            self.check_status(direction="forward")
        return out

    # -- the penalty as a Keras loss, per thread ----------------------------------------------
    # Keras keeps add_loss values in one list per layer; MirroredStrategy traces its replicas in
    # threads, each clearing and reading that list, so a replica's loss could hold another's penalty
    # and miss its own (measured: half the penalty's gradient with two replicas). The block keeps its
    # penalties per thread instead and hands them to Keras's ``losses`` (tests/test_regularization.py).
    def _penalty_store(self):
        store = self.__dict__.get("_penalties")
        if store is None:
            store = self.__dict__["_penalties"] = threading.local()
        if not hasattr(store, "losses"):
            store.losses = []
        return store

    def _get_own_losses(self):
        return super()._get_own_losses() + list(self._penalty_store().losses)

    def _clear_losses(self):
        super()._clear_losses()
        self._penalty_store().losses = []

    def _backprop_call(self, fn, inputs, extra, training, regularize):
        """Backprop through the steps, compiled whatever the caller's context.

        Differentiating a nested ``jit_compile`` function whose while_loop keeps
        its intermediates fails outside XLA ("TensorList crossing the XLA/TF
        boundary"), so the gradient is a second compiled function (compiled as the
        solve is, by :attr:`compiled_by`) that recomputes the solve under a tape and
        returns the VJP (the recompute's field calls are counted in ``nfe_backward``).
        ``extra``: the solve's further inputs (the regularisation's probe), held fixed.
        """
        key = ("vjp", training, regularize)
        vjp = self._compiled.get(key)
        if vjp is None:

            def vjp_fn(x, dys, variables, *e):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = self._solve(x, training, recompute=True, noise=e[0] if e else None, regularize=regularize)
                gx, *gv = tape.gradient(
                    tf.nest.flatten(y), [x] + list(variables), output_gradients=list(dys),
                    unconnected_gradients=tf.UnconnectedGradients.ZERO,
                )  # fmt: skip
                return gx, gv

            vjp = compiled_function(vjp_fn, self.compiled_by, reduce_retracing=True)
            self._compiled[key] = vjp

        @tf.custom_gradient
        def run(x):
            from tensorflow.python.eager import record  # eager custom_gradient keeps the tape recording

            # Read the weights while the tape records, so that it watches them: otherwise, with an
            # unwatched input (the block as the first op on a constant), an eager tape would not
            # record this op at all and the weights' gradient would be None.
            for v in self.trainable_variables:
                tf.identity(v)
            # Trace first, while tapes record: a tape made inside the solve (the Newton Jacobian of
            # an implicit pair, an event's ∂g/∂y) would see nothing if traced under stop_recording.
            fn.get_concrete_function(x, *extra)
            with record.stop_recording():
                outs = tf.nest.flatten(fn(x, *extra))

            def grad(*dys, variables=None):
                variables = list(variables or [])
                dys = [tf.zeros_like(o) if d is None else d for d, o in zip(dys, outs)]
                gx, gv = vjp(x, dys, variables, *extra)
                return gx, list(gv)

            return outs, grad

        outs = run(inputs)
        return tuple(outs) if regularize else outs[0]

    def status_label(self):
        return f"ODEBlock {self.name!r}"

    def get_config(self):
        config = super().get_config()
        config.update(
            field=keras.saving.serialize_keras_object(self.field),
            solver=self.solver,
            rtol=self.rtol,
            atol=self.atol,
            t0=self.t0,
            t1=self.t1,
            solution_times=self.solution_times,
            num_steps=self.num_steps,
            step_size=self.step_size,
            first_step=self.first_step,
            max_steps=self.max_steps,
            gradient=self.gradient,
            augment_dims=self.augment_dims,
            compile=self.compile,
            controller=self.controller,
            batch_mode=self.batch_mode,
            event_fn=None if self.event_fn is None else keras.saving.serialize_keras_object(self.event_fn),
            event_direction=self.event_direction,
            regularization=self.regularization,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["field"] = keras.saving.deserialize_keras_object(config["field"])
        return cls(**config)


__all__ = ["ODEBlock"]
