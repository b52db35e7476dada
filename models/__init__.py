"""Model builders, one registry. Inputs are uint8 clips [T, H, W, 3]; scaling is in the model."""

from __future__ import annotations

import importlib

# name -> "module:function"; imported on use so that naming a model costs no TensorFlow import.
# The job's settings take the allowed names from here.
REGISTRY = {"conv3d": "models.conv3d:build", "cnn_rnn": "models.cnn_rnn:build", "r2plus1d": "models.r2plus1d:build",
            "tsn": "models.video2d:build_tsn", "tsm": "models.video2d:build_tsm"}
# tsn and tsm's per-frame backbones: name -> (keras.applications constructor, its preprocessing module,
# whether the model includes that preprocessing itself). IMAGENET_FILES: the file of each one's ImageNet
# weights without the classifier (include_top=False) that Keras downloads into $KERAS_HOME/models
# (~/.keras/models), where it may be placed beforehand on a machine without the download.
BACKBONE_MODELS = ("tsn", "tsm")  # the models built on one of these backbones
BACKBONE_LAYER = "backbone"  # their backbone's layer name (FREEZE_BACKBONE_EPOCHS freezes it)
BACKBONE_MIN_SIZE = 32  # keras.applications' smallest input
BACKBONES = {
    "mobilenet_v3_small": ("MobileNetV3Small", "mobilenet_v3", True),
    "mobilenet_v3_large": ("MobileNetV3Large", "mobilenet_v3", True),
    "efficientnet_v2_b0": ("EfficientNetV2B0", "efficientnet_v2", True),
    "resnet50": ("ResNet50", "resnet50", False),
}


def build_model(name: str, num_classes: int, frames: int, height: int, width: int, **options):
    """An uncompiled Keras classifier producing logits over `num_classes`."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; choices: {', '.join(REGISTRY)}")
    module, function = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), function)(num_classes, frames, height, width, **options)
IMAGENET_FILES = {
    "mobilenet_v3_small": "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
    "mobilenet_v3_large": "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
    "efficientnet_v2_b0": "efficientnetv2-b0_notop.h5",
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
}
