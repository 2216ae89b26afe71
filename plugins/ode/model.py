"""ODE-Net's own layers and model: the conv field, the classifier model and the builder skeleton.

Written against odezoo's public API only (:class:`odezoo.ode.ODEBlock`, the
:mod:`odezoo.ode` status and gate helpers, :mod:`odezoo.checks`, :mod:`odezoo.nets`),
as a third-party plugin would be. TensorFlow only (the ODE solvers are).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from odezoo import checks, nets
from odezoo.ode import ODEBlock, SolvingModel

_serializable = keras.saving.register_keras_serializable(package="odezoo")


@_serializable
class FastGroupNorm(keras.layers.GroupNormalization):
    """Keras's GroupNormalization, computed from per-channel moments (same weights, same result).

    Keras reduces a (N, H, W, G, C/G) reshape over three strided axes, which TensorFlow's
    graph executor runs slowly (1.6 ms of 1.9 per call inside a solve's loop at 128x7x7x64,
    benchmarks/ode/README.md, "Issue 14"). Here: two-pass moments per channel over H, W
    (``tf.nn.moments``), combined per group by the law of total variance, then one
    scale-and-shift. Exact up to rounding. Channels-last 4-D inputs only; anything else
    is Keras's own code.
    """

    def call(self, inputs):
        if inputs.shape.rank != 4 or self.axis not in (-1, 3) or inputs.dtype != tf.float32:
            return super().call(inputs)
        c, g = inputs.shape[-1], self.groups
        mean_c, var_c = tf.nn.moments(inputs, [1, 2])  # (N, C)
        mean_c, var_c = tf.reshape(mean_c, [-1, g, c // g]), tf.reshape(var_c, [-1, g, c // g])
        mean = tf.reduce_mean(mean_c, -1, keepdims=True)
        var = tf.reduce_mean(var_c + tf.square(mean_c - mean), -1, keepdims=True)
        inv = tf.math.rsqrt(var + self.epsilon)
        if self.scale:
            inv = inv * tf.reshape(tf.cast(self.gamma, inputs.dtype), [g, c // g])
        shift = -mean * inv
        if self.center:
            shift = shift + tf.reshape(tf.cast(self.beta, inputs.dtype), [g, c // g])
        return inputs * tf.reshape(inv, [-1, 1, 1, c]) + tf.reshape(shift, [-1, 1, 1, c])


@_serializable
class ODEConvField(keras.layers.Layer):
    """ODE-Net's field (Chen et al. 2018): GN-ReLU-ConcatConv-GN-ReLU-ConcatConv-GN.

    Each "ConcatConv" is a 3x3 convolution of the state with ``t`` appended as a
    constant channel, so the field sees time. GroupNorm (not BatchNorm, whose
    statistics would update on every field evaluation, the adjoint's included).

    Computed without the concatenation (the kernel is still (3, 3, channels + 1,
    channels), t's input channel last): conv(y ++ t) = conv(y, K[:, :, :C]) +
    t·conv(1, K[:, :, C:]), the second term a (1, H, W, C) map the zero padding of the
    t channel shapes at the borders. It saves a copy of the state per convolution and
    keeps the convolution at C input channels, which oneDNN runs much faster than C + 1
    (a field evaluation with its VJP: 16.9 -> 11.6 ms with :class:`FastGroupNorm`, at
    128x7x7x64; benchmarks/ode/README.md, "Issue 14").

    Args:
        channels: the state's channels (kept).
        groups: GroupNorm groups (default min(32, channels)).
    """

    def __init__(self, channels, *, groups=None, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.groups = int(groups) if groups is not None else min(32, self.channels)
        if self.channels % self.groups:
            raise checks.bad_value("groups", groups, f"a divisor of channels={self.channels}")
        # sublayers compute in this layer's dtype (float32 under a mixed policy), not the global one
        gn = dict(groups=self.groups, epsilon=1e-5, dtype=self.dtype_policy)
        conv = dict(padding="same", dtype=self.dtype_policy)
        self.norm1 = FastGroupNorm(name="norm1", **gn)
        self.conv1 = keras.layers.Conv2D(self.channels, 3, name="conv1", **conv)
        self.norm2 = FastGroupNorm(name="norm2", **gn)
        self.conv2 = keras.layers.Conv2D(self.channels, 3, name="conv2", **conv)
        self.norm3 = FastGroupNorm(name="norm3", **gn)

    def build(self, t_shape, y_shape):
        if y_shape[-1] != self.channels:
            raise ValueError(f"ODEConvField({self.channels}) was given a state with {y_shape[-1]} channels.")
        shape = tuple(y_shape)
        with_t = shape[:-1] + (self.channels + 1,)
        self.norm1.build(shape)
        self.conv1.build(with_t)
        self.norm2.build(shape)
        self.conv2.build(with_t)
        self.norm3.build(shape)

    def _concat_conv(self, conv, t, z):
        """``conv(z ++ t)`` (t a constant last channel) without building ``z ++ t``."""
        kernel = ops.cast(conv.kernel, z.dtype)
        c = self.channels
        out = ops.conv(z, kernel[:, :, :c, :], strides=1, padding="same")
        t_map = ops.conv(ops.ones_like(z[:1, :, :, :1]), kernel[:, :, c:, :], strides=1, padding="same")
        return out + ops.cast(t, z.dtype) * t_map + ops.cast(conv.bias, z.dtype)

    def call(self, t, y):
        z = ops.relu(self.norm1(y))
        z = self._concat_conv(self.conv1, t, z)
        z = ops.relu(self.norm2(z))
        z = self._concat_conv(self.conv2, t, z)
        return self.norm3(z)

    def compute_output_shape(self, t_shape, y_shape):
        return y_shape

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, groups=self.groups)
        return config


@_serializable
class ODEClassifier(SolvingModel, keras.Model):
    """A functional classifier with :class:`ODEBlock` layers (ODE-Net, RK-Net).

    Adds ``nfe_forward`` / ``nfe_backward`` (summed over its ODE blocks) to the
    ``fit`` / ``evaluate`` logs, and with regularised blocks ``kinetic`` / ``jacobian`` (their
    integrals' batch means, summed over the blocks) to the ``fit`` logs. A batch whose solve failed applies no update
    (the optimizer's apply is gated on the blocks' ``solver_status`` inside the
    compiled step, on one device and under a ``tf.distribute`` strategy: see
    ``odezoo.ode.gate``), and ``fit``, ``evaluate``,
    ``predict`` and the ``*_on_batch`` methods raise :class:`odezoo.SolverError` after it
    (:class:`odezoo.ode.SolvingModel`).
    """

    def ode_blocks(self):
        return [layer for layer in self._flatten_layers() if isinstance(layer, ODEBlock)]

    def solving_layers(self):
        return self.ode_blocks()

    def _nfe_logs(self, backward=True):
        logs = super()._nfe_logs(backward)
        regularized = [b for b in self.ode_blocks() if b.regularization is not None] if backward else []
        for name in ("kinetic", "jacobian") if regularized else ():  # the training batch's integrals
            logs[name] = tf.add_n([getattr(b, name).value for b in regularized])
        return logs


STEMS = ("same", "reference")


def _stem(x, channels, groups, stem):
    """The downsampling stem: H x W -> the ODE state.

    ``"same"`` (odezoo's default, what the shipped weights were trained with): every
    convolution padded "same", 28 -> 28 -> 14 -> 7 (8 -> 8 -> 4 -> 2 on the digits).
    ``"reference"``: torchdiffeq's ``examples/odenet_mnist.py`` exactly, an unpadded first
    convolution and one pixel of padding for the strided ones, 28 -> 26 -> 13 -> 6: a 6x6
    state, 36/49 of the field's work per evaluation at the same parameter count. (On 8x8
    digits it leaves a 1x1 state: use "same" there.)
    """
    pad = stem == "reference"
    x = keras.layers.Conv2D(channels, 3, padding="valid" if pad else "same", name="stem_conv1")(x)
    x = keras.layers.GroupNormalization(groups, epsilon=1e-5, name="stem_norm1")(x)
    x = keras.layers.ReLU(name="stem_relu1")(x)
    for i in (2, 3):
        if pad:
            x = keras.layers.ZeroPadding2D(1, name=f"stem_pad{i}")(x)
        x = keras.layers.Conv2D(channels, 4, strides=2, padding="valid" if pad else "same", name=f"stem_conv{i}")(x)
        if i == 2:
            x = keras.layers.GroupNormalization(groups, epsilon=1e-5, name="stem_norm2")(x)
            x = keras.layers.ReLU(name="stem_relu2")(x)
    return x


def ode_classifier(
    *,
    name,
    input_shape,
    num_classes,
    solver,
    rtol,
    atol,
    num_steps=None,
    step_size=None,
    first_step=None,
    max_steps=10000,
    gradient="auto",
    channels=64,
    augment_dims=0,
    normalization="auto",
    classifier_activation="softmax",
    t1=1.0,
    stem="same",
    compile="auto",
    regularization=None,
):
    """ODE-Net / RK-Net (Chen et al. 2018, MNIST): conv stem, one ODE block, pooling, classifier.

    Stem (:func:`_stem`): conv3x3(channels) -> GN-ReLU -> conv4x4/2 -> GN-ReLU -> conv4x4/2;
    then :class:`ODEBlock` with an :class:`ODEConvField`; then GN-ReLU, global
    average pooling and a dense head. About 0.21M parameters at (28, 28, 1).
    """
    input_shape = nets.check_input_shape(input_shape)
    checks.integer("num_classes", num_classes, minimum=2)
    checks.positive_int("channels", channels)
    checks.choice("stem", stem, STEMS)
    if classifier_activation not in ("softmax", None):
        raise checks.bad_value("classifier_activation", classifier_activation, "'softmax' or None")
    groups = min(32, channels)
    if channels % groups:
        raise checks.bad_value("channels", channels, "a multiple of 32, or at most 32")
    width = channels + augment_dims
    inputs = keras.Input(input_shape, name="pixels")
    x = nets.normalization_layer(normalization, input_shape)(inputs)
    x = _stem(x, channels, groups, stem)
    field_groups = groups if width % groups == 0 else 1
    field = ODEConvField(width, groups=field_groups, name="field", dtype="float32")  # solved in float32
    x = ODEBlock(
        field,
        solver=solver,
        rtol=rtol,
        atol=atol,
        num_steps=num_steps,
        step_size=step_size,
        first_step=first_step,
        max_steps=max_steps,
        gradient=gradient,
        augment_dims=augment_dims,
        t1=t1,
        compile=compile,
        regularization=regularization,
        name="ode_block",
    )(x)
    x = keras.layers.GroupNormalization(groups, epsilon=1e-5, name="head_norm")(x)
    x = keras.layers.ReLU(name="head_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, activation=classifier_activation, name="classifier", dtype="float32")(x)
    return ODEClassifier(inputs, outputs, name=name)


__all__ = ["FastGroupNorm", "ODEConvField", "ODEClassifier", "ode_classifier", "STEMS"]
