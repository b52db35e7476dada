"""Mixed precision that is right on this machine: bfloat16 only where its kernels compute correctly.

oneDNN's bfloat16 convolution gradients are wrong for some shapes on some CPUs. On an AMD EPYC
(Zen 4: AVX512-BF16, no AMX) with TensorFlow 2.21, the `jit_bf16:avx512_core_bf16` kernel that
computes a convolution's weight gradient returns NaN or garbage where the kernel is larger than
its input along the first spatial axis (a Conv3D of kernel 3 over 2 frames: conv3d's third block
at 4 frames), while an Intel Xeon's AMX kernels are right and TensorFlow's own kernels
(TF_ENABLE_ONEDNN_OPTS=0) are right everywhere. Which shapes fail depends on the CPU and the
library, so the job asks the machine, once per model it builds or restores: every convolution
computes its output and both gradients (input and kernel) at the shape the model calls it with,
in bfloat16 and in float32 from the same bfloat16-rounded values. A layer whose bfloat16 results
are not finite or differ by more than TOLERANCE computes in float32 from then on (its dtype policy,
saved with the model; logged by name); a machine where a bfloat16 convolution cannot run at all
refuses the setting with exit 2, naming the CPU.
"""

from __future__ import annotations

import logging
import re

import keras
import numpy as np
import tensorflow as tf

log = logging.getLogger("vidtrain")
# bfloat16 keeps 8 significant bits. Measured on an AMD EPYC (Zen 4) over the models' convolutions: oneDNN,
# accumulating in float32, stays within 2.3% of the largest value, TensorFlow's own kernels (sums rounded to
# bfloat16) within 5.5%; the faulty kernel gives NaN, infinity or errors of 90% and more.
TOLERANCE = 0.25
CHECK_BATCH = 2  # clips in the check's batch: the shapes that matter are the layer's other axes
CONVOLUTIONS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.DepthwiseConv1D,
                keras.layers.DepthwiseConv2D, keras.layers.SeparableConv1D, keras.layers.SeparableConv2D,
                keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)


class Bf16Unavailable(RuntimeError):
    """A bfloat16 convolution cannot run on this machine at all."""


def convolutions(model: keras.Model) -> list[keras.layers.Layer]:
    """Every convolution layer of `model`, nested models' (a backbone's) included, computing in bfloat16."""
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, CONVOLUTIONS) and layer.compute_dtype == "bfloat16"]


def bf16_error(layer: keras.layers.Layer, seed: int = 0) -> float:
    """The largest relative error of the layer's bfloat16 output and gradients against float32 (inf
    when one is not finite). Raises Bf16Unavailable when the bfloat16 computation fails outright."""
    shape = (CHECK_BATCH, *layer.input.shape[1:])
    x = _rounded(np.random.default_rng([seed, 0]).standard_normal(shape))
    saved = [keras.ops.convert_to_numpy(w) for w in layer.weights]
    policy = layer.dtype_policy
    try:
        for w, value in zip(layer.weights, saved):
            w.assign(_rounded(value))
        try:
            low = _output_and_gradients(layer, x, seed)
        except tf.errors.OpError as exc:
            raise Bf16Unavailable(f"{layer.name}: {_reason(exc)}") from None
        layer.dtype_policy = "float32"
        high = _output_and_gradients(layer, x, seed)
    finally:
        layer.dtype_policy = policy
        for w, value in zip(layer.weights, saved):
            w.assign(value)
    return max(_relative_error(a, b) for a, b in zip(low, high))


def _output_and_gradients(layer, x: np.ndarray, seed: int) -> list[np.ndarray]:
    """The layer's output at `x` and the gradients of a fixed random projection of it (seeded)."""
    inputs = tf.constant(x)
    variables = [w.value for w in layer.trainable_weights]
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        y = tf.cast(layer(inputs), tf.float32)
        direction = tf.constant(_rounded(np.random.default_rng([seed, 1]).standard_normal(y.shape)))
        loss = tf.reduce_sum(y * direction)
    grads = tape.gradient(loss, [inputs, *variables])
    return [np.asarray(t, np.float64) for t in (y, *grads) if t is not None]


def _reason(exc: BaseException) -> str:
    """The library's own message in an error Keras and TensorFlow wrapped (a call's context, a kernel's name)."""
    text = re.sub(r"\x1b\[[0-9;]*m|\{\{[^}]*\}\}", "", str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(
        ("Exception encountered when calling", "Arguments received", "•"))]
    found = re.search(r"message: (.+)", lines[0]) if lines else None
    return (found[1] if found else lines[0] if lines else type(exc).__name__)[:200]


def _rounded(values: np.ndarray) -> np.ndarray:
    """float32 values that bfloat16 holds exactly: both computations start from the same numbers."""
    return np.asarray(tf.cast(tf.cast(np.asarray(values, np.float32), tf.bfloat16), tf.float32))


def _relative_error(low: np.ndarray, high: np.ndarray) -> float:
    if not np.isfinite(low).all():
        return float("inf")
    scale = np.abs(high).max()
    return float(np.abs(low - high).max() / scale) if scale > 0 else float(np.abs(low).max())


def keep_bf16_correct(model: keras.Model, machine: str) -> list[str]:
    """Check every bfloat16 convolution of `model` (bf16_error) and make those that are wrong here
    compute in float32; returns their names. Raises Bf16Unavailable (naming `machine`) when a
    bfloat16 convolution cannot run here."""
    switched = []
    for layer in convolutions(model):
        try:
            error = bf16_error(layer)
        except Bf16Unavailable as exc:
            raise Bf16Unavailable(f"this machine ({machine}) cannot compute a bfloat16 convolution ({exc})") from None
        if not error <= TOLERANCE:
            layer.dtype_policy = "float32"
            switched.append(layer.name)
            log.warning("VIDTRAIN_MIXED_PRECISION=bf16: layer %s (input %s) computes in float32: its bfloat16 "
                        "gradients are wrong on this machine (relative error %.3g; oneDNN's bfloat16 convolution "
                        "kernels of this CPU)", layer.name, tuple(layer.input.shape[1:]), error)
    return switched
