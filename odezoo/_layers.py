"""The core's serializable network layers: SchemeBlock, SchemeStage and their fields.

Written with ``keras.ops`` only, so the discretisation families run on any
Keras backend. Every layer names its scheme by registered name in
``get_config``; ``keras.models.load_model`` in a fresh process needs only
``import odezoo``.
"""

from __future__ import annotations

import contextlib

import dataclasses

import keras
from keras import ops

from odezoo import _registry
from odezoo import checks
from odezoo.checks import bad_value, check_keys
from odezoo._scheme import BlockContext, Scheme

_serializable = keras.saving.register_keras_serializable(package="odezoo")
_CONTEXT_KEYS = tuple(f.name for f in dataclasses.fields(BlockContext) if f.name != "column")


def _scheme_class(scheme):
    if isinstance(scheme, str):
        return _registry.get_scheme(scheme)
    if isinstance(scheme, type) and issubclass(scheme, Scheme):
        if scheme.name is None or _registry.get_scheme(scheme.name) is not scheme:
            raise ValueError(
                f"Scheme class {scheme.__qualname__} is not registered; decorate it with "
                "@odezoo.register_scheme(name) so saved models can name it."
            )
        return scheme
    raise TypeError(
        f"`scheme` must be a registered scheme name or class. Received: scheme={scheme!r}. "
        f"Registered: {', '.join(_registry.list_schemes())}."
    )


def make_scheme(scheme, options: dict) -> Scheme:
    """Instantiate a registered scheme with its options, naming bad keys clearly."""
    cls = _scheme_class(scheme)
    check_keys(f"scheme {cls.name!r}", options, cls.option_names())
    return cls(**options)


@contextlib.contextmanager
def frozen_batchnorm_statistics(layers):
    """While fields are re-run (a reconstruction, an iteration), leave BatchNorm's moving statistics alone.

    Keras's BatchNormalization updates moving = moving·momentum + batch·(1 − momentum)
    when training; with momentum 1 the update writes back the same value, so a field
    evaluated several times for one batch (RevNet's reconstruction, an implicit step's
    iterations) still uses the batch statistics, as a single evaluation does, but counts
    the batch once. ``layers``: Keras layers, or the callables of
    :meth:`SchemeBlock.fields_for_training` (their layers are searched); anything else
    (a plain function) is skipped.
    """
    saved = []
    for layer in layers:
        layer = layer.field if isinstance(layer, _TrainingField) else layer
        if not isinstance(layer, keras.layers.Layer):
            continue
        for sub in layer._flatten_layers(include_self=True):
            if isinstance(sub, keras.layers.BatchNormalization):
                saved.append((sub, sub.momentum))
                sub.momentum = 1.0
    try:
        yield
    finally:
        for sub, momentum in saved:
            sub.momentum = momentum


class _TrainingField:
    __slots__ = ("field", "training")

    def __init__(self, field, training):
        self.field, self.training = field, training

    def __call__(self, t, y):
        return self.field(t, y, training=self.training)


@_serializable
class SchemeBlock(keras.layers.Layer):
    """One network block: one ``block_step`` of a registered scheme.

    Args:
        scheme: registered scheme name (or registered class).
        field_factory: callable ``(index, channels) -> keras.Layer`` making the
            block's fields at the widths ``scheme.block_fields(channels)`` asks
            for; each field is called as ``field(t, y)``. Not needed when
            ``fields`` is given.
        h: step size.
        fields: ready-made field layers (what ``from_config`` passes).
        context: a :class:`BlockContext` (or its dict) placing the block in its network.
        **scheme_options: the scheme's constructor keywords.

    Called on ``y`` of shape (batch, ..., channels) it returns
    ``scheme.output(block_step(scheme.init(y)))``, same shape.
    """

    def __init__(
        self,
        scheme,
        field_factory=None,
        *,
        h=1.0,
        fields=None,
        context=None,
        name=None,
        dtype=None,
        trainable=True,
        **scheme_options,
    ):
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        self.scheme = make_scheme(scheme, scheme_options)
        self.scheme_name = self.scheme.name
        self.scheme_options = dict(scheme_options)
        self.h = checks.positive("h", h)
        if fields is None and field_factory is None:
            raise TypeError("SchemeBlock needs a `field_factory` (or ready-made `fields`).")
        self.field_factory = field_factory
        if isinstance(context, dict):
            context = BlockContext(**context)
        self.context = context or BlockContext()
        self.fields = list(fields) if fields is not None else []
        self._fields_given = fields is not None

    @property
    def t(self):
        """The block's depth time, a scalar tensor (Keras layers take tensors positionally)."""
        return ops.convert_to_tensor(self.context.global_block * self.h, dtype=self.compute_dtype)

    def build(self, input_shape):
        channels = input_shape[-1]
        widths = self.scheme.block_fields(channels)
        if not self.fields:
            self.fields = [self.field_factory(i, w) for i, w in enumerate(widths)]
        if len(self.fields) != len(widths):
            raise ValueError(
                f"Scheme {self.scheme_name!r} needs {len(widths)} fields at {channels} channels; "
                f"got {len(self.fields)}."
            )
        for field, width in zip(self.fields, widths):
            if not field.built:
                field.build((), tuple(input_shape[:-1]) + (width,))
        self.scheme.build_block(self)
        # A scheme keeps its random state (drop-path, stochastic depth) on itself, a plain
        # object Keras does not see. Track those SeedGenerators here: the JAX backend threads
        # layer state through its compiled steps explicitly, and an untracked generator is
        # traced as a constant, so every training step would draw the same mask.
        seeds = [v for v in vars(self.scheme).values() if isinstance(v, keras.random.SeedGenerator)]
        if seeds:
            self.scheme_seed_generators = seeds

    def fields_for_training(self, training):
        """The fields as callables ``(t, y)`` that pass ``training`` on explicitly.

        Inside a layer's call Keras propagates ``training`` by itself; a custom
        gradient that re-runs fields during backprop (RevNet) is outside any
        call and must pass it.
        """
        if training is None:
            return list(self.fields)
        return [_TrainingField(f, training) for f in self.fields]

    def advance(self, state, *, training=None, column=None):
        """One ``block_step`` on a scheme state (what a stage calls)."""
        ctx = self.context if column is None else self.context.replace(column=column)
        return self.scheme.block_step(
            self.fields_for_training(training), self.t, state, self.h, training=training, ctx=ctx
        )

    def call(self, inputs, training=None):
        state = self.scheme.init(inputs)
        state = self.advance(state, training=training)
        return self.scheme.output(state)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            scheme=self.scheme_name,
            h=self.h,
            context={k: getattr(self.context, k) for k in _CONTEXT_KEYS},
            scheme_options=dict(self.scheme_options),
        )
        if self.fields:
            config["fields"] = [keras.saving.serialize_keras_object(f) for f in self.fields]
        else:
            config["field_factory"] = keras.saving.serialize_keras_object(self.field_factory)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        options = config.pop("scheme_options", {})
        if "fields" in config:
            config["fields"] = [keras.saving.deserialize_keras_object(f) for f in config["fields"]]
        if "field_factory" in config:
            config["field_factory"] = keras.saving.deserialize_keras_object(config["field_factory"])
        return cls(**config, **options)


@_serializable
class SchemeStage(keras.layers.Layer):
    """A stage of :class:`SchemeBlock` layers run by their scheme's ``run_stage``.

    The stage's input goes through ``scheme.init``, the whole stage through
    ``scheme.run_stage`` (the default calls each block in turn; RevNet replaces
    it to save memory), the result through ``scheme.output``. All blocks share
    one scheme name and options.

    Call: ``stage(y, column=None)``; ``column`` is the family's per-batch choice
    passed to the blocks as ``ctx.column`` (FractalNet's global drop-path).
    """

    def __init__(self, blocks, *, stage=0, name=None, dtype=None, trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        blocks = [keras.saving.deserialize_keras_object(b) if isinstance(b, dict) else b for b in blocks]
        if not blocks:
            raise ValueError("SchemeStage needs at least one block. Received: blocks=[].")
        names = {(b.scheme_name, repr(sorted(b.scheme_options.items()))) for b in blocks}
        if len(names) != 1:
            raise ValueError(f"All blocks of a stage must share one scheme and options; got {sorted(names)}.")
        self.blocks = list(blocks)
        self.stage = int(stage)

    @property
    def scheme(self) -> Scheme:
        return self.blocks[0].scheme

    def build(self, inputs_shape, column_shape=None):
        for block in self.blocks:
            if not block.built:
                block.build(inputs_shape)
        self._inputs_shape = tuple(inputs_shape)

    @property
    def supports_jit(self):
        """The scheme's :meth:`odezoo.Scheme.stage_supports_jit` once built (True before; asked once)."""
        shape = getattr(self, "_inputs_shape", None)
        if shape is None:
            return True
        if getattr(self, "_stage_supports_jit", None) is None:
            self._stage_supports_jit = bool(self.scheme.stage_supports_jit(self.blocks, shape))
        return self._stage_supports_jit

    @supports_jit.setter
    def supports_jit(self, value):  # keras.layers.Layer.__init__ assigns the class default
        pass

    def call(self, inputs, column=None, training=None):
        state = self.scheme.init(inputs)
        ctx = self.blocks[0].context.replace(column=column)
        state = self.scheme.run_stage(self.blocks, state, training=training, ctx=ctx)
        return self.scheme.output(state)

    def compute_output_shape(self, inputs_shape, column_shape=None):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(blocks=[keras.saving.serialize_keras_object(b) for b in self.blocks], stage=self.stage)
        return config


@_serializable
class ConvField(keras.layers.Layer):
    """The families' residual branch: conv3x3-BN-ReLU-conv3x3-BN, width kept.

    Called as ``field(t, y)`` (t is ignored: a network block's field does not
    see depth time). Convolutions have no bias (BatchNorm supplies it).

    Args:
        channels: output channels (must equal the input's).
        weight_decay: L2 penalty on the kernels.
        bn_momentum: BatchNormalization momentum.
        synchronized: synchronise BatchNorm statistics across replicas.
    """

    def __init__(self, channels, *, weight_decay=0.0, bn_momentum=0.9, synchronized=False, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.weight_decay = float(weight_decay)
        self.bn_momentum = float(bn_momentum)
        self.synchronized = bool(synchronized)
        reg = keras.regularizers.L2(self.weight_decay) if self.weight_decay else None
        conv = dict(
            kernel_size=3, padding="same", use_bias=False, kernel_initializer="he_normal", kernel_regularizer=reg
        )
        bn = dict(momentum=self.bn_momentum, epsilon=1e-5, synchronized=self.synchronized)
        self.conv1 = keras.layers.Conv2D(self.channels, name="conv1", **conv)
        self.bn1 = keras.layers.BatchNormalization(name="bn1", **bn)
        self.conv2 = keras.layers.Conv2D(self.channels, name="conv2", **conv)
        self.bn2 = keras.layers.BatchNormalization(name="bn2", **bn)

    def build(self, t_shape, y_shape):
        if y_shape[-1] != self.channels:
            raise ValueError(
                f"ConvField({self.channels}) was given a state with {y_shape[-1]} channels; "
                "a residual field keeps the width."
            )
        shape = tuple(y_shape)
        self.conv1.build(shape)
        self.bn1.build(shape[:-1] + (self.channels,))
        self.conv2.build(shape[:-1] + (self.channels,))
        self.bn2.build(shape[:-1] + (self.channels,))

    def call(self, t, y, training=None):
        z = self.bn1(self.conv1(y), training=training)
        z = ops.relu(z)
        return self.bn2(self.conv2(z), training=training)

    def compute_output_shape(self, t_shape, y_shape):
        return y_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            weight_decay=self.weight_decay,
            bn_momentum=self.bn_momentum,
            synchronized=self.synchronized,
        )
        return config


@_serializable
class ConvFieldFactory:
    """A serializable ``field_factory`` making :class:`ConvField` layers."""

    def __init__(self, *, weight_decay=0.0, bn_momentum=0.9, synchronized=False, prefix="field"):
        self.weight_decay = weight_decay
        self.bn_momentum = bn_momentum
        self.synchronized = synchronized
        self.prefix = prefix

    def __call__(self, index, channels):
        return ConvField(
            channels,
            weight_decay=self.weight_decay,
            bn_momentum=self.bn_momentum,
            synchronized=self.synchronized,
            name=f"{self.prefix}{index}",
        )

    def get_config(self):
        return dict(
            weight_decay=self.weight_decay,
            bn_momentum=self.bn_momentum,
            synchronized=self.synchronized,
            prefix=self.prefix,
        )

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@_serializable
class DownsampleBlock(keras.layers.Layer):
    """The transition between stages: y = shortcut(x) + F(x), halving H and W.

    F is conv3x3(stride 2, to ``channels``)-BN-ReLU-conv3x3-BN; the shortcut is
    the parameter-free "option A" of He et al. (2016): subsample by 2 and pad the
    new channels with zeros. Not an ODE step (the state space changes), so it
    is no scheme's business; it keeps the parameter counts of the papers.
    """

    def __init__(self, channels, *, weight_decay=0.0, bn_momentum=0.9, synchronized=False, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.weight_decay = float(weight_decay)
        self.bn_momentum = float(bn_momentum)
        self.synchronized = bool(synchronized)
        reg = keras.regularizers.L2(self.weight_decay) if self.weight_decay else None
        conv = dict(
            kernel_size=3, padding="same", use_bias=False, kernel_initializer="he_normal", kernel_regularizer=reg
        )
        bn = dict(momentum=self.bn_momentum, epsilon=1e-5, synchronized=self.synchronized)
        self.conv1 = keras.layers.Conv2D(self.channels, strides=2, name="conv1", **conv)
        self.bn1 = keras.layers.BatchNormalization(name="bn1", **bn)
        self.conv2 = keras.layers.Conv2D(self.channels, name="conv2", **conv)
        self.bn2 = keras.layers.BatchNormalization(name="bn2", **bn)

    def build(self, input_shape):
        if input_shape[-1] > self.channels:
            raise ValueError(f"DownsampleBlock widens channels; got {input_shape[-1]} -> {self.channels}.")
        self.conv1.build(input_shape)
        out = self.conv1.compute_output_shape(input_shape)
        self.bn1.build(out)
        self.conv2.build(out)
        self.bn2.build(out)

    def call(self, x, training=None):
        z = ops.relu(self.bn1(self.conv1(x), training=training))
        z = self.bn2(self.conv2(z), training=training)
        short = x[:, ::2, ::2, :]
        extra = self.channels - x.shape[-1]
        if extra:
            short = ops.pad(short, [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]])
        return short + z

    def compute_output_shape(self, input_shape):
        out = self.conv1.compute_output_shape(input_shape)
        return tuple(out[:-1]) + (self.channels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            weight_decay=self.weight_decay,
            bn_momentum=self.bn_momentum,
            synchronized=self.synchronized,
        )
        return config


@_serializable
class Normalize(keras.layers.Layer):
    """(x - mean) / std with constants stored in the config: raw pixels in, normalised out."""

    def __init__(self, mean=0.0, std=1.0, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(m) for m in mean] if isinstance(mean, (list, tuple)) else float(mean)
        self.std = [float(s) for s in std] if isinstance(std, (list, tuple)) else float(std)
        stds = self.std if isinstance(self.std, list) else [self.std]
        if any(not s > 0 for s in stds):
            raise bad_value("std", std, "positive numbers")

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        mean = ops.convert_to_tensor(self.mean, dtype=self.compute_dtype)
        std = ops.convert_to_tensor(self.std, dtype=self.compute_dtype)
        return (x - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(mean=self.mean, std=self.std)
        return config


@_serializable
class ColumnSampler(keras.layers.Layer):
    """Per batch, FractalNet's drop-path mode: a column index for global drop-path, or -1 (local).

    In training, with probability ``global_prob`` one of ``columns`` columns is
    drawn uniformly for the whole network; otherwise -1 asks every join for
    local drop-path. Outside training it returns -1 (the joins then average all
    their inputs). Output: an int32 scalar.
    """

    def __init__(self, columns, *, global_prob=0.5, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.columns = int(columns)
        self.global_prob = float(global_prob)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training:
            return ops.convert_to_tensor(-1, dtype="int32")
        u = keras.random.uniform((2,), seed=self.seed_generator)
        column = ops.minimum(ops.cast(ops.floor(u[1] * self.columns), "int32"), self.columns - 1)
        return ops.where(u[0] < self.global_prob, column, ops.convert_to_tensor(-1, dtype="int32"))

    def compute_output_spec(self, x, training=None):
        return keras.KerasTensor((), dtype="int32")

    def get_config(self):
        config = super().get_config()
        config.update(columns=self.columns, global_prob=self.global_prob, seed=self.seed)
        return config
