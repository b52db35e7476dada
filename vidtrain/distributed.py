"""Multi-worker training: a custom loop under tf.distribute.MultiWorkerMirroredStrategy.

Keras 3's `fit` fails under this strategy (PerReplica values reach its metrics,
keras-team/keras#20585), so this loop calls `strategy.run` itself on the same
Keras 3 models. Rules that keep the workers in lockstep:
- each worker loads only its shard (every count-th clip), so the shards are
  disjoint and cover the dataset: each clip once per epoch across all workers;
- collectives need the same number of steps everywhere: a worker whose shard
  has one batch fewer takes its last step on zero-weight clips (no gradient);
- a stop request (SIGTERM) is all-reduced every step, so all stop at the same step;
- only the chief (worker 0) validates and writes model, checkpoints and reports.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time

import keras
import numpy as np
import tensorflow as tf

from loader import PrefetchGenerator
from vidtrain import report
from vidtrain.checkpoint import Checkpointer, write_json_atomic
from vidtrain.data import Splits
from vidtrain.metrics import JobMetrics
from vidtrain.settings import Settings
from vidtrain.train import Outcome, StopRequest, new_model, record_epoch, sequences

log = logging.getLogger("vidtrain")
SUM = tf.distribute.ReduceOp.SUM  # (ReduceOp has no MAX: a sum of stop flags > 0 means "any")


def make_strategy(settings: Settings) -> tuple[tf.distribute.Strategy, int, int]:
    """The strategy for the cluster in settings.cluster(); returns (strategy, index, workers)."""
    config = settings.cluster()
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(config["cluster"]), task_type=config["task"]["type"],
        task_id=config["task"]["index"], rpc_layer="grpc")
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING)
    log.info("TF_CONFIG %s", json.dumps(config))
    strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver, communication_options=options)
    return strategy, config["task"]["index"], len(config["cluster"]["worker"])


def weights_digest(variables) -> str:
    digest = hashlib.sha256()
    for variable in variables:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).tobytes())
    return digest.hexdigest()


def train_distributed(settings: Settings, splits: Splits, metrics: JobMetrics, stop: StopRequest) -> Outcome:
    keras.utils.set_random_seed(settings.seed)
    strategy, index, count = make_strategy(settings)
    stop.install()  # the strategy's runtime has just taken SIGTERM over; take it back
    chief = index == 0
    train_seq, val_seq = sequences(settings, splits, metrics, shard=(index, count))
    steps = math.ceil(math.ceil(len(splits.train) / count) / settings.batch_size)  # the longest shard's batches
    checkpointer = Checkpointer(settings.output_dir / "checkpoints")
    position = checkpointer.latest()  # every worker resumes from the chief's checkpoint (shared volume)
    with strategy.scope():
        model = (keras.models.load_model(position.model_file) if position
                 else new_model(settings, len(splits.class_names)))
    step = _train_step(strategy, model, settings.batch_size * count)
    sync = _sync_statistics(strategy, model)
    epoch, start = (position.epoch, position.batch) if position else (0, 0)
    history = dict(position.history) if position else {}
    begun, trained, stopped_at, halt = time.perf_counter(), 0, None, False
    while epoch < settings.epochs and not halt:
        train_seq.set_epoch(epoch)
        sums = np.zeros(3)  # loss, correct, clips
        with PrefetchGenerator(train_seq, settings.loader_workers, settings.prefetch_batches,
                               start=min(start, len(train_seq) - 1), metrics=metrics) as batches:
            last = None
            for b in range(start, steps):
                batch = next(batches, None) if b < len(train_seq) else None
                x, y = batch if batch is not None else (last if last is not None else train_seq[0])
                weight = np.full(len(y), 1.0 if batch is not None else 0.0, np.float32)
                last = (x, y)
                began = time.perf_counter()
                loss, hits, clips, stop_any = (float(v) for v in step(x, y, weight, np.float32(stop.requested)))
                metrics.train_step.observe(time.perf_counter() - began)
                metrics.batches.labels("train").inc(batch is not None)
                trained += int(weight.sum())
                sums += (loss, hits, clips)
                halt = stop_any > 0  # agreed by all workers (the sum of their flags)
                if halt and b + 1 < steps:
                    stopped_at = (epoch, b + 1)
                    break
        start = 0
        if stopped_at is not None:
            log.info("stop requested: position epoch %d, batch %d/%d", *stopped_at, steps)
            if chief:
                checkpointer.save(model, *stopped_at, history)
            break
        sync()
        epoch += 1
        _end_epoch(settings, model, val_seq, metrics, history, epoch, steps, sums, chief, checkpointer)
    _record_worker(settings, index, train_seq, model)
    return Outcome(model, history, halt,
                   (position.epoch, position.batch) if position else None, time.perf_counter() - begun, trained,
                   train_seq.skipped + val_seq.skipped)


def _train_step(strategy, model: keras.Model, global_batch: int):
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    optimizer = model.optimizer

    def replica(x, y, weight, stop_flag):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_sum(loss_fn(y, logits) * weight) / global_batch
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.float32)
        return loss, tf.reduce_sum(hits * weight), tf.reduce_sum(weight), stop_flag

    @tf.function(reduce_retracing=True)
    def step(x, y, weight, stop_flag):
        results = strategy.run(replica, args=(x, y, weight, stop_flag))
        return [strategy.reduce(op, value, axis=None) for op, value in zip((SUM, SUM, SUM, SUM), results)]

    return step


def _sync_statistics(strategy, model: keras.Model):
    """Average the non-trainable variables (BatchNorm's moving statistics) over the workers.
    Each worker updates them from its own batches; the saved model should hold the whole
    dataset's, and every worker the same weights."""
    variables = model.non_trainable_variables

    def local_values():
        return [tf.identity(variable.value) for variable in variables]

    @tf.function
    def sync():
        per_replica = strategy.run(local_values)
        for variable, value in zip(variables, per_replica):
            variable.assign(strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None))

    return sync


def _end_epoch(settings, model, val_seq, metrics, history, epoch, steps, sums, chief, checkpointer) -> None:
    loss, hits, clips = sums
    logs = {"loss": loss / steps, "accuracy": hits / max(clips, 1)}
    if chief:  # eager calls: no collective op runs on the chief alone
        val = report.evaluate(model, val_seq, settings.loader_workers, settings.prefetch_batches,
                              predict=lambda x: model(x, training=False))
        logs |= {"val_loss": val["loss"], "val_accuracy": val["accuracy"]}
    record_epoch(history, metrics, epoch, logs)
    log.info("epoch %d/%d: %s", epoch, settings.epochs, " - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
    if chief:
        checkpointer.save(model, epoch, 0, history)


def _record_worker(settings: Settings, index: int, train_seq, model) -> None:
    """workers/worker-<i>.json: the clips this worker trained on and its final weights' digest."""
    folder = settings.output_dir / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / f"worker-{index}.json", {
        "index": index, "clips": [path for path, _ in train_seq.items],
        "trainable_sha256": weights_digest(model.trainable_variables),
        "non_trainable_sha256": weights_digest(model.non_trainable_variables)})
