"""A CIFAR ResNet written directly in plain Keras (functional API), without odezoo.

The reference for ``step_time.py`` and ``memory.py``: the same architecture as
``odezoo.build("resnet", depth=...)`` — raw pixels normalised inside,
stem conv3x3-BN-ReLU, three stages of 16/32/64 channels, stages 2-3 opened by a
stride-2 block with the parameter-free option-A shortcut (subsample, zero-pad
channels), every other block y + F(y) with F = conv3x3-BN-ReLU-conv3x3-BN and no
post-activation, then BN-ReLU, global average pooling and a softmax Dense.
"""

import keras
from keras import ops

CIFAR10_MEAN = (125.3069, 122.9501, 113.8660)
CIFAR10_STD = (62.9932, 62.0887, 66.7049)

_BN = dict(momentum=0.9, epsilon=1e-5)
_CONV = dict(kernel_size=3, padding="same", use_bias=False, kernel_initializer="he_normal")


def _branch(x, channels, strides, name):
    z = keras.layers.Conv2D(channels, strides=strides, name=f"{name}_conv1", **_CONV)(x)
    z = keras.layers.BatchNormalization(name=f"{name}_bn1", **_BN)(z)
    z = keras.layers.Activation("relu", name=f"{name}_relu")(z)
    z = keras.layers.Conv2D(channels, name=f"{name}_conv2", **_CONV)(z)
    return keras.layers.BatchNormalization(name=f"{name}_bn2", **_BN)(z)


def plain_resnet(depth=20, num_classes=10, input_shape=(32, 32, 3)):
    """ResNet-``depth`` (6n + 2) for CIFAR in plain Keras; returns a keras.Model."""
    n = (depth - 2) // 6
    inputs = keras.Input(shape=input_shape, name="images")
    mean = ops.convert_to_tensor(CIFAR10_MEAN, dtype="float32")
    std = ops.convert_to_tensor(CIFAR10_STD, dtype="float32")
    x = (inputs - mean) / std
    x = keras.layers.Conv2D(16, name="stem_conv", **_CONV)(x)
    x = keras.layers.BatchNormalization(name="stem_bn", **_BN)(x)
    x = keras.layers.Activation("relu", name="stem_relu")(x)
    for s, channels in enumerate((16, 32, 64)):
        for b in range(n):
            name = f"s{s + 1}b{b + 1}"
            if s > 0 and b == 0:
                z = _branch(x, channels, 2, name)
                short = x[:, ::2, ::2, :]
                extra = channels - x.shape[-1]
                short = ops.pad(short, [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]])
                x = keras.layers.Add(name=f"{name}_add")([short, z])
            else:
                x = keras.layers.Add(name=f"{name}_add")([x, _branch(x, channels, 1, name)])
    x = keras.layers.BatchNormalization(name="head_bn", **_BN)(x)
    x = keras.layers.Activation("relu", name="head_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name=f"plain_resnet{depth}")
