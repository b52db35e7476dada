"""The training recipe: learning-rate schedule, optimizer and loss, from the settings.

The rate is a pure function of (epoch, step) and the settings, set on the optimizer before every
step by the loop, never stored in a checkpoint: a resumed job trains with the rate its settings
give now (LEARNING_RATE, LR_SCHEDULE, WARMUP_EPOCHS, EPOCHS may change on resume; the log says
so). Likewise the optimizer's weight decay and gradient clipping are set from the settings after a
checkpoint's optimizer state (moments, iterations) is restored, and label smoothing lives in the
loss the loop computes.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from vidtrain.settings import Settings

WARMUP_START = 0.1  # warm-up ramps linearly from this share of LEARNING_RATE (MMAction2's start_factor)


def learning_rate(settings: Settings, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The rate of step `step` (0-based) of epoch `epoch` (0-based): a linear warm-up over
    WARMUP_EPOCHS from WARMUP_START x LEARNING_RATE, then LEARNING_RATE (constant) or a cosine
    decay to 0 at the end of EPOCHS (Keras's CosineDecay)."""
    base, total = settings.learning_rate, settings.epochs * steps_per_epoch
    warmup = min(int(round(settings.warmup_epochs * steps_per_epoch)), total)
    now = epoch * steps_per_epoch + step
    if settings.lr_schedule == "constant":
        if now >= warmup:
            return base
        return base * (WARMUP_START + (1 - WARMUP_START) * now / warmup)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=base * WARMUP_START if warmup else base, decay_steps=max(total - warmup, 1),
        warmup_target=base if warmup else None, warmup_steps=warmup)
    return float(schedule(min(now, total)))


def optimizer(settings: Settings) -> keras.optimizers.Optimizer:
    """AdamW: Adam with decoupled weight decay (WEIGHT_DECAY, 0 = plain Adam; Keras 3 applies every
    optimizer's `weight_decay` decoupled, as AdamW does), global-norm gradient clipping
    (GRAD_CLIP_NORM, 0 = off). The rate is set per step (`learning_rate`)."""
    opt = keras.optimizers.Adam(learning_rate=settings.learning_rate)
    if settings.mixed_precision == "fp16":  # float16 gradients underflow without a dynamic loss scale
        opt = keras.optimizers.LossScaleOptimizer(opt)
    apply(opt, settings)
    return opt


def apply(opt: keras.optimizers.Optimizer, settings: Settings) -> None:
    """Set the settings' weight decay and clipping on `opt` (also on one restored from a checkpoint),
    before its update is traced."""
    inner = getattr(opt, "inner_optimizer", opt)
    inner.weight_decay = settings.weight_decay or None
    inner.global_clipnorm = settings.grad_clip_norm or None
    inner.clipnorm = inner.clipvalue = None


def loss_per_clip(num_classes: int, label_smoothing: float):
    """(labels int [B], logits [B, C]) -> cross-entropy per clip, with labels smoothed by
    `label_smoothing` (the target is 1 - s on the true class plus s / C on every class)."""
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing, reduction=None)

    def per_clip(labels, logits):
        return loss(tf.one_hot(labels, num_classes, dtype=logits.dtype), logits)

    return per_clip

