"""Conv3D classifier: stacked 3-D convolutions see motion directly, as spatio-temporal filters."""

from __future__ import annotations

import keras
from keras import layers

FILTERS = (16, 32, 64, 96)
POOLS = ((1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))  # keep time resolution in the first block
# Moving statistics that keep up with a few hundred steps: at 0.99 validation lagged training by epochs.
BN_MOMENTUM = 0.9


def build(num_classes: int, frames: int, height: int, width: int, dropout: float = 0.3, **_):
    inputs = keras.Input((frames, height, width, 3), dtype="uint8", name="clip")
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    for filters, pool in zip(FILTERS, POOLS):
        x = layers.Conv3D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
        x = layers.ReLU()(x)
        # Never pool a dimension below 1 (short clips, small frames).
        pool = tuple(p if dim // p >= 1 else 1 for p, dim in zip(pool, x.shape[1:4]))
        x = layers.MaxPooling3D(pool)(x)
    x = layers.GlobalAveragePooling3D()(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, name="logits", dtype="float32")(x)  # float32 under mixed precision
    return keras.Model(inputs, outputs, name="conv3d")
