"""(2+1)D classifier: each 3-D convolution factored into a spatial (1 x k x k) and a temporal
(k x 1 x 1) one (Tran et al., "A Closer Look at Spatiotemporal Convolutions", R(2+1)D), in
residual blocks. Fewer parameters than a full 3-D kernel of the same reach, one more
non-linearity per block, and the spatial convolutions run as 2-D convolutions do on a CPU.
"""

from __future__ import annotations

import keras
from keras import layers

from models.conv3d import BN_MOMENTUM

WIDTHS = (16, 32, 64, 128)
STRIDES = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))  # after a stem that halves the frame, keep time first


def _bn_relu(x):
    return layers.ReLU()(layers.BatchNormalization(momentum=BN_MOMENTUM)(x))


def _conv2plus1d(x, filters: int, strides=(1, 1, 1)):
    """A (2+1)D convolution: 1x3x3 spatial (with the spatial stride), BN-ReLU, 3x1x1 temporal."""
    x = layers.Conv3D(filters, (1, 3, 3), strides=(1, *strides[1:]), padding="same", use_bias=False)(x)
    x = _bn_relu(x)
    return layers.Conv3D(filters, (3, 1, 1), strides=(strides[0], 1, 1), padding="same", use_bias=False)(x)


def _block(x, filters: int, strides):
    shortcut = x
    y = _bn_relu(_conv2plus1d(x, filters, strides))
    y = layers.BatchNormalization(momentum=BN_MOMENTUM)(_conv2plus1d(y, filters))
    if strides != (1, 1, 1) or x.shape[-1] != filters:
        shortcut = layers.Conv3D(filters, 1, strides=strides, use_bias=False)(x)
        shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM)(shortcut)
    return layers.ReLU()(layers.Add()([shortcut, y]))


def build(num_classes: int, frames: int, height: int, width: int, dropout: float = 0.3, **_):
    inputs = keras.Input((frames, height, width, 3), dtype="uint8", name="clip")
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = _bn_relu(layers.Conv3D(WIDTHS[0], (1, 3, 3), strides=(1, 2, 2) if min(height, width) >= 2 else 1,
                               padding="same", use_bias=False)(x))
    for filters, strides in zip(WIDTHS, STRIDES):
        # Never stride a dimension below 1 (short clips, small frames).
        strides = tuple(s if dim // s >= 1 else 1 for s, dim in zip(strides, x.shape[1:4]))
        x = _block(x, filters, strides)
    x = layers.GlobalAveragePooling3D()(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="r2plus1d")
