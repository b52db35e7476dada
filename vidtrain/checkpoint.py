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
Writes go to a temporary file, are fsynced and renamed into place, and
state.json is replaced only after its model file is complete, so a kill at
any moment leaves the previous checkpoint usable. The last KEEP model files stay.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from vidtrain.settings import Settings, env_name

log = logging.getLogger("vidtrain")
STATE = "state.json"
KEEP = 2
# Settings that fix which clips a batch number means, or the shape of the model: a resume must match.
ORDER_FIXING = ("seed", "batch_size", "frames", "height", "width", "model", "rnn_cell", "sampling", "augment_flip",
                "augment_crop")
# Settings that say who a worker is: they differ between workers and never matter to a resume.
IDENTITY = ("worker_index", "tf_config")
DATA_SETTINGS = "VIDTRAIN_DATA_DIR / VIDTRAIN_TRAIN_MANIFEST / VIDTRAIN_VAL_FRACTION"


class OutputError(OSError):
    """An output could not be written for lack of space (exit code 1: Kubernetes retries)."""


FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def write_atomic(path: Path, write) -> None:
    """Call write(tmp_path), fsync, then rename to `path` (same folder, so the rename is atomic).
    The file gets mode 0644 (mkstemp's 0600 would hide it from other users of a mounted volume).
    Out of space, the temporary file is removed, `path` is left as it was, and OutputError says
    which file and how much space is left."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if _out_of_space(exc):
            free = shutil.disk_usage(path.parent).free
            raise OutputError(f"cannot write {path}: no space left ({free / 2**20:.1f} MiB free in {path.parent}); "
                              "the previous checkpoint is intact") from None
        raise


def _out_of_space(exc: BaseException) -> bool:
    """An ENOSPC (or quota, or file-size limit) error, also when a library wrapped it."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in FULL:
            return True
        if "No space left on device" in str(exc) or "File too large" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def write_json_atomic(path: Path, data) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str)))


def items_digest(items) -> str:
    """sha256 of the (path, label) list, in order: the clips a position counts through."""
    return hashlib.sha256(json.dumps([[str(p), int(label)] for p, label in items]).encode()).hexdigest()


def fingerprint(settings: Settings, workers: int, class_names: list[str], train_items) -> dict:
    """Everything that fixes the clip order and the model's shape, as stored with a checkpoint."""
    return {**{name: getattr(settings, name) for name in ORDER_FIXING}, "num_workers": workers,
            "class_names": list(class_names), "train_clips": len(train_items),
            "train_items_sha256": items_digest(train_items)}


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
    model_file: Path | None = None


class ResumeMismatch(ValueError):
    """The checkpoint was made with settings that give its position another meaning (exit code 2)."""


def check_resume(position: Position, current: dict, settings: Settings, folder: Path) -> None:
    """Raise ResumeMismatch naming every differing order-fixing setting; log the allowed changes."""
    saved = position.fingerprint
    problems = [f"{env_name(key)} is {current[key]!r} now, the checkpoint was made with {saved.get(key)!r}"
                for key in (*ORDER_FIXING, "num_workers") if saved.get(key) != current[key]]
    if saved.get("class_names") != current["class_names"]:
        problems.append(f"the training classes differ ({DATA_SETTINGS}): {current['class_names']} now, "
                        f"{saved.get('class_names')} in the checkpoint")
    elif saved.get("train_items_sha256") != current["train_items_sha256"]:
        problems.append(f"the training clips differ ({DATA_SETTINGS}): {current['train_clips']} clips now, "
                        f"{saved.get('train_clips')} in the checkpoint, or the same number in another order")
    if problems:
        raise ResumeMismatch(
            f"cannot resume from {folder / STATE}: its position (epoch {position.epoch}, step {position.step}) "
            "means other clips or another model under these settings:\n  " + "\n  ".join(problems)
            + "\nResume with the checkpoint's settings, or start fresh with another VIDTRAIN_OUTPUT_DIR "
            f"(or remove {folder}).")
    now = settings.redacted()
    for key, before in sorted(position.settings.items()):
        if key not in IDENTITY and key in now and now[key] != before:
            log.info("resuming with %s changed: %r -> %r", env_name(key), before, now[key])


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
        write_json_atomic(self.folder / f"{name}.json", _record(position))
        write_json_atomic(self.folder / STATE, _record(position))
        for old in sorted(self.folder.glob("ckpt-*.keras"))[:-KEEP]:
            if old.stem != name:
                old.unlink(missing_ok=True)
                old.with_suffix(".json").unlink(missing_ok=True)
        return position.model_file

    def mark_finished(self) -> None:
        """Record that the final outputs of the position in state.json are written."""
        position = self.latest()
        if position is not None:
            write_json_atomic(self.folder / STATE, _record(replace(position, finished=True)))

    def remove_stale(self) -> None:
        """Temporary files of a write that a kill interrupted (the chief, at start, before writing)."""
        for pattern in (".ckpt-*", ".state-*"):  # write_atomic's temporary names
            for stale in self.folder.glob(pattern):
                log.info("removing %s, left by an interrupted write", stale)
                stale.unlink(missing_ok=True)

    def latest(self) -> Position | None:
        """The newest checkpoint that loads: state.json's, else the newest record beside a complete
        model file. Raises CheckpointError when checkpoints exist and none of them can be used."""
        if not self.folder.is_dir():
            return None
        candidates = [self.folder / STATE] + sorted(self.folder.glob("ckpt-*.json"), reverse=True)
        problems = []
        for record in candidates:
            if not record.exists():
                continue
            try:
                position = _load(record, self.folder)
            except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
                problems.append(f"{record.name}: {exc}")
                continue
            if problems:
                log.warning("cannot resume from %s; resuming from %s instead", "; ".join(problems), record.name)
            return position
        if problems or list(self.folder.glob("ckpt-*.keras")):
            raise CheckpointError(
                f"no usable checkpoint in {self.folder} ({'; '.join(problems) or 'model files without records'}). "
                f"To start fresh, set another VIDTRAIN_OUTPUT_DIR or remove {self.folder}.")
        return None


def _record(position: Position) -> dict:
    state = asdict(position) | {"model": position.model_file.name}
    del state["model_file"]
    return state


def _load(record: Path, folder: Path) -> Position:
    """The position in `record`, after checking that its model file is a complete archive."""
    state = json.loads(record.read_text())
    model_file = folder / state.pop("model")
    with zipfile.ZipFile(model_file) as archive:  # a truncated .keras file fails here, not mid-load
        if (bad := archive.testzip()) is not None:
            raise ValueError(f"{model_file.name} is damaged ({bad})")
    state["sums"] = tuple(state.get("sums", (0.0, 0.0, 0.0)))
    known = set(Position.__dataclass_fields__)
    return Position(**{k: v for k, v in state.items() if k in known}, model_file=model_file)
