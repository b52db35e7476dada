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

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from vidtrain.settings import Settings, env_name

log = logging.getLogger("vidtrain")
STATE = "state.json"
KEEP = 2
# Settings that fix which clips a batch number means, or the shape of the model: a resume must match.
ORDER_FIXING = ("seed", "batch_size", "frames", "height", "width", "model", "rnn_cell", "sampling", "augment_flip")
# Settings that say who a worker is: they differ between workers and never matter to a resume.
IDENTITY = ("worker_index", "tf_config")
DATA_SETTINGS = "VIDTRAIN_DATA_DIR / VIDTRAIN_TRAIN_MANIFEST / VIDTRAIN_VAL_FRACTION"


def write_atomic(path: Path, write) -> None:
    """Call write(tmp_path), fsync, then rename to `path` (same folder, so the rename is atomic)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


class Checkpointer:
    """Saves and finds checkpoints in `folder`. Called from the training thread of the chief."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def save(self, model, position: Position) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"ckpt-e{position.epoch:04d}-s{position.step:06d}.keras"
        write_atomic(self.folder / name, model.save)
        self._write_state(replace(position, model_file=self.folder / name))
        kept = sorted(self.folder.glob("ckpt-*.keras"), key=lambda p: p.stat().st_mtime)[:-KEEP]
        for old in kept:
            if old.name != name:
                old.unlink(missing_ok=True)
        return self.folder / name

    def mark_finished(self) -> None:
        """Record that the final outputs of the position in state.json are written."""
        position = self.latest()
        if position is not None:
            self._write_state(replace(position, finished=True))

    def _write_state(self, position: Position) -> None:
        state = asdict(position) | {"model": position.model_file.name}
        del state["model_file"]
        write_json_atomic(self.folder / STATE, state)

    def latest(self) -> Position | None:
        try:
            state = json.loads((self.folder / STATE).read_text())
        except FileNotFoundError:
            return None
        model_file = self.folder / state.pop("model")
        if not model_file.exists():
            raise RuntimeError(f"{self.folder / STATE} names {model_file}, which is missing")
        state["sums"] = tuple(state.get("sums", (0.0, 0.0, 0.0)))
        known = {f for f in Position.__dataclass_fields__}
        return Position(**{k: v for k, v in state.items() if k in known}, model_file=model_file)
