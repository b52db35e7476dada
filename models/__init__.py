"""Model builders, one registry. Inputs are uint8 clips [T, H, W, 3]; scaling is in the model."""

from __future__ import annotations

import importlib

# name -> "module:function"; imported on use so that naming a model costs no TensorFlow import.
# The job's settings take the allowed names from here.
REGISTRY = {"conv3d": "models.conv3d:build", "cnn_rnn": "models.cnn_rnn:build"}


def build_model(name: str, num_classes: int, frames: int, height: int, width: int, **options):
    """An uncompiled Keras classifier producing logits over `num_classes`."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; choices: {', '.join(REGISTRY)}")
    module, function = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), function)(num_classes, frames, height, width, **options)
