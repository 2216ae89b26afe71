"""The CIFAR-style network skeleton the discretisation families share (public, for plugin authors).

stem conv3x3 → 3 stages (16/32/64 channels × width, stride 2 between stages)
→ BN-ReLU → global average pooling → classifier. A stage of ``n`` blocks
(depth = 6n + 2, two convolutions per block as in He et al. 2016) is one
:class:`odezoo.layers.DownsampleBlock` (stages 2 and 3) followed by
:class:`odezoo.SchemeBlock` layers run as one :class:`odezoo.layers.SchemeStage`.
"""

from __future__ import annotations

import keras

from odezoo import checks
from odezoo.checks import bad_value
from odezoo._layers import (
    ColumnSampler,
    ConvFieldFactory,
    DownsampleBlock,
    Normalize,
    SchemeBlock,
    SchemeStage,
    make_scheme,
)
from odezoo._scheme import BlockContext

# Raw-pixel statistics per dataset (pixel values as the dataset stores them).
NORMALIZATION = {
    "digits": (4.8842, 6.0168),  # sklearn digits, values 0-16 (mean, std over the 1,797 images)
    "mnist": (33.3184, 78.5675),  # 0-255
    "fashion_mnist": (72.9404, 90.0212),  # 0-255
    "cifar10": ((125.3069, 122.9501, 113.8660), (62.9932, 62.0887, 66.7049)),  # 0-255, per channel
    "unit": (0.0, 1.0),
}
_AUTO = {(8, 8, 1): "digits", (28, 28, 1): "fashion_mnist", (32, 32, 3): "cifar10"}


def valid_depths(limit: int = 110) -> list[int]:
    return [6 * n + 2 for n in range(1, (limit - 2) // 6 + 1)]


def blocks_per_stage(depth) -> int:
    """n for depth = 6n + 2, or a ValueError naming the valid depths."""
    if not checks.is_int(depth) or depth < 8 or (depth - 2) % 6:
        raise bad_value(
            "depth",
            depth,
            "6n+2 with n >= 1, e.g. " + ", ".join(map(str, valid_depths(56))) + ", ..., 110",
        )
    return int(depth - 2) // 6


def normalization_layer(normalization, input_shape):
    """A :class:`Normalize` layer from a dataset name, ``(mean, std)``, ``"auto"`` or None."""
    if normalization == "auto":
        normalization = _AUTO.get(tuple(input_shape), "unit")
    if normalization is None:
        normalization = "unit"
    if isinstance(normalization, str):
        if normalization not in NORMALIZATION:
            raise bad_value(
                "normalization",
                normalization,
                "'auto', None, (mean, std) or one of " + ", ".join(sorted(NORMALIZATION)),
            )
        mean, std = NORMALIZATION[normalization]
    elif isinstance(normalization, (list, tuple)) and len(normalization) == 2:
        mean, std = normalization
    else:
        raise bad_value(
            "normalization", normalization, "'auto', None, (mean, std) or one of " + ", ".join(sorted(NORMALIZATION))
        )
    return Normalize(mean, std, name="normalize")


def check_input_shape(input_shape):
    shape = tuple(input_shape) if isinstance(input_shape, (list, tuple)) else None
    if shape is None or len(shape) != 3 or not all(checks.is_int(d) and d > 0 for d in shape):
        raise bad_value("input_shape", input_shape, "(height, width, channels), positive ints, e.g. (32, 32, 3)")
    return tuple(int(d) for d in shape)


def residual_classifier(
    *,
    name: str,
    scheme: str,
    scheme_options: dict,
    depth: int = 20,
    num_classes: int = 10,
    input_shape=(32, 32, 3),
    width: int = 1,
    h: float = 1.0,
    normalization="auto",
    seed: int | None = None,
    weight_decay: float = 0.0,
    synchronized_bn: bool = False,
    classifier_activation: str | None = "softmax",
    global_columns: int | None = None,
    global_drop_prob: float = 0.5,
) -> keras.Model:
    """Build the shared skeleton with ``scheme`` blocks.

    Args:
        name: the model's name.
        scheme: a registered scheme name; ``scheme_options`` its constructor keywords.
        depth: 6n + 2 (8, 14, 20, 32, 44, 56, 110, ...).
        num_classes: classes of the softmax head.
        input_shape: (H, W, C) of the raw images.
        width: channel multiplier (16/32/64 × width).
        h: step size of every scheme block.
        normalization: "auto" (by input shape: digits, Fashion-MNIST, CIFAR-10),
            a dataset name, (mean, std) or None.
        seed: seed of the stochastic parts (drop-path, stochastic depth).
        weight_decay: L2 on the convolution kernels.
        synchronized_bn: synchronise BatchNorm across replicas (tf.distribute).
        classifier_activation: "softmax" (default) or None for logits.
        global_columns: FractalNet's column count, to sample global drop-path per batch.
        global_drop_prob: probability that a training batch uses global drop-path.
    """
    input_shape = check_input_shape(input_shape)
    n = blocks_per_stage(depth)
    num_classes = checks.integer("num_classes", num_classes, minimum=2)
    width = checks.integer("width", width, minimum=1)
    if classifier_activation not in ("softmax", None):
        raise bad_value("classifier_activation", classifier_activation, "'softmax' or None")
    make_scheme(scheme, scheme_options)  # validate the scheme and its options early
    channels = [16 * width, 32 * width, 64 * width]
    counts = [n, n - 1, n - 1]
    total = sum(counts)
    factory = ConvFieldFactory(weight_decay=weight_decay, synchronized=synchronized_bn)
    bn = dict(momentum=0.9, epsilon=1e-5, synchronized=synchronized_bn)

    inputs = keras.Input(shape=input_shape, name="images")
    x = normalization_layer(normalization, input_shape)(inputs)
    x = keras.layers.Conv2D(
        channels[0], 3, padding="same", use_bias=False, kernel_initializer="he_normal", name="stem_conv"
    )(x)
    x = keras.layers.BatchNormalization(name="stem_bn", **bn)(x)
    x = keras.layers.Activation("relu", name="stem_relu")(x)
    column = None
    if global_columns:
        column = ColumnSampler(global_columns, global_prob=global_drop_prob, seed=seed, name="column_sampler")(x)
    g = 0
    for s, (c, count) in enumerate(zip(channels, counts)):
        if s > 0:
            x = DownsampleBlock(c, weight_decay=weight_decay, synchronized=synchronized_bn, name=f"stage{s + 1}_down")(
                x
            )
        if count == 0:
            continue
        blocks = []
        for b in range(count):
            ctx = BlockContext(block=b, stage=s, stage_length=count, global_block=g, total_blocks=total, seed=seed)
            blocks.append(
                SchemeBlock(scheme, factory, h=h, context=ctx, name=f"stage{s + 1}_block{b + 1}", **scheme_options)
            )
            g += 1
        stage = SchemeStage(blocks, stage=s, name=f"stage{s + 1}")
        x = stage(x, column) if column is not None else stage(x)
    x = keras.layers.BatchNormalization(name="head_bn", **bn)(x)
    x = keras.layers.Activation("relu", name="head_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, activation=classifier_activation, name="classifier", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def ode_classifier(**config):
    """Deprecated: ODE-Net's skeleton moved to its plugin, ``odezoo.plugins.ode.model.ode_classifier``.

    Forwards there with a ``DeprecationWarning``; under another Keras backend it
    raises an error naming the backend it needs.
    """
    import importlib
    import warnings

    warnings.warn(
        "odezoo.nets.ode_classifier moved to odezoo.plugins.ode.model.ode_classifier (the ODE-Net "
        "plugin); the old name will be removed.",
        DeprecationWarning,
        stacklevel=2,
    )
    return importlib.import_module("odezoo.plugins.ode").ode_classifier(**config)


__all__ = [
    "residual_classifier",
    "ode_classifier",
    "blocks_per_stage",
    "valid_depths",
    "normalization_layer",
    "NORMALIZATION",
    "check_input_shape",
]
