"""One job run: train, evaluate or predict, with metrics served throughout.

Exit codes (docs/design.md): 0 done, 1 a transient failure to retry (an output
could not be written for lack of space, a lost peer worker, an unexpected
error), 2 invalid configuration (also a resume whose order-fixing settings differ
from the checkpoint's), 3 no usable data, 4 training diverged, 143 stopped by
SIGTERM after a checkpoint (130 for SIGINT).
"""

from __future__ import annotations

import json
import logging
import signal
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry

from loader import (
    DatasetIndex,
    DecodeError,
    ManifestError,
    ProbeInterrupted,
    Skipped,
    VideoSequence,
    check_decode_device,
    find_videos,
    flip_label_map,
    probe,
    read_paths,
)
from loader.atomic import OutputError, write_atomic, write_json_atomic
from loader.decode import IMAGE_EXTENSIONS
from loader.sequence import ClipsUnavailable
from vidtrain import report
from vidtrain.checkpoint import (
    BEST,
    Checkpointer,
    CheckpointError,
    Position,
    ResumeMismatch,
    agreed,
    check_resume,
    fingerprint,
    position_of,
    record_of,
)
from vidtrain.control import Diverged, Stopped, StopRequest
from vidtrain.data import IndexProbe, NoDataError, Splits, assemble, splits_of, write_index
from vidtrain.export import export_saved_model, read_meta
from vidtrain.metrics import JobMetrics, push_outcome, serve
from vidtrain.peers import EXIT_PEER_LOST, PeerLost
from vidtrain.settings import ConfigProblem, Settings, env_name

log = logging.getLogger("vidtrain")
EXIT_OK, EXIT_OUTPUT, EXIT_CONFIG, EXIT_NO_DATA, EXIT_DIVERGED = 0, 1, 2, 3, 4
CLASSES_FILE = "classes.json"


def run(settings: Settings, progress: bool, registry: CollectorRegistry | None = None, events=None,
        server=None) -> int:
    """Run the job `settings` describe; returns the exit code. `registry` (default: a new one) holds
    the metrics, served by `server` (default: started here on METRICS_PORT); `events`
    (vidtrain.control.LoopEvents) is where a caller may act inside the loop."""
    registry = registry or CollectorRegistry()
    metrics = JobMetrics(registry)
    if server is None:
        try:
            server = serve(registry, str(settings.metrics_addr), settings.metrics_port)
        except OSError as exc:
            log.error("invalid configuration: VIDTRAIN_METRICS_PORT=%d: cannot serve metrics on %s:%d (%s)",
                      settings.metrics_port, settings.metrics_addr, settings.metrics_port, exc.strerror)
            return EXIT_CONFIG
    log.info("metrics on http://%s:%d/metrics", settings.metrics_addr, server.server_port)
    stop = StopRequest()
    try:
        with stop:
            stop.immediate = True  # until training begins there is nothing to checkpoint: stop at once
            check_memory(settings)
            if settings.mode != "predict":
                await_data(settings)
            if settings.mode == "train":
                return train_mode(settings, metrics, progress, stop, events)
            if settings.mode == "prepare":
                from vidtrain.prepare import prepare_mode

                return prepare_mode(settings, metrics, progress)
            return {"evaluate": evaluate_mode, "predict": predict_mode}[settings.mode](settings, metrics, progress)
    except (Stopped, ProbeInterrupted):
        log.info("stopped before training began")
        return 128 + (stop.signum or signal.SIGTERM)
    except (NoDataError, DecodeError, ManifestError) as exc:
        log.error("no usable data: %s", exc)
        return EXIT_NO_DATA
    except (ConfigProblem, ResumeMismatch, CheckpointError) as exc:
        log.error("invalid configuration: %s", exc)
        return EXIT_CONFIG
    except Diverged as exc:
        log.error("%s", exc)
        return EXIT_DIVERGED
    except OutputError as exc:  # disk full: Kubernetes retries (the exit code is not in podFailurePolicy)
        log.error("%s", exc)
        return EXIT_OUTPUT
    except PeerLost as exc:  # a worker is gone: all restart and resume (retried, as exit 1 is)
        log.error("%s", exc)
        return EXIT_PEER_LOST
    except (WorkersDisagree, DataNotReady) as exc:
        log.error("%s", exc)
        return EXIT_OUTPUT
    except ClipsUnavailable as exc:  # the storage, not a file: the restarted job resumes from its checkpoint
        log.error("%s; stopping with exit %d so that the job restarts and resumes from the last checkpoint",
                  exc, EXIT_OUTPUT)
        return EXIT_OUTPUT
    finally:
        server.shutdown()


DATA_POLL_S = 5.0  # how often a job waiting for its data looks again


class DataNotReady(RuntimeError):
    """The data did not appear within VIDTRAIN_DATA_WAIT_S (exit 1: the orchestrator retries)."""


def await_data(settings: Settings) -> None:
    """Wait up to DATA_WAIT_S for the data the settings name (DATA_DIR's train/, the manifests,
    VIDEO_ROOT): in Kubernetes a training pod may start while the data claim is still being filled.
    A log line a minute; raises DataNotReady when the time is up. (With DATA_WAIT_S 0, settings
    validation refuses missing data at once.)"""
    deadline, logged = time.monotonic() + settings.data_wait_s, None
    while problems := settings.missing_data():
        now = time.monotonic()
        why = "; ".join(f"{env_name(field)}: {text}" for field, text in problems)
        if now >= deadline:
            raise DataNotReady(f"the data is not there after VIDTRAIN_DATA_WAIT_S={settings.data_wait_s:g} s ({why}); "
                               f"stopping with exit {EXIT_OUTPUT} to be retried")
        if logged is None or now - logged >= 60:
            log.info("waiting for the data: %s (at most %.0f s more)", why, deadline - now)
            logged = now
        time.sleep(min(DATA_POLL_S, deadline - now))


def check_memory(settings: Settings) -> None:
    """Refuse (exit 2) a loader whose batches cannot fit: batch bytes x (depth + workers + 1) is what
    the prefetcher may hold at once, and a decode that runs out of memory dies without a word."""
    batch = settings.batch_size * settings.frames * settings.height * settings.width * 3
    peak = batch * (settings.prefetch_batches + settings.loader_workers + 1)
    available = available_memory()
    if available is not None and peak > available:
        raise ConfigProblem(
            f"the loader would need about {peak / 2**30:.1f} GiB (batches of {batch / 2**30:.2f} GiB x "
            f"(VIDTRAIN_PREFETCH_BATCHES={settings.prefetch_batches} + VIDTRAIN_LOADER_WORKERS="
            f"{settings.loader_workers} + 1)), more than the {available / 2**30:.1f} GiB available: lower "
            "VIDTRAIN_BATCH_SIZE, VIDTRAIN_FRAMES, VIDTRAIN_HEIGHT/WIDTH or VIDTRAIN_PREFETCH_BATCHES")


def available_memory() -> int | None:
    """Bytes this process may still use: the smaller of MemAvailable and the cgroup's limit left."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    try:  # a container's limit (cgroup v2)
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def _prepare(settings: Settings, splits: Splits) -> Splits:
    """`splits`, after the checks the data allows before training: the decode device, flip twins."""
    try:
        check_decode_device(settings.decode_device, splits.train[0][0])
    except RuntimeError as exc:
        raise ConfigProblem(f"VIDTRAIN_DECODE_DEVICE={settings.decode_device}: {exc}") from exc
    if settings.augment_flip:
        try:
            flip_label_map(splits.class_names)
        except ValueError as exc:
            raise ConfigProblem(f"VIDTRAIN_AUGMENT_FLIP=true: {exc}") from exc
    log.info("data: %d train / %d val clips listed, %d classes %s (%s)", len(splits.train), len(splits.val),
             len(splits.class_names), splits.class_names, splits.source)
    return splits


def train_mode(settings: Settings, metrics: JobMetrics, progress: bool, stop: StopRequest, events=None) -> int:
    """List the data (or read the index), check a resume, train while the index's probe runs. Only the
    chief (worker 0) reads and writes OUTPUT_DIR: it lists the data and finds the checkpoint, then
    joins the others and sends them its index and the resume state (_from_chief); every worker trains
    from the chief's index, with the same shards and steps."""
    chief = settings.writes_outputs
    world = None if chief else _make_world(settings, stop)
    checkpoints = settings.output_dir / "checkpoints"
    splits = resume = current = None
    if chief:
        resume = Checkpointer(checkpoints).latest()
        splits = _prepare(settings, assemble(settings, pinned=resume is not None))
        current = _check_resume(settings, splits, resume)
        write_index(settings, splits)
    world = world or _make_world(settings, stop)  # the chief joins once its index is written
    with tempfile.TemporaryDirectory(prefix="vidtrain-from-chief-") as scratch:
        splits, resume = _from_chief(world, settings, splits, resume, Path(scratch))
        if not chief:
            splits = _prepare(settings, splits)
            current = _check_resume(settings, splits, resume)
        _check_agreement(world, agreed(settings, splits.train, splits.val, splits.class_names, resume))
        if resume is not None and (done := _already_done(settings, resume)):
            log.info("%s", done)
            world.leave()
            return EXIT_OK
        indexing = IndexProbe(settings, splits, metrics, stop_when=lambda: stop.requested).start() if chief else None
        stop.immediate = False  # from here a stop request ends the current step and checkpoints
        try:
            return _train(settings, splits, metrics, stop, world, resume, current, progress, events, indexing)
        except ClipsUnavailable:
            # Clips that fail to decode one after the other: bad data, if the probe finds it so (exit 3),
            # else a failing storage (exit 1).
            if indexing is not None and (problem := indexing.wait()) is not None:
                raise problem from None
            raise


def _check_resume(settings: Settings, splits: Splits, resume: Position | None) -> dict:
    """This run's fingerprint (what fixes the clip order and the model), checked against the resume's."""
    workers = len(settings.ranks()[1]) if settings.distributed else 1
    current = fingerprint(settings, workers, splits.class_names, splits.train)
    if resume is not None:
        check_resume(resume, current, settings, settings.output_dir / "checkpoints")
    return current


def _from_chief(world, settings: Settings, splits: Splits | None, resume: Position | None,
                scratch: Path) -> tuple[Splits, Position | None]:
    """What the chief read from OUTPUT_DIR, on every worker: its dataset index and the resume state (the
    checkpoint's record and model file, the best epoch's weights, the clips that failed on each worker
    before the stop), sent over the workers' own connection (World.broadcast). So no worker but the
    chief reads or writes OUTPUT_DIR: the output volume needs to be the chief's only. The others keep
    the files in `scratch` while they train."""
    checkpoints = Checkpointer(settings.output_dir / "checkpoints")
    if world.chief and resume is not None:
        best = checkpoints.best_weights
        resume = replace(resume, best_file=best if resume.best and best.exists() else None,
                         failed=checkpoints.failures(resume, 0))
    if world.count == 1:
        return splits, resume
    header = None
    if world.chief:
        header = {"index": splits.index.to_json(), "resume": None if resume is None else record_of(resume),
                  "failed": None if resume is None else [checkpoints.failures(resume, w) for w in range(world.count)],
                  "best": resume is not None and resume.best_file is not None}
    header = json.loads(world.broadcast(json.dumps(header).encode()))
    model = world.broadcast(resume.model_file.read_bytes() if world.chief else b"") if header["resume"] else None
    best = world.broadcast(resume.best_file.read_bytes() if world.chief else b"") if header["best"] else None
    if world.chief:
        return splits, resume
    splits = splits_of(settings, DatasetIndex.from_json(header["index"], "the chief's dataset index"))
    if header["resume"] is None:
        return splits, None
    (scratch / "checkpoint.keras").write_bytes(model)
    if best is not None:
        (scratch / BEST).write_bytes(best)
    return splits, replace(position_of(header["resume"], scratch / "checkpoint.keras"),
                           best_file=scratch / BEST if best is not None else None,
                           failed=header["failed"][world.index])


class WorkersDisagree(RuntimeError):
    """The workers hold different indexes or resume positions: exit 1, so that they restart together."""


def _check_agreement(world, digests: dict) -> None:
    """Every worker confirms, in one collective, the same settings, dataset index and resume position."""
    differ = world.disagreements(digests)
    if not differ:
        return
    mine = ", ".join(f"{name} {digests[name][:12]}" for name in differ)
    if "settings" in differ:
        raise ConfigProblem(f"the workers run with different settings (this worker's: {mine}): every worker needs "
                            "the same VIDTRAIN_* values but for its index, ports, caches and loader threads")
    raise WorkersDisagree(f"the workers disagree on the {' and the '.join(differ)} (this worker's: {mine}); "
                          f"stopping with exit {EXIT_OUTPUT} so that they restart together")


def _make_world(settings: Settings, stop: StopRequest):
    from vidtrain.train import make_world

    world = make_world(settings)
    stop.install()  # creating a MultiWorkerMirroredStrategy takes SIGTERM over; take it back
    return world


def _already_done(settings: Settings, resume: Position) -> str | None:
    """A message when the checkpoint leaves nothing to train; raises when it is past EPOCHS."""
    if resume.epoch < settings.epochs:
        return None
    if resume.epoch > settings.epochs or resume.step > 0:
        raise ConfigProblem(f"VIDTRAIN_EPOCHS={settings.epochs}: the checkpoint in {settings.output_dir} is already "
                            f"at epoch {resume.epoch}, step {resume.step}; raise VIDTRAIN_EPOCHS to train on, or "
                            "start fresh with another VIDTRAIN_OUTPUT_DIR")
    if not resume.finished:
        return None  # trained, but stopped before its final outputs: write them
    return (f"training is complete: {resume.epoch} epochs in {settings.output_dir} (nothing changed); "
            "raise VIDTRAIN_EPOCHS to train on")


def _train(settings, splits, metrics, stop, world, resume, current, progress, events, indexing) -> int:
    from vidtrain.train import final_evaluation, train, worker_share

    out = settings.output_dir
    if world.chief:
        Checkpointer(out / "checkpoints").remove_stale()
        write_json_atomic(out / CLASSES_FILE, splits.class_names)
    outcome = train(settings, splits, metrics, stop, world, resume, current, progress, events,
                    data_problem=indexing.problem if indexing is not None else None)
    if outcome.stopped:
        world.leave()
        log.info("stopped; the next run with VIDTRAIN_OUTPUT_DIR=%s resumes", out)
        return 128 + (stop.signum or signal.SIGTERM)
    final = final_evaluation(settings, splits, metrics, outcome, world)  # every worker its shard of videos
    shares = world.gather_json(worker_share(settings, metrics, outcome, world))
    if world.chief:  # the chief writes model and reports and pushes the outcome
        if (problem := indexing.wait()) is not None:  # the index is complete before the report is written
            raise problem
        _finish_training(settings, splits, metrics, outcome, final, shares)
        Checkpointer(out / "checkpoints").mark_finished()
    # The other workers wait for the chief's final outputs: a chief replaced while writing them finds
    # its peers still there to restart with (Kubernetes recreates failed pods, not finished ones).
    world.barrier()
    world.leave()
    if not world.chief:
        metrics.last_success.set(time.time())
    return EXIT_OK


def _finish_training(settings: Settings, splits: Splits, metrics: JobMetrics, outcome, final: dict,
                     shares: list[dict]) -> None:
    """model.keras, the export, curves, report.json and, with several workers, workers/worker-<i>.json
    (the chief only); `final` is the final evaluation, `shares` what each worker did (train.worker_share)."""
    out = settings.output_dir
    report.write_history(out, outcome.history)
    write_atomic(out / "model.keras", outcome.model.save)
    export_saved_model(outcome.model, out, splits.class_names, settings.sampling, settings.resize,
                       settings.frame_template)
    report.plot_curves(out, outcome.history)
    if len(shares) > 1:
        for share in shares:
            write_json_atomic(_worker_file(out, share["worker"]), share | {
                "clips": [path for path, _ in splits.train[share["worker"]::len(shares)]]})
    wait = metrics.total("vidtrain_data_wait_seconds_sum")
    seconds = max(outcome.seconds, 1e-9)
    scores = report.final_scores(final, splits.class_names)
    scores["final"] |= {f"train_{k}": v[-1] for k, v in outcome.history.items() if not k.startswith("val_")}
    report.plot_confusion(out / "confusion_matrix.png", final["confusion_matrix"], splits.class_names)
    skipped = splits.skipped + [Skipped(**s) for share in shares for s in share["skipped"]]
    report.write_report(out, {
        "mode": "train", "settings": settings.redacted(), "dataset": _counts(splits),
        "skipped": _skipped(skipped),
        "resumed_from": outcome.resumed_from, "epochs_completed": len(outcome.history.get("loss", [])),
        "final_model": ({"kept": "best", "epoch": outcome.best["epoch"], "val_accuracy": outcome.best["val_accuracy"]}
                        if outcome.best else {"kept": "last", "epoch": len(outcome.history.get("loss", []))}),
        "throughput": {"clips_trained": outcome.clips_trained,
                       "train_batches": int(metrics.total("vidtrain_batches_total", split="train")),
                       "val_batches": int(metrics.total("vidtrain_batches_total", split="val")),
                       "train_seconds": round(outcome.seconds, 2),
                       "clips_per_second": round(outcome.clips_trained / seconds, 2),
                       "step_seconds": round(metrics.total("vidtrain_train_step_seconds_sum"), 2),
                       "data_wait_seconds": round(wait, 2),
                       "data_wait_share": round(wait / seconds, 4),
                       "workers": [{k: share[k] for k in ("worker", "train_clips", "val_clips")} for share in shares]},
        **scores,
    })
    _succeed(settings, metrics, {"val_accuracy": final["accuracy"], "val_loss": final["loss"]})
    kept = f"the best epoch's ({outcome.best['epoch']}) model" if outcome.best else "the last epoch's model"
    log.info("done: %s, val accuracy %.3f; outputs in %s", kept, final["accuracy"], out.resolve())


def _worker_file(out: Path, index: int) -> Path:
    (out / "workers").mkdir(parents=True, exist_ok=True)
    return out / "workers" / f"worker-{index}.json"


def _succeed(settings: Settings, metrics: JobMetrics, final: dict) -> None:
    metrics.last_success.set(time.time())
    if settings.pushgateway_url is not None:
        push_outcome(settings.pushgateway_url.get_secret_value(), "vidtrain", final)


def _skipped(skipped: list) -> list[dict]:
    """Each left-out clip once, with the first reason found (the probe's before a decode's)."""
    first: dict[str, dict] = {}
    for s in skipped:
        first.setdefault(s.path, vars(s))
    return list(first.values())


def _counts(splits: Splits) -> dict:
    """Listed clips per split and class, and how many of them the index's probe left out."""
    per_class = {name: {"train": 0, "val": 0} for name in splits.class_names}
    for split, items in (("train", splits.train), ("val", splits.val)):
        for _, label in items:
            per_class[splits.class_names[label]][split] += 1
    return {"source": splits.source, "train_clips": len(splits.train), "val_clips": len(splits.val),
            "skipped_clips": len(splits.skipped), "classes": per_class}


def _load_model(settings: Settings):
    """The trained model, its class names, and `settings` with the clip shape the model takes
    (FRAMES, HEIGHT, WIDTH come from the model: other values would not fit it) and, unless
    VIDTRAIN_SAMPLING is set, the sampling it was trained with (its test clips keep that time scale)."""
    import keras

    path = settings.output_dir / "model.keras"
    if not path.exists():
        raise ConfigProblem(f"VIDTRAIN_OUTPUT_DIR={settings.output_dir}: no model.keras to {settings.mode} "
                            "(train first, with the same output dir)")
    model = keras.models.load_model(path)
    shape = dict(zip(("frames", "height", "width"), model.input_shape[1:4]))
    for name, value in shape.items():
        if getattr(settings, name) != value and name in settings.model_fields_set:
            log.warning("%s=%s ignored: the model in %s takes %s=%d", env_name(name), getattr(settings, name), path,
                        env_name(name), value)
    meta = read_meta(settings.output_dir) or {}
    for name in ("sampling", "resize"):  # the model's own test clips, unless the user says otherwise
        if name in meta and name not in settings.model_fields_set:
            shape[name] = meta[name]
    return model, report.read_json(settings.output_dir / CLASSES_FILE), settings.model_copy(update=shape)


def evaluate_mode(settings: Settings, metrics: JobMetrics, progress: bool) -> int:
    from vidtrain.train import sequences

    model, class_names, settings = _load_model(settings)
    splits = _prepare(settings, assemble(settings, pinned=True))
    if splits.class_names != class_names:
        raise ConfigProblem(f"the data's classes {splits.class_names} differ from the model's {class_names}")
    _, val_seq = sequences(settings, splits, metrics, eval_clips=settings.eval_clips,
                           eval_crops=settings.eval_crops)
    final = report.scores_of(report.evaluate(model, val_seq, settings.loader_workers, settings.prefetch_batches,
                                             metrics.loader("val")), val_seq.views_per_video, val_seq.crops)
    report.plot_confusion(settings.output_dir / "evaluation_confusion_matrix.png", final["confusion_matrix"],
                          class_names)
    report.write_report(settings.output_dir, {
        "mode": "evaluate", "settings": settings.redacted(), "dataset": _counts(splits),
        "skipped": _skipped(splits.skipped + val_seq.skipped),
        **report.final_scores(final, class_names),
    })
    metrics.loss.labels("val").set(final["loss"])
    metrics.accuracy.labels("val").set(final["accuracy"])
    _succeed(settings, metrics, {"val_accuracy": final["accuracy"], "val_loss": final["loss"]})
    log.info("evaluate: val accuracy %.3f on %d clips", final["accuracy"], final["clips"])
    return EXIT_OK


def predict_inputs(path: Path) -> list[str]:
    """Clips named by PREDICT_INPUT, in input order: a clip, a frame folder, a folder of clips, a CSV."""
    if path.suffix.lower() == ".csv":
        return read_paths(path)  # a label column may follow the path, or not
    if not path.is_dir():
        return [str(path)]
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in entries):
        return [str(path)]  # the folder is itself one clip's frames
    if entries and all(p.is_dir() for p in entries) and all(
            any(q.suffix.lower() not in IMAGE_EXTENSIONS for q in p.iterdir()) for p in entries):
        return [p for p, _ in find_videos(path)[0]]  # class folders of clips
    return [str(p) for p in entries]


def predict_mode(settings: Settings, metrics: JobMetrics, progress: bool) -> int:
    import numpy as np

    from loader import PrefetchGenerator

    model, class_names, settings = _load_model(settings)
    paths = predict_inputs(settings.predict_input)
    if not paths:
        raise NoDataError(f"VIDTRAIN_PREDICT_INPUT={settings.predict_input} names no clips")
    good, skipped, _ = probe([(p, i) for i, p in enumerate(paths)], settings.index_workers, progress,
                             timeout=settings.decode_timeout_s, template=settings.frame_template,
                             check=settings.index_check, metrics=metrics)
    rows = [{"path": p, "error": ""} for p in paths]
    for s in skipped:  # labels are input positions: a clip listed twice gets its error twice
        rows[s.label]["error"] = s.reason
        metrics.count_skip(s.kind, "index")
    if good:  # labels carry the input position, so results go back to their rows
        seq = VideoSequence(good, settings.batch_size, settings.frames, (settings.height, settings.width),
                            sampling=settings.sampling, test_mode=True, resize=settings.resize, on_bad_video="fail",
                            frame_template=settings.frame_template, device=settings.decode_device, metrics=metrics,
                            decode_timeout=settings.decode_timeout_s)
        with PrefetchGenerator(seq, settings.loader_workers, settings.prefetch_batches,
                               metrics=metrics.loader("predict")) as gen:
            for x, positions in gen:
                probs = np.exp(report.log_softmax(model.predict_on_batch(x)))
                for pos, p in zip(positions, probs):
                    best = int(np.argmax(p))
                    rows[pos] |= {"predicted": class_names[best], "confidence": f"{p[best]:.4f}",
                                  **{f"p_{n}": f"{v:.4f}" for n, v in zip(class_names, p)}}
    report.write_predictions(settings.output_dir, rows, class_names)
    report.write_report(settings.output_dir, {
        "mode": "predict", "settings": settings.redacted(), "inputs": len(paths), "predicted": len(good),
        "skipped": [vars(s) for s in skipped], "class_names": class_names})
    _succeed(settings, metrics, {"predicted_clips": len(good)})
    log.info("predict: %d of %d clips -> %s", len(good), len(paths), settings.output_dir / "predictions.csv")
    return EXIT_OK

