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
from odezoo.ode import GatedApply, ODEBlock, SolverChecked

_serializable = keras.saving.register_keras_serializable(package="odezoo")


@_serializable
class ODEConvField(keras.layers.Layer):
    """ODE-Net's field (Chen et al. 2018): GN-ReLU-ConcatConv-GN-ReLU-ConcatConv-GN.

    Each "ConcatConv" is a 3x3 convolution of the state with ``t`` appended as a
    constant channel, so the field sees time. GroupNorm (not BatchNorm, whose
    statistics would update on every field evaluation, the adjoint's included).

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
        self.norm1 = keras.layers.GroupNormalization(name="norm1", **gn)
        self.conv1 = keras.layers.Conv2D(self.channels, 3, name="conv1", **conv)
        self.norm2 = keras.layers.GroupNormalization(name="norm2", **gn)
        self.conv2 = keras.layers.Conv2D(self.channels, 3, name="conv2", **conv)
        self.norm3 = keras.layers.GroupNormalization(name="norm3", **gn)

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

    @staticmethod
    def _concat_t(t, y):
        tt = ops.ones_like(y[..., :1]) * ops.cast(t, y.dtype)
        return ops.concatenate([y, tt], axis=-1)

    def call(self, t, y):
        z = ops.relu(self.norm1(y))
        z = self.conv1(self._concat_t(t, z))
        z = ops.relu(self.norm2(z))
        z = self.conv2(self._concat_t(t, z))
        return self.norm3(z)

    def compute_output_shape(self, t_shape, y_shape):
        return y_shape

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, groups=self.groups)
        return config


@_serializable
class ODEClassifier(SolverChecked, keras.Model):
    """A functional classifier with :class:`ODEBlock` layers (ODE-Net, RK-Net).

    Adds ``nfe_forward`` / ``nfe_backward`` (summed over its ODE blocks) to the
    ``fit`` / ``evaluate`` logs. A batch whose solve failed applies no update
    (the optimizer's apply is gated on the blocks' ``solver_status`` inside the
    compiled step, on one device and under a ``tf.distribute`` strategy: see
    ``odezoo.ode.gate``), and ``fit``, ``evaluate``,
    ``predict`` and the ``*_on_batch`` methods raise :class:`odezoo.SolverError` after it.
    """

    def ode_blocks(self):
        return [layer for layer in self._flatten_layers() if isinstance(layer, ODEBlock)]

    def _nfe_logs(self, backward=True):
        blocks = self.ode_blocks()
        logs = {"nfe_forward": tf.add_n([tf.cast(b.nfe_forward.value, tf.float32) for b in blocks])}
        if backward:
            logs["nfe_backward"] = tf.add_n([tf.cast(b.nfe_backward.value, tf.float32) for b in blocks])
        return logs

    def train_step(self, data):
        blocks = self.ode_blocks()
        if blocks and self.optimizer is not None:
            reasons = lambda: [b.solver_status.value[:2] for b in blocks]  # noqa: E731  [forward, backward]
            with GatedApply(self.optimizer, reasons, self.trainable_variables):
                logs = super().train_step(data)
        else:
            logs = super().train_step(data)
        logs = dict(logs)
        logs.update(self._nfe_logs())
        return logs

    def test_step(self, data):
        logs = dict(super().test_step(data))
        logs.update(self._nfe_logs(backward=False))
        return logs

    def _solver_checks(self):
        return self.ode_blocks()


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
):
    """ODE-Net / RK-Net (Chen et al. 2018, MNIST): conv stem, one ODE block, pooling, classifier.

    Stem: conv3x3(channels) -> GN-ReLU -> conv4x4/2 -> GN-ReLU -> conv4x4/2 (H/4 x W/4);
    then :class:`ODEBlock` with an :class:`ODEConvField`; then GN-ReLU, global
    average pooling and a dense head. About 0.21M parameters at (28, 28, 1).
    """
    input_shape = nets.check_input_shape(input_shape)
    checks.integer("num_classes", num_classes, minimum=2)
    checks.positive_int("channels", channels)
    if classifier_activation not in ("softmax", None):
        raise checks.bad_value("classifier_activation", classifier_activation, "'softmax' or None")
    groups = min(32, channels)
    if channels % groups:
        raise checks.bad_value("channels", channels, "a multiple of 32, or at most 32")
    width = channels + augment_dims
    inputs = keras.Input(input_shape, name="pixels")
    x = nets.normalization_layer(normalization, input_shape)(inputs)
    x = keras.layers.Conv2D(channels, 3, padding="same", name="stem_conv1")(x)
    x = keras.layers.GroupNormalization(groups, epsilon=1e-5, name="stem_norm1")(x)
    x = keras.layers.ReLU(name="stem_relu1")(x)
    x = keras.layers.Conv2D(channels, 4, strides=2, padding="same", name="stem_conv2")(x)
    x = keras.layers.GroupNormalization(groups, epsilon=1e-5, name="stem_norm2")(x)
    x = keras.layers.ReLU(name="stem_relu2")(x)
    x = keras.layers.Conv2D(channels, 4, strides=2, padding="same", name="stem_conv3")(x)
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
        name="ode_block",
    )(x)
    x = keras.layers.GroupNormalization(groups, epsilon=1e-5, name="head_norm")(x)
    x = keras.layers.ReLU(name="head_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, activation=classifier_activation, name="classifier", dtype="float32")(x)
    return ODEClassifier(inputs, outputs, name=name)


__all__ = ["ODEConvField", "ODEClassifier", "ode_classifier"]
