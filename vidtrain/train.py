"""The training loop: one loop for 1..N workers (nanoGPT's shape: `world_size = 1` when not distributed).

One worker trains under TensorFlow's default strategy, several under
MultiWorkerMirroredStrategy (Keras 3's `fit` fails there, keras-team/keras#20585,
so nobody uses `fit`). Everything below is decided here and nowhere else:
- the position: `epoch` epochs completed plus `step` steps of the next; an
  epoch is completed only after its validation, so every key of the history
  has one value per completed epoch;
- the order: batches are a pure function of (seed, epoch, index); a resumed
  epoch continues at its step, each clip trained once per epoch;
- lockstep: each worker loads its shard (every count-th clip); all take the
  same number of steps (a shorter shard's last step carries zero-weight
  clips); a stop request is all-reduced with every step's results, so all
  workers stop at the same step; BatchNorm statistics are averaged over the
  workers before validation and before a checkpoint;
- checkpoints: at every epoch's end, before every validation (the epoch
  "trained, validation pending": a worker killed while the workers validate
  loses no training), and mid-epoch every CHECKPOINT_EVERY_S seconds of the
  chief's clock, agreed by all workers at the same step like a stop;
- the rate: set before every step from the recipe (vidtrain.recipe), so a
  resume trains with the rate today's settings give;
- divergence: a non-finite loss raises `Diverged` before anything of that
  epoch is recorded;
- what the metrics mean: `train_step` times the step's compute alone; the
  loader reports data wait per split (vidtrain.metrics).
- validation and the final evaluation: each worker scores its shard of the videos (all views of a
  video on one worker) and the tallies are summed (report.tally): the scores one process gives.
The chief (worker 0) alone writes checkpoints, history and the final outputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from loader import FrameCache, PrefetchGenerator, VideoSequence, flip_label_map
from models import BACKBONE_LAYER, build_model
from vidtrain import recipe, report
from vidtrain.board import Board
from vidtrain.checkpoint import Checkpointer, Position
from vidtrain.control import Diverged, LoopEvents, StopRequest
from vidtrain.data import Splits
from vidtrain.metrics import JobMetrics
from vidtrain.peers import PeerLost, PeerWatch, lost_line
from vidtrain.settings import ConfigProblem, Settings, env_name

log = logging.getLogger("vidtrain")
SUM = tf.distribute.ReduceOp.SUM
SEED_STATE = "seed_generator_state"  # Keras SeedGenerator variables: not saved in .keras files


@dataclass(frozen=True)
class World:
    """The strategy, this process's place among the workers, and its watch over them."""

    strategy: tf.distribute.Strategy
    index: int = 0
    count: int = 1
    watch: PeerWatch | None = None

    @property
    def chief(self) -> bool:
        return self.index == 0

    def barrier(self) -> None:
        """Wait until every worker gets here (one all-reduce); nothing for one worker."""
        if self.count > 1:
            with _collectives(self):
                _barrier(self.strategy)

    def leave(self) -> None:
        """The end of the collective part: peers may exit from here on."""
        if self.watch is not None:
            self.watch.stop()

    def total(self, values: np.ndarray) -> np.ndarray:
        """`values` (float64) summed over the workers, in one all-reduce (as they are for one worker)."""
        if self.count == 1:
            return np.asarray(values, np.float64)
        with _collectives(self):
            return _sum(self.strategy, np.asarray(values, np.float64)).numpy()

    def gather_json(self, value) -> list:
        """Every worker's `value` (JSON), by worker index, in two all-reduces: the lengths, then the bytes,
        each worker's in its own row of zeros (a sum that adds nothing to any byte)."""
        data = json.dumps(value).encode()
        if self.count == 1:
            return [value]
        lengths = self.total(np.eye(self.count)[self.index] * len(data)).astype(np.int64)
        rows = np.zeros((self.count, -(-int(lengths.max()) // 4) * 4), np.uint8)
        rows[self.index, :len(data)] = np.frombuffer(data, np.uint8)
        with _collectives(self):
            summed = _sum(self.strategy, rows.view(np.int32)).numpy().view(np.uint8)
        return [json.loads(bytes(summed[w, :lengths[w]])) for w in range(self.count)]

    def broadcast(self, data: bytes) -> bytes:
        """The chief's `data` on every worker (what the others pass is ignored), in two all-reduces: the
        length, then the bytes, the others adding zeros."""
        if self.count == 1:
            return data
        length = int(self.total(np.float64([len(data) if self.chief else 0]))[0])
        words = np.zeros(-(-length // 4), np.int32)
        if self.chief:
            words.view(np.uint8)[:length] = np.frombuffer(data, np.uint8)
        with _collectives(self):
            summed = _sum(self.strategy, words).numpy()
        return summed.view(np.uint8)[:length].tobytes()

    def disagreements(self, digests: dict[str, str]) -> list[str]:
        """The names whose digest (hex) is not the same on every worker, in one all-reduce: each
        digest's bytes and their squares are summed over the workers, and n x sum(b^2) = sum(b)^2
        holds for every byte only when all n workers hold the same bytes."""
        if self.count == 1:
            return []
        codes = np.concatenate([np.frombuffer(bytes.fromhex(d), np.uint8) for d in digests.values()])
        codes = codes.astype(np.float32)  # sums of bytes and squares over 256 workers stay exact in float32
        with _collectives(self):
            sums = _sum(self.strategy, np.concatenate([codes, codes ** 2])).numpy().astype(np.float64)
        total, squares = sums[:len(codes)], sums[len(codes):]
        same = (self.count * squares == total ** 2).reshape(len(digests), -1).all(axis=1)
        return [name for name, agreed in zip(digests, same) if not agreed]


@contextlib.contextmanager
def _collectives(world: World):
    """Turn a collective's failure (a peer's connection reset) into PeerLost naming the peer."""
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
            tf.errors.AbortedError, tf.errors.InternalError) as exc:
        if world.count == 1:
            raise
        if world.watch is not None:
            world.watch.claim_report()  # if the watchdog noticed first, it ends the process with its line
        lost = world.watch.lost_peer() if world.watch else None
        raise PeerLost(lost_line(f"{lost or 'a worker'} (a collective failed: {type(exc).__name__})")) from None


@tf.function
def _barrier(strategy):
    return strategy.reduce(SUM, strategy.run(lambda: tf.ones(())), axis=None)


@tf.function
def _sum(strategy, values):
    return strategy.reduce(SUM, strategy.run(tf.identity, args=(values,)), axis=None)


def make_world(settings: Settings) -> World:
    """The default strategy for one worker; MultiWorkerMirroredStrategy over settings.cluster() for several."""
    if not settings.distributed:
        return World(tf.distribute.get_strategy())
    config = settings.cluster()
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(config["cluster"]), task_type=config["task"]["type"],
        task_id=config["task"]["index"], rpc_layer="grpc")
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING)
    log.info("TF_CONFIG %s", json.dumps(config))
    strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver, communication_options=options)
    # Every worker has joined: from here on a worker that cannot be reached is lost (vidtrain/peers.py).
    rank, addresses = settings.ranks()
    watch = PeerWatch({i: address for i, address in enumerate(addresses) if i != rank}, settings.peer_timeout_s)
    return World(strategy, rank, len(addresses), watch.start())


def steps_per_epoch(clips: int, batch_size: int, workers: int) -> int:
    """Steps every worker takes per epoch: the batches of the longest shard."""
    return math.ceil(math.ceil(clips / workers) / batch_size)


def clips_after(step: int, clips: int, batch_size: int, workers: int) -> int:
    """Clips trained across all workers after `step` steps of an epoch (shard w holds clips w, w+N, ...)."""
    return sum(min(step * batch_size, len(range(w, clips, workers))) for w in range(workers))


@dataclass
class Outcome:
    model: keras.Model
    history: dict
    stopped: bool
    resumed_from: dict | None
    seconds: float
    clips_trained: int  # across all workers
    skipped: list = field(default_factory=list)
    last_val: dict | None = None  # the last completed epoch's validation (loss, accuracy, confusion)
    best: dict = field(default_factory=dict)  # FINAL_MODEL=best: the best epoch, and its weights ("weights")


def sequences(settings: Settings, splits: Splits, metrics: JobMetrics, shard: tuple[int, int] = (0, 1),
              eval_clips: int = 1, eval_crops: int = 1) -> tuple[VideoSequence, VideoSequence | None]:
    """The training and the validation sequence of this worker's shard (every count-th clip; every
    count-th video for validation, all of its views on this worker): `eval_clips` test clips per
    video at the training's time scale, `eval_crops` crops of each. A worker with no validation
    video (fewer videos than workers) has None."""
    cache = FrameCache(settings.cache_dir / "frames", int(settings.frame_cache_gb * 1e9), metrics) \
        if settings.frame_cache_gb > 0 else None
    common = dict(batch_size=settings.batch_size, frames=settings.frames, size=(settings.height, settings.width),
                  on_bad_video=settings.on_bad_video, device=settings.decode_device, metrics=metrics, cache=cache,
                  decode_timeout=settings.decode_timeout_s)
    common |= {"frame_template": settings.frame_template, "frame_counts": splits.frames, "resize": settings.resize,
               "left_out": splits.index.left_out}
    flips = flip_label_map(splits.class_names) if settings.augment_flip else None
    train = VideoSequence(splits.train, shuffle=True, seed=settings.seed, sampling=settings.sampling,
                          flip_labels=flips, crop=settings.augment_crop, shard=shard, **common)
    val = VideoSequence(splits.val, shuffle=False, sampling=settings.sampling, test_mode=True,
                        clips_per_video=eval_clips, crops=eval_crops, shard=shard, **common) \
        if splits.val[shard[0]::shard[1]] else None
    return train, val


PRECISION = {"off": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}  # Keras dtype policies


def new_model(settings: Settings, num_classes: int, class_names: list[str] | None = None) -> keras.Model:
    """The settings' model, compiled with the recipe's optimizer. Under MIXED_PRECISION its layers
    compute in bfloat16 or float16 (the logits stay float32); the policy is the model's own, saved
    with it, so nothing global outlives the building."""
    from models.video2d import BackboneWeightsError

    keras.config.set_dtype_policy(PRECISION[settings.mixed_precision])
    try:
        model = build_model(settings.model, num_classes, settings.frames, settings.height, settings.width,
                            rnn_cell=settings.rnn_cell, backbone_name=settings.backbone,
                            weights=settings.backbone_weights)
    except BackboneWeightsError as exc:
        raise ConfigProblem(f"{env_name('backbone_weights')}={settings.backbone_weights}: {exc}") from None
    finally:
        keras.config.set_dtype_policy("float32")
    _keep_precision_correct(model, settings)
    if settings.pretrained_weights:
        carry_weights(model, settings, class_names)
    model.compile(optimizer=recipe.optimizer(settings),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.optimizer.build(model.trainable_variables)  # every variable, also those a frozen start leaves out
    return model


def carry_weights(model: keras.Model, settings: Settings, class_names: list[str] | None = None) -> None:
    """Start from PRETRAINED_WEIGHTS: a model.keras (vidtrain's, any classes) gives every layer whose
    weights have the shapes of this model's, layer by layer in order; the classifier head of a model
    trained on other classes starts afresh (another class count, or other names in the classes.json
    beside the file); the log names what was not carried. Exit 2 (ConfigProblem) for a file of another
    architecture, or one whose layers but the head do not fit."""
    path, name = settings.pretrained_weights, env_name("pretrained_weights")
    shape = (f"the {settings.model} model at FRAMES x HEIGHT x WIDTH {settings.frames}x{settings.height}x"
             f"{settings.width}")
    try:
        source = keras.models.load_model(path, compile=False)
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise ConfigProblem(f"{name}={path}: not a Keras model file these weights can be read from "
                            f"({str(exc).splitlines()[0][:300]})") from None
    mine, theirs = ([layer for layer in m.layers if layer.weights] for m in (model, source))
    if [type(a) for a in mine] != [type(b) for b in theirs]:
        raise ConfigProblem(f"{name}={path}: these weights do not fit {shape} (a {source.name} model, another "
                            "architecture)")
    left = [a.name for a, b in zip(mine, theirs) if [w.shape for w in a.weights] != [w.shape for w in b.weights]]
    if any(layer != mine[-1].name for layer in left):
        raise ConfigProblem(f"{name}={path}: these weights do not fit {shape}: the layers {', '.join(left)} have "
                            "other shapes")
    head = f"; not carried: {mine[-1].name} ({theirs[-1].weights[-1].shape[-1]} classes there, " \
           f"{mine[-1].weights[-1].shape[-1]} here), which starts afresh" if left else ""
    beside = Path(path).parent / "classes.json"
    if not left and class_names is not None and beside.is_file() and \
            json.loads(beside.read_text()) != list(class_names):
        left = [mine[-1].name]
        head = f"; not carried: {left[0]} (other classes there, {beside}), which starts afresh"
    for a, b in zip(mine, theirs):
        if a.name not in left:
            a.set_weights(b.get_weights())
    log.info("%s=%s: carried %d of %d layers with weights%s", name, path, len(mine) - len(left), len(mine), head)


def _keep_precision_correct(model: keras.Model, settings: Settings) -> None:
    """Under MIXED_PRECISION=bf16, the convolutions whose bfloat16 gradients are wrong on this machine
    compute in float32 (vidtrain.precision); exit 2 where bfloat16 convolutions cannot run at all."""
    if settings.mixed_precision != "bf16":
        return
    from vidtrain.precision import Bf16Unavailable, keep_bf16_correct
    from vidtrain.runtime import describe_machine

    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    try:
        keep_bf16_correct(model, describe_machine(gpus))
    except Bf16Unavailable as exc:
        raise ConfigProblem(f"{env_name('mixed_precision')}=bf16: {exc}; use {env_name('mixed_precision')}=off "
                            "on this machine") from None


def frozen(settings: Settings, epoch: int) -> bool:
    """Whether the backbone trains in epoch `epoch` (0-based): not in the first FREEZE_BACKBONE_EPOCHS."""
    return epoch < settings.freeze_backbone_epochs


def set_frozen(model: keras.Model, freeze: bool) -> bool:
    """Freeze (or unfreeze) the model's backbone, if it has one; True when that changed anything.
    A frozen backbone's BatchNorm layers run in inference mode (Keras), as fine-tuning wants."""
    layer = next((layer for layer in model.layers if layer.name == BACKBONE_LAYER), None)
    if layer is None or layer.trainable != freeze:
        return False
    layer.trainable = not freeze
    return True


def _seed_states(model: keras.Model) -> list:
    return [v for v in model.variables if v.path.endswith(SEED_STATE)]


def _restore(position: Position, settings: Settings) -> keras.Model:
    log.info("resuming from %s: epoch %d, step %d", position.model_file, position.epoch, position.step)
    model = keras.models.load_model(position.model_file)
    _keep_precision_correct(model, settings)  # the checkpoint may come from another kind of machine
    recipe.apply(model.optimizer, settings)  # today's weight decay and clipping; the rate is set per step
    states = _seed_states(model)
    if len(states) != len(position.rng):
        raise RuntimeError(f"{position.model_file}: {len(states)} random-generator states, "
                           f"the checkpoint holds {len(position.rng)}")
    for variable, value in zip(states, position.rng):
        variable.assign(np.asarray(value, dtype=variable.dtype))
    return model


class _Ops:
    """The compiled pieces of the loop, each a collective over all workers (trivial for one)."""

    def __init__(self, world: World, model: keras.Model, num_classes: int, label_smoothing: float):
        strategy, optimizer = world.strategy, model.optimizer
        self.loss_args = (num_classes, label_smoothing)
        loss_fn = recipe.loss_per_clip(num_classes, label_smoothing)

        def replica_step(x, y, weight, flags):
            # The mean over every real clip of every worker: gradients are summed across workers.
            clips = tf.distribute.get_replica_context().all_reduce(SUM, tf.reduce_sum(weight))
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                per_clip = loss_fn(y, logits) * weight
                loss = tf.reduce_sum(per_clip) / tf.maximum(clips, 1.0)
                scaled = optimizer.scale_loss(loss)  # float16: the loss scale (LossScaleOptimizer); else as is
            grads = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.float32)
            return tf.concat([tf.stack([tf.reduce_sum(per_clip), tf.reduce_sum(hits * weight), tf.reduce_sum(weight)]),
                              flags], axis=0)

        @tf.function(reduce_retracing=True)
        def step(x, y, weight, flags):
            return strategy.reduce(SUM, strategy.run(replica_step, args=(x, y, weight, flags)), axis=None)

        @tf.function
        def agree(flags):
            return strategy.reduce(SUM, strategy.run(tf.identity, args=(flags,)), axis=None)

        statistics = [v for v in model.non_trainable_variables if not v.path.endswith(SEED_STATE)]

        @tf.function
        def sync_statistics():
            values = strategy.run(lambda: [tf.identity(v.value) for v in statistics])
            for variable, value in zip(statistics, values):
                variable.assign(strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None))

        self.step, self.agree, self.statistics = step, agree, statistics
        # BatchNorm's moving statistics: each worker updates them from its own batches. The update is
        # linear, so averaging at any point gives what one process would hold; averaged before each
        # validation and checkpoint, every worker holds the same, and a resume is exact.
        self.sync_statistics = sync_statistics if world.count > 1 and statistics else (lambda: None)
        self.predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def pad_step(self, x, y, flags):
        """A zero-weight step for a worker whose shard has run out: it joins the step's collectives
        (gradients, clip count, flags) and contributes nothing, BatchNorm's moving statistics
        included (the padding clips would move them: they are put back)."""
        kept = [keras.ops.convert_to_numpy(v) for v in self.statistics]
        out = self.step(x, y, np.zeros(len(y), np.float32), flags)
        for variable, value in zip(self.statistics, kept):
            variable.assign(value)
        return out


def train(settings: Settings, splits: Splits, metrics: JobMetrics, stop: StopRequest, world: World,
          resume: Position | None, fingerprint: dict, progress: bool = False,
          events: LoopEvents | None = None, data_problem=None) -> Outcome:
    """Train from `resume` (or from scratch) to settings.epochs, or until a stop is agreed.
    `data_problem()` (the index's probe, running meanwhile) returns an error that ends training at
    the next step, or None."""
    events = events or LoopEvents()
    keras.utils.set_random_seed(settings.seed)
    train_seq, val_seq = sequences(settings, splits, metrics, shard=(world.index, world.count))
    steps = steps_per_epoch(len(splits.train), settings.batch_size, world.count)
    with world.strategy.scope():
        model = _restore(resume, settings) if resume else new_model(settings, len(splits.class_names),
                                                                    splits.class_names)
    pos = resume or Position()
    if resume is not None:
        start = recipe.schedule_start(pos.epoch, pos.step, pos.schedule_start, pos.settings.get("epochs"),
                                      settings.epochs)
        if start != pos.schedule_start:
            log.info("the rate schedule ended at epoch %d: a new one begins there (a warm-up, then the decay to "
                     "epoch %d)", start, settings.epochs)
            pos = replace(pos, schedule_start=start)
    set_frozen(model, frozen(settings, pos.epoch))
    ops = _Ops(world, model, len(splits.class_names), settings.label_smoothing)
    checkpointer = Checkpointer(settings.output_dir / "checkpoints")
    loop = _Loop(settings, metrics, stop, world, model, ops, events, steps, len(splits.train), fingerprint,
                 checkpointer, (train_seq, val_seq), data_problem or (lambda: None))
    began = time.perf_counter()
    # One infinite generator across epochs: it decodes the next epoch's first batches during validation.
    first_epoch, first_step = (pos.epoch, pos.step) if pos.step < len(train_seq) else (pos.epoch + 1, 0)
    train_seq.set_epoch(first_epoch)
    if resume and resume.best and settings.final_model == "best":  # the best epoch's weights, kept on disk
        current = model.get_weights()
        model.load_weights(resume.best_file)
        loop.best_weights = model.get_weights()
        model.set_weights(current)
    if resume:  # clips that failed before the stop: reported, and this epoch's replaced as they were
        for seq in (train_seq, val_seq):
            if seq is not None:
                seq.restore_failures(resume.failed or [])
    remaining = max((settings.epochs - first_epoch) * len(train_seq) - first_step, 0)
    with PrefetchGenerator(train_seq, settings.loader_workers, settings.prefetch_batches, infinite=True,
                           start=first_step, metrics=metrics.loader("train"), count=remaining) as batches:
        try:
            with _collectives(world):
                pos, stopped = loop.run(pos, batches, train_seq, val_seq, progress)
        finally:
            loop.close()
    skipped = train_seq.skipped + (val_seq.skipped if val_seq is not None else [])
    resumed = None if resume is None else {"epoch": resume.epoch, "step": resume.step, "clips": resume.clips}
    best = pos.best | {"weights": loop.best_weights} if loop.best_weights is not None else {}
    return Outcome(model, pos.history, stopped, resumed, time.perf_counter() - began, loop.clips_trained,
                   skipped, loop.last_val, best)


def final_evaluation(settings: Settings, splits: Splits, metrics: JobMetrics, outcome: Outcome,
                     world: World) -> dict:
    """The scores on the validation set of the model that is written: the last epoch's validation, or,
    where the final evaluation takes several views per video (EVAL_CLIPS, EVAL_CROPS), none was made
    in this run (resumed after the last epoch) or the best epoch's weights are kept (FINAL_MODEL=best:
    they are put in place here), a pass of its own, sharded over the workers like validation and
    summed: the scores a single process gives. Every worker calls it (collectives)."""
    if outcome.best:
        outcome.model.set_weights(outcome.best["weights"])
    elif outcome.last_val is not None and settings.eval_clips == 1 and settings.eval_crops == 1:
        return outcome.last_val
    _, val_seq = sequences(settings, splits, metrics, shard=(world.index, world.count),
                           eval_clips=settings.eval_clips, eval_crops=settings.eval_crops)
    with _collectives(world):
        sums = report.evaluate(outcome.model, val_seq, settings.loader_workers, settings.prefetch_batches,
                               metrics.loader("val"), predict=lambda x: outcome.model(x, training=False),
                               num_classes=len(splits.class_names))
    if val_seq is not None:
        outcome.skipped += [s for s in val_seq.skipped if s not in outcome.skipped]
    return report.scores_of(world.total(sums), settings.eval_clips * settings.eval_crops, settings.eval_crops)


def worker_share(settings: Settings, metrics: JobMetrics, outcome: Outcome, world: World) -> dict:
    """What this worker did, for the chief's report (World.gather_json): the clips it loaded for
    training and for validation and evaluation, the clips that failed on it, and its final weights'
    digests (equal on every worker)."""
    return {"worker": world.index, "train_clips": int(metrics.total("vidtrain_clips_total", split="train")),
            "val_clips": int(metrics.total("vidtrain_clips_total", split="val")),
            "skipped": [vars(s) for s in outcome.skipped],
            "trainable_sha256": weights_digest(outcome.model.trainable_variables),
            "non_trainable_sha256": weights_digest(outcome.model.non_trainable_variables)}


class _Loop:
    """The epoch and step loop of `train`; holds what every part of one run shares."""

    def __init__(self, settings, metrics, stop, world, model, ops, events, steps, clips, fingerprint, checkpointer,
                 sequences, data_problem):
        self.settings, self.metrics, self.stop, self.world = settings, metrics, stop, world
        self.data_problem = data_problem
        self.model, self.ops, self.events, self.steps, self.clips = model, ops, events, steps, clips
        self.fingerprint, self.checkpointer, self.sequences = fingerprint, checkpointer, sequences
        self._saved_at: tuple[int, int] | None = None  # the position last checkpointed
        self._last_save = time.monotonic()
        self._rate: float | None = None
        # The first step at which some worker's shard has run out (None: no worker pads). BatchNorm's
        # statistics are averaged before it: a neutral padding step leaves the padding worker's
        # statistics as they were, so from there on workers' updates differ in number, and averaging
        # is exact (a resume equals an uninterrupted run) only from equal statistics.
        shortest = min(math.ceil(len(range(w, clips, world.count)) / settings.batch_size) for w in range(world.count))
        self.first_pad = shortest if shortest < steps else None
        self.clips_trained = 0
        self.last_val: dict | None = None
        self.best_weights: list | None = None  # FINAL_MODEL=best: the best epoch's weights (every worker's)
        self.board = Board(settings.output_dir) if world.chief else None
        self._epoch_start = (0.0, 0.0, 0)  # time, train data wait, clips trained: this epoch's rates

    def run(self, pos: Position, batches, train_seq, val_seq, progress: bool) -> tuple[Position, bool]:
        while pos.epoch < self.settings.epochs:
            if set_frozen(self.model, frozen(self.settings, pos.epoch)):  # another set of trainable variables:
                self.ops = _Ops(self.world, self.model, *self.ops.loss_args)  # trace the step for it
                log.info("epoch %d: the backbone %s", pos.epoch + 1,
                         "is frozen" if frozen(self.settings, pos.epoch) else "trains from here on")
            self._epoch_start = (time.perf_counter(), self._train_wait(), self.clips_trained)
            bar = keras.utils.Progbar(self.steps, stateful_metrics=["loss", "accuracy", "val_loss",
                                                                    "val_accuracy"]) if progress else None
            pos, halted = self._train_epoch(pos, batches, train_seq, bar)
            self.ops.sync_statistics()
            if halted:  # agreed by every worker at the same step (also at the epoch's last one)
                if bar is not None:
                    bar.update(pos.step, finalize=True)  # the line ends where the epoch stopped
                self._save(pos, leave=True)  # no collective follows: the others may exit while the chief writes
                return pos, True
            self._save(pos)  # trained, validation pending: a kill while the workers validate loses no training
            sums = self._validate(pos.epoch, val_seq)
            stop_any, val_missing = self.ops.agree(np.float32([self.stop.requested, sums is None])).numpy()
            if not val_missing:  # every worker's shard validated: the scores of the whole set
                val = report.scores_of(self.world.total(sums))
            if not val_missing:
                pos = self._complete_epoch(pos, val, bar, leave=bool(stop_any))
            if stop_any:  # agreed, and no collective follows the checkpoint (as above)
                if val_missing:  # validation was cut short: the epoch stays open, its training done
                    self._save(pos, leave=True)
                return pos, True
        return pos, False

    def _train_epoch(self, pos: Position, batches, train_seq, bar) -> tuple[Position, bool]:
        sums, step, halted = np.array(pos.sums, np.float64), pos.step, False
        pad = None
        while step < self.steps and not halted:
            if (problem := self.data_problem()) is not None:
                raise problem
            if step == self.first_pad:
                self.ops.sync_statistics()
            self._set_rate(pos, step)
            flags = np.float32([self.stop.requested, self._checkpoint_due()])
            started = time.perf_counter()
            if step < len(train_seq):
                x, y = next(batches)
                started = time.perf_counter()
                out = self.ops.step(x, y, np.ones(len(y), np.float32), flags)
            else:  # this shard has run out: a neutral step keeps the collectives in lockstep
                x, y = pad = pad or train_seq[0]
                out = self.ops.pad_step(x, y, flags)
            loss, hits, clips, stops, save = out.numpy()
            self.metrics.train_step.observe(time.perf_counter() - started)
            if not math.isfinite(loss):
                raise Diverged(pos.epoch + 1, step + 1, float(loss))
            sums += (loss, hits, clips)
            step, halted = step + 1, stops > 0
            self.clips_trained += int(clips)
            self.events.after_step(pos.epoch, step, self.model, {"loss": loss / max(clips, 1), "clips": int(clips)})
            if bar is not None:
                bar.update(step, [("loss", sums[0] / sums[2]), ("accuracy", sums[1] / sums[2])])
            if save and not halted and step < self.steps:  # agreed: the chief's clock says a checkpoint is due
                self._save(self._position(pos, step, sums))
        return self._position(pos, step, sums), halted

    def _position(self, pos: Position, step: int, sums) -> Position:
        clips_done = clips_after(step, self.clips, self.settings.batch_size, self.world.count)
        return replace(pos, step=step, clips=clips_done, sums=tuple(float(s) for s in sums))

    def _checkpoint_due(self) -> bool:
        every = self.settings.checkpoint_every_s
        return self.world.chief and every > 0 and time.monotonic() - self._last_save >= every

    def _set_rate(self, pos: Position, step: int) -> None:
        rate = recipe.learning_rate(self.settings, pos.epoch, step, self.steps, pos.schedule_start)
        if rate != self._rate:
            self.model.optimizer.learning_rate.assign(rate)
            self._rate = rate

    def _validate(self, epoch: int, val_seq) -> np.ndarray | None:
        """This worker's validation of the epoch: the tally of its shard (report.tally); None when a stop
        request cut it short."""
        if val_seq is not None:
            val_seq.set_epoch(epoch)  # a clip that failed in an earlier validation is tried again
        return report.evaluate(self.model, val_seq, self.settings.loader_workers, self.settings.prefetch_batches,
                               self.metrics.loader("val"), predict=self.ops.predict,
                               stop_when=lambda: self.stop.requested,
                               on_batch=lambda b: self.events.after_val_batch(epoch, b),
                               num_classes=self.ops.loss_args[0])

    def _complete_epoch(self, pos: Position, val: dict | None, bar, leave: bool = False) -> Position:
        loss, hits, clips = pos.sums
        self._set_rate(pos, self.steps - 1)  # a resumed epoch with no step left has not set it
        logs = {"loss": loss / clips, "accuracy": hits / clips, "learning_rate": self._rate}
        if val is not None:
            logs |= {"val_loss": val["loss"], "val_accuracy": val["accuracy"]}
            self.last_val = val
        history = {key: list(values) for key, values in pos.history.items()}
        for key, value in logs.items():
            history.setdefault(key, []).append(float(value))
        epoch = pos.epoch + 1
        best = self._best(pos.best, epoch, val)
        self.metrics.epoch.set(epoch)
        for split, prefix in (("train", ""), ("val", "val_")):
            if f"{prefix}loss" in logs:
                self.metrics.loss.labels(split).set(logs[f"{prefix}loss"])
                self.metrics.accuracy.labels(split).set(logs[f"{prefix}accuracy"])
        if bar is not None:
            bar.update(self.steps, list(logs.items()), finalize=True)
        log.info("epoch %d/%d: %s", epoch, self.settings.epochs, " - ".join(f"{k} {v:.4g}" for k, v in logs.items()))
        pos = Position(epoch=epoch, history=history, schedule_start=pos.schedule_start, best=best)
        self._save(pos, leave)
        if self.world.chief:
            report.write_history(self.settings.output_dir, history)
            self._board(epoch, logs)
        return pos

    def _best(self, best: dict, epoch: int, val: dict | None) -> dict:
        """FINAL_MODEL=best: the best epoch so far, its weights kept (in memory on every worker, on disk by the
        chief for a resume) when this one's validation accuracy is higher than any before."""
        if self.settings.final_model != "best" or val is None or (best and val["accuracy"] <= best["val_accuracy"]):
            return best
        self.best_weights = self.model.get_weights()
        if self.world.chief:
            self.checkpointer.save_best(self.model)
        return {"epoch": epoch, "val_accuracy": float(val["accuracy"])}

    def close(self) -> None:
        if self.board is not None:
            self.board.close()

    def _train_wait(self) -> float:
        return self.metrics.total("vidtrain_data_wait_seconds_sum", split="train")

    def _board(self, epoch: int, logs: dict) -> None:
        started, wait, clips = self._epoch_start
        seconds = max(time.perf_counter() - started, 1e-9)
        self.board.epoch(epoch, logs, data_wait_share=(self._train_wait() - wait) / seconds,
                         clips_per_second=(self.clips_trained - clips) / seconds)

    def _save(self, pos: Position, leave: bool = False) -> None:
        """Checkpoint `pos` (every worker calls it at the same position): the clips that failed on each
        worker are gathered, and the chief writes them, the model and the record, with what makes it
        meaningful (random states, fingerprint, settings). `leave`: a stop's checkpoint, after which no
        collective follows: the peer watch ends once the clips are gathered, before the chief writes
        (the others exit meanwhile)."""
        fresh = self._saved_at != (pos.epoch, pos.step)
        if fresh:
            failed = self.world.gather_json([record for seq in self.sequences if seq is not None
                                             for record in seq.failure_records()])
        if leave:
            self.world.leave()
        if not fresh:
            return
        if self.world.chief:
            for worker, records in enumerate(failed):
                self.checkpointer.save_failures(pos, worker, records)
            rng = [keras.ops.convert_to_numpy(v).tolist() for v in _seed_states(self.model)]
            # Saved with every layer trainable: a model loaded from it builds its optimizer for every
            # variable, as new_model did, so the optimizer's state loads whole (a frozen backbone's too).
            was_frozen = set_frozen(self.model, False)
            try:
                self.checkpointer.save(self.model, replace(pos, rng=rng, fingerprint=self.fingerprint,
                                                           settings=self.settings.redacted()))
            finally:
                if was_frozen:
                    set_frozen(self.model, True)
            log.info("checkpoint: %s", f"{pos.epoch} epochs done" if pos.step == 0 else
                     f"epoch {pos.epoch + 1} trained, validation pending" if pos.step == self.steps else
                     f"epoch {pos.epoch + 1}, step {pos.step}/{self.steps}")
        self._saved_at, self._last_save = (pos.epoch, pos.step), time.monotonic()


def weights_digest(variables) -> str:
    digest = hashlib.sha256()
    for variable in variables:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).tobytes())
    return digest.hexdigest()
