"""The training recipe: learning-rate schedule, optimizer and loss, from the settings.

The rate is a pure function of (epoch, step), the epoch its schedule began at and the settings,
set on the optimizer before every step by the loop, never stored in a checkpoint: a resumed job
trains with the rate its settings give now (LEARNING_RATE, LR_SCHEDULE, WARMUP_EPOCHS, EPOCHS may
change on resume; the log says so). Raising EPOCHS mid-run stretches the schedule; raising it
after the run ended begins a new schedule at that epoch (`schedule_start`). Likewise the
optimizer's weight decay and gradient clipping are set from the settings after a checkpoint's
optimizer state (moments, iterations) is restored, and label smoothing lives in the loss the
loop computes.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from vidtrain.settings import Settings

WARMUP_START = 0.1  # warm-up ramps linearly from this share of LEARNING_RATE (MMAction2's start_factor)


def learning_rate(settings: Settings, epoch: int, step: int, steps_per_epoch: int, start: int = 0) -> float:
    """The rate of step `step` (0-based) of epoch `epoch` (0-based) in a schedule that began at epoch
    `start` (0, or where a finished run was continued: `schedule_start`): a linear warm-up over
    WARMUP_EPOCHS from WARMUP_START x LEARNING_RATE, then LEARNING_RATE (constant) or a cosine decay
    to 0 at the end of EPOCHS (Keras's CosineDecay)."""
    base, total = settings.learning_rate, (settings.epochs - start) * steps_per_epoch
    warmup = min(int(round(settings.warmup_epochs * steps_per_epoch)), total)
    now = (epoch - start) * steps_per_epoch + step
    if settings.lr_schedule == "constant":
        if now >= warmup:
            return base
        return base * (WARMUP_START + (1 - WARMUP_START) * now / warmup)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=base * WARMUP_START if warmup else base, decay_steps=max(total - warmup, 1),
        warmup_target=base if warmup else None, warmup_steps=warmup)
    return float(schedule(min(now, total)))


def schedule_start(epoch: int, step: int, start: int, epochs_then: int | None, epochs: int) -> int:
    """The epoch the rate schedule of a resumed run begins at. A run resumed at `epoch`, `step` of a
    schedule that began at `start` and was to end at `epochs_then`, keeps it, stretched to today's
    EPOCHS; a run whose schedule had ended (its last epoch done) and that is given more EPOCHS begins
    a new one there: a warm-up again, then the decay over the epochs added (a warm restart, as SGDR:
    from a cosine's end the rate would jump back to the middle of the curve, with no warm-up)."""
    ended = epochs_then is not None and step == 0 and epoch >= epochs_then
    return epoch if ended and epochs > epoch else start


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

