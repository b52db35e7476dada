"""Training: model.fit fed by the loader, with resume, graceful stop and metrics.

Position bookkeeping: `epoch` epochs done plus `batch` batches of the next.
A job stopped mid-epoch checkpoints that position; the restarted job builds
the rest of that epoch from the same (seed, epoch) order, starting at
`batch`, so no clip is trained twice in one epoch.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from dataclasses import dataclass, field

import keras

from loader import VideoSequence, flip_label_map, to_tf_dataset
from models import build_model
from vidtrain.checkpoint import Checkpointer, Position
from vidtrain.data import Splits
from vidtrain.metrics import JobMetrics
from vidtrain.settings import Settings

log = logging.getLogger("vidtrain")


class StopRequest:
    """Set by the signal handler (main thread), read by the training loop (main thread)."""

    signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        """Handle SIGTERM and SIGINT: the first asks for a checkpoint and a clean stop; a second
        SIGINT interrupts at once. Call again after anything that takes the signals over
        (creating a MultiWorkerMirroredStrategy replaces the SIGTERM handler)."""
        def handle(signum, frame):
            log.warning("%s received: stopping after the current step", signal.Signals(signum).name)
            self.signum = signum
            signal.signal(signal.SIGINT, signal.default_int_handler)

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)


@dataclass
class Outcome:
    model: keras.Model
    history: dict
    stopped: bool
    resumed_from: tuple[int, int] | None
    fit_seconds: float
    clips_trained: int
    skipped: list = field(default_factory=list)


def sequences(settings: Settings, splits: Splits, metrics: JobMetrics,
              shard: tuple[int, int] = (0, 1)) -> tuple[VideoSequence, VideoSequence]:
    """The training sequence (of this worker's shard) and the validation sequence (all of it)."""
    common = dict(batch_size=settings.batch_size, frames=settings.frames, size=(settings.height, settings.width),
                  on_bad_video=settings.on_bad_video, device=settings.decode_device, metrics=metrics)
    flips = flip_label_map(splits.class_names) if settings.augment_flip else None
    train = VideoSequence(splits.train, shuffle=True, seed=settings.seed, sampling=settings.sampling,
                          flip_labels=flips, shard=shard, **common)
    val = VideoSequence(splits.val, shuffle=False, sampling="uniform", **common)
    return train, val


def new_model(settings: Settings, num_classes: int) -> keras.Model:
    model = build_model(settings.model, num_classes, settings.frames, settings.height, settings.width,
                        rnn_cell=settings.rnn_cell)
    if settings.pretrained_weights:
        model.load_weights(settings.pretrained_weights)
    model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def record_epoch(history: dict, metrics: JobMetrics, epochs_done: int, logs: dict) -> None:
    """A finished epoch's logs (loss, accuracy, val_loss, val_accuracy) into history and gauges."""
    for key, value in logs.items():
        history.setdefault(key, []).append(float(value))
    metrics.epoch.set(epochs_done)
    for split, prefix in (("train", ""), ("val", "val_")):
        if f"{prefix}loss" in logs:
            metrics.loss.labels(split).set(logs[f"{prefix}loss"])
            metrics.accuracy.labels(split).set(logs[f"{prefix}accuracy"])


class JobCallback(keras.callbacks.Callback):
    """Metrics, checkpoints and graceful stop: together, because all three need the position."""

    def __init__(self, metrics: JobMetrics, checkpointer: Checkpointer, stop: StopRequest, batches_per_epoch: int,
                 first_batch: int, history: dict):
        super().__init__()
        self.metrics, self.checkpointer, self.stop = metrics, checkpointer, stop
        self.batches_per_epoch, self.first_batch, self.history = batches_per_epoch, first_batch, history
        self.stopped_at: tuple[int, int] | None = None
        self._epoch = 0
        self._step_started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._step_started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.metrics.train_step.observe(time.perf_counter() - self._step_started)
        self.metrics.batches.labels("train").inc()
        done = self.first_batch + batch + 1
        if self.stop.requested and done < self.batches_per_epoch and self.stopped_at is None:
            self.stopped_at = (self._epoch, done)
            self.checkpointer.save(self.model, self._epoch, done, self.history)
            log.info("stop requested: checkpoint at epoch %d, batch %d/%d", self._epoch, done,
                     self.batches_per_epoch)
        if self.stop.requested:
            self.model.stop_training = True

    def on_test_batch_end(self, batch, logs=None):
        self.metrics.batches.labels("val").inc()

    def on_epoch_end(self, epoch, logs=None):
        if self.stopped_at is not None:
            return  # a partial epoch: already checkpointed, and not part of the history
        self.first_batch = 0
        record_epoch(self.history, self.metrics, epoch + 1, logs or {})
        self.checkpointer.save(self.model, epoch + 1, 0, self.history)


def train(settings: Settings, splits: Splits, metrics: JobMetrics, stop: StopRequest) -> Outcome:
    keras.utils.set_random_seed(settings.seed)
    train_seq, val_seq = sequences(settings, splits, metrics)
    checkpointer = Checkpointer(settings.output_dir / "checkpoints")
    position = checkpointer.latest()
    if position is None:
        model, epoch, batch, history = new_model(settings, len(splits.class_names)), 0, 0, {}
    else:
        model, epoch, batch, history = _resume(position)
    n = len(train_seq)
    callback = JobCallback(metrics, checkpointer, stop, n, batch, history)
    # Validation cycles one infinite loader, like training: Keras keeps one iterator for the whole fit.
    val_data = to_tf_dataset(val_seq, settings.loader_workers, settings.prefetch_batches, infinite=True,
                             metrics=metrics, stop_when=lambda: stop.requested)
    fit = dict(validation_data=val_data, validation_steps=len(val_seq), shuffle=False,
               callbacks=[callback, keras.callbacks.TerminateOnNaN()], verbose=1 if sys.stdout.isatty() else 2)
    loader = dict(workers=settings.loader_workers, depth=settings.prefetch_batches, metrics=metrics)
    started, start = time.perf_counter(), (epoch, batch)
    if batch and epoch < settings.epochs and not stop.requested:  # finish the interrupted epoch first
        train_seq.set_epoch(epoch)
        model.fit(to_tf_dataset(train_seq, start=batch, **loader), initial_epoch=epoch, epochs=epoch + 1,
                  steps_per_epoch=n - batch, **fit)
        epoch += callback.stopped_at is None
    if epoch < settings.epochs and not stop.requested:
        train_seq.set_epoch(epoch)
        model.fit(to_tf_dataset(train_seq, infinite=True, **loader), initial_epoch=epoch, epochs=settings.epochs,
                  steps_per_epoch=n, **fit)
    end = callback.stopped_at or (len(history.get("loss", [])), 0)
    return Outcome(model, history, stop.requested, None if position is None else start,
                   time.perf_counter() - started, _clips_between(start, end, len(splits.train), settings.batch_size),
                   train_seq.skipped + val_seq.skipped)


def _clips_between(start: tuple[int, int], end: tuple[int, int], clips_per_epoch: int, batch_size: int) -> int:
    """Clips trained from position `start` to `end` (each (epoch, batch))."""
    def clips(position):
        return position[0] * clips_per_epoch + min(position[1] * batch_size, clips_per_epoch)
    return clips(end) - clips(start)


def _resume(position: Position):
    log.info("resuming from %s: epoch %d, batch %d", position.model_file, position.epoch, position.batch)
    model = keras.models.load_model(position.model_file)
    return model, position.epoch, position.batch, position.history
