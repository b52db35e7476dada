"""Resume state: atomic checkpoints that a restarted job continues from exactly.

A checkpoint is a full `.keras` model (weights and optimizer state) plus
`state.json`, which names it and holds everything else a position needs to
mean the same thing after a restart (nanoGPT saves `model_args` and `config`
with its weights for the same reason):
- the position: `epoch` epochs completed (trained *and* validated) plus `step`
  steps of the next one (`clips` of it across all workers); `step` equal to the
  steps per epoch means "trained, validation pending";
- that partial epoch's running sums (loss, correct, clips), so its reported
  loss is the mean over all of its steps, before and after the restart;
- the history of completed epochs;
- random-generator states that `.keras` files leave out (Keras 3 restores a
  Dropout layer's SeedGenerator as [new seed, 0]);
- the fingerprint of every setting that fixes the clip order or the model's
  shape; a resume with a different one is refused (`check_resume`).
- beside it, per worker, the clips that failed to decode so far
  (`failed-eEEEE-sSSSSSS-wW.json`), so a resumed run replaces them exactly as
  the uninterrupted run did.
Writes are atomic (loader.atomic), and a checkpoint's record (`ckpt-*.json`,
then state.json) is written only after its model file is complete, so a kill
at any moment leaves the previous checkpoint usable; a model file whose record
a kill prevented is not a checkpoint: it is ignored and removed at the next
start. The last KEEP checkpoints stay.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from loader.atomic import remove_temporaries, write_atomic, write_json_atomic
from vidtrain.settings import Settings, env_name

log = logging.getLogger("vidtrain")
STATE = "state.json"
BEST = "best.weights.h5"
KEEP = 2
# Settings that fix which clips a batch number means, or the shape of the model: a resume must match.
ORDER_FIXING = ("seed", "batch_size", "frames", "height", "width", "model", "rnn_cell", "backbone", "resize",
                "sampling", "augment_flip", "augment_crop", "mixed_precision")
# Settings that say who a worker is: they differ between workers and never matter to a resume.
IDENTITY = ("worker_index", "tf_config")


def items_digest(items) -> str:
    """sha256 of the (path, label) list, in order: the clips a position counts through."""
    return hashlib.sha256(json.dumps([[str(p), int(label)] for p, label in items]).encode()).hexdigest()


def fingerprint(settings: Settings, workers: int, class_names: list[str], train_items) -> dict:
    """Everything that fixes the clip order and the model's shape, as stored with a checkpoint."""
    return {**{name: getattr(settings, name) for name in ORDER_FIXING}, "num_workers": workers,
            "class_names": list(class_names), "train_clips": len(train_items),
            "train_items_sha256": items_digest(train_items)}


# Settings that may differ between the workers of one job: who a worker is, and its own resources.
PER_WORKER = IDENTITY + ("output_dir", "cache_dir", "frame_cache_gb", "loader_workers", "prefetch_batches",
                         "index_workers", "decode_device", "decode_timeout_s", "reindex", "metrics_port",
                         "metrics_addr", "pushgateway_url", "peer_timeout_s")


def agreed(settings: Settings, train_items, val_items, class_names: list[str], resume: Position | None) -> dict:
    """What every worker of a job must hold the same, as digests: its settings (but PER_WORKER), the
    dataset it trains and validates on, and the position it resumes from."""
    values = {k: v for k, v in settings.redacted().items() if k not in PER_WORKER}
    return {"settings": _digest(values), "dataset index": _digest([class_names, items_digest(train_items),
                                                                   items_digest(val_items)]),
            "resume position": _digest(None if resume is None else [resume.epoch, resume.step])}


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Position:
    """Where training stands (see the module docstring); `finished` once the final outputs are written."""

    epoch: int = 0
    step: int = 0
    clips: int = 0
    sums: tuple[float, float, float] = (0.0, 0.0, 0.0)  # loss over clips, correct clips, clips
    history: dict = field(default_factory=dict)
    rng: list = field(default_factory=list)
    fingerprint: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    finished: bool = False
    schedule_start: int = 0  # the epoch the rate schedule began at (vidtrain.recipe.schedule_start)
    best: dict = field(default_factory=dict)  # FINAL_MODEL=best: {"epoch", "val_accuracy"} of the best so far
    # Where this process finds what the record names (not part of it): the model file, the best epoch's
    # weights, and the clips that failed on this worker before the stop.
    model_file: Path | None = None
    best_file: Path | None = None
    failed: list | None = None


class ResumeMismatch(ValueError):
    """The checkpoint was made with settings that give its position another meaning (exit code 2)."""


def check_resume(position: Position, current: dict, settings: Settings, folder: Path) -> None:
    """Raise ResumeMismatch naming every differing order-fixing setting; log the allowed changes."""
    saved = position.fingerprint
    problems = [f"{env_name(key)} is {current[key]!r} now, the checkpoint was made with {saved.get(key)!r}"
                for key in (*ORDER_FIXING, "num_workers") if saved.get(key) != current[key]]
    now = settings.redacted()
    if saved.get("class_names") != current["class_names"]:
        problems.append(f"the training classes differ ({_why_data(position, now)}): {current['class_names']} now, "
                        f"{saved.get('class_names')} in the checkpoint")
    elif saved.get("train_items_sha256") != current["train_items_sha256"]:
        problems.append(f"the training clips differ ({_why_data(position, now)}): {current['train_clips']} clips "
                        f"now, {saved.get('train_clips')} in the checkpoint, or the same number in another order")
    if problems:
        reindex = " and without VIDTRAIN_REINDEX" if settings.reindex else ""
        raise ResumeMismatch(
            f"cannot resume from {folder / STATE}: its position (epoch {position.epoch}, step {position.step}) "
            "means other clips or another model under these settings:\n  " + "\n  ".join(problems)
            + f"\nResume with the checkpoint's settings{reindex} (it trains on the clips it was trained on), or "
            f"start fresh: another VIDTRAIN_OUTPUT_DIR, or remove {folder} (the data is then listed again).")
    for key, before in sorted(position.settings.items()):
        if key not in IDENTITY and key in now and now[key] != before:
            log.info("resuming with %s changed: %r -> %r", env_name(key), before, now[key])


def _why_data(position: Position, now: dict) -> str:
    """What made the listing differ from the checkpoint's: the settings that name the data, or a new listing."""
    from vidtrain.data import SOURCE_SETTINGS

    changed = [env_name(k) for k in (*SOURCE_SETTINGS, "val_fraction") if position.settings.get(k, now[k]) != now[k]]
    if changed:
        return f"{', '.join(changed)} changed"
    if now.get("reindex"):
        return "VIDTRAIN_REINDEX=1 listed the data again, and it names other clips now"
    return "the dataset index was listed again, and it names other clips now"


class CheckpointError(RuntimeError):
    """No checkpoint in the folder can be resumed from (exit code 2)."""


class Checkpointer:
    """Saves and finds checkpoints in `folder`. Called from the training thread of the chief.

    Each checkpoint is a model file `ckpt-eEEEE-sSSSSSS.keras` with a record of its position
    beside it (`.json`); `state.json` names the newest. The last KEEP stay, so a damaged
    newest one (a truncated file, a corrupt state.json) falls back to the one before."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def save(self, model, position: Position) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"ckpt-e{position.epoch:04d}-s{position.step:06d}"
        write_atomic(self.folder / f"{name}.keras", model.save)
        position = replace(position, model_file=self.folder / f"{name}.keras")
        write_json_atomic(self.folder / f"{name}.json", record_of(position))
        write_json_atomic(self.folder / STATE, record_of(position))
        for old in sorted(self.folder.glob("ckpt-*.json"))[:-KEEP]:
            if old.stem != name:  # the record first: a kill in between leaves an orphan, removed at the next start
                old.unlink(missing_ok=True)
                old.with_suffix(".keras").unlink(missing_ok=True)
                for failures in self.folder.glob(f"failed-{old.stem.removeprefix('ckpt-')}-w*.json"):
                    failures.unlink(missing_ok=True)
        return position.model_file

    @property
    def best_weights(self) -> Path:
        """The weights of the best validation epoch so far (FINAL_MODEL=best)."""
        return self.folder / BEST

    def save_best(self, model) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.best_weights, model.save_weights)

    def save_failures(self, position: Position, worker: int, failed: list[dict]) -> None:
        """The clips that failed to decode on `worker` up to `position`, each with the last epoch it
        failed in (loader.VideoSequence.failure_records; the chief writes every worker's, gathered at
        each checkpoint; nothing is written while none failed)."""
        if failed:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.folder / _failures_name(position.epoch, position.step, worker),
                              failed)

    def failures(self, position: Position, worker: int) -> list[dict]:
        """What `save_failures` wrote for `worker` at `position`."""
        path = self.folder / _failures_name(position.epoch, position.step, worker)
        try:
            records = json.loads(path.read_text())
            if not all(isinstance(r, dict) and {"path", "reason", "kind"} <= set(r) for r in records):
                raise ValueError("not a list of failure records")
            return records
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError) as exc:
            log.warning("%s cannot be read (%s): clips that failed before the stop are tried again", path, exc)
            return []

    def mark_finished(self) -> None:
        """Record that the final outputs of the position in state.json are written."""
        position = self.latest()
        if position is not None:
            write_json_atomic(self.folder / STATE, record_of(replace(position, finished=True)))

    def remove_stale(self) -> None:
        """What a kill left (the chief, at start, before writing): temporary files of an interrupted
        write, and model files whose record was never written (they are not checkpoints)."""
        for stale in remove_temporaries(self.folder):
            log.info("removed %s, left by an interrupted write", stale)
        for model in self._orphans():
            log.info("removing %s: its record was never written (a kill between the two writes)", model)
            model.unlink(missing_ok=True)

    def _orphans(self) -> list[Path]:
        return [m for m in self.folder.glob("ckpt-*.keras") if not m.with_suffix(".json").exists()]

    def latest(self) -> Position | None:
        """The newest checkpoint that loads: the newest record beside a complete model file, or
        state.json's where it names the same position (it also says whether the final outputs are
        written); state.json naming an older one (a kill between the two writes) loses. Raises
        CheckpointError when checkpoints exist and none of them can be used."""
        if not self.folder.is_dir():
            return None
        problems, found = [], {}
        for kind, candidates in (("state", [self.folder / STATE]),
                                 ("record", sorted(self.folder.glob("ckpt-*.json"), reverse=True))):
            for record in (c for c in candidates if c.exists()):
                try:
                    found[kind] = (record, _load(record, self.folder))
                    break
                except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
                    problems.append(f"{record.name}: {exc}")
        if found:
            record, position = max(found.values(), key=lambda f: (f[1].epoch, f[1].step, f[0].name == STATE))
            if problems or record.name != STATE:
                why = "; ".join(problems) or f"{STATE} names an older position than {record.name}"
                log.warning("cannot resume from %s; resuming from %s instead", why, record.name)
            return position
        if problems:
            raise CheckpointError(
                f"no usable checkpoint in {self.folder} ({'; '.join(problems)}). "
                f"To start fresh, set another VIDTRAIN_OUTPUT_DIR or remove {self.folder}.")
        if orphans := self._orphans():  # a kill before the first record: nothing was ever checkpointed
            log.warning("%s holds %s without a record (a kill between writing the model and its record): "
                        "starting from scratch", self.folder, ", ".join(m.name for m in orphans))
        return None


def _failures_name(epoch: int, step: int, worker: int) -> str:
    return f"failed-e{epoch:04d}-s{step:06d}-w{worker}.json"


LOCAL = ("model_file", "best_file", "failed")  # Position's fields that are this process's, not the record's


def record_of(position: Position) -> dict:
    """The checkpoint's record of `position` (its JSON), naming the model file by its name."""
    state = asdict(position) | {"model": position.model_file.name}
    for name in LOCAL:
        del state[name]
    return state


def position_of(state: dict, model_file: Path) -> Position:
    """The Position a record holds, its model in `model_file`."""
    state = {k: v for k, v in state.items() if k != "model"}
    state["sums"] = tuple(state.get("sums", (0.0, 0.0, 0.0)))
    known = set(Position.__dataclass_fields__) - set(LOCAL)
    return Position(**{k: v for k, v in state.items() if k in known}, model_file=model_file)


def _load(record: Path, folder: Path) -> Position:
    """The position in `record`, after checking that its model file is a complete archive."""
    state = json.loads(record.read_text())
    model_file = folder / state["model"]
    with zipfile.ZipFile(model_file) as archive:  # a truncated .keras file fails here, not mid-load
        if (bad := archive.testzip()) is not None:
            raise ValueError(f"{model_file.name} is damaged ({bad})")
    return position_of(state, model_file)
