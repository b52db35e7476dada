"""Resume state: atomic checkpoints that a restarted job continues from.

A checkpoint is a full `.keras` model (weights and optimizer state) plus
`state.json` naming it with the position (epoch, batch) and the history so
far. Writes go to a temporary file, are fsynced and renamed into place, and
state.json is replaced only after its model file is complete, so a kill at
any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

STATE = "state.json"


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


@dataclass(frozen=True)
class Position:
    """Where training stands: `epoch` epochs complete plus `batch` batches of the next."""

    epoch: int
    batch: int
    history: dict
    model_file: Path


class Checkpointer:
    """Saves and finds the latest checkpoint in `folder`. Called from the training thread."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def save(self, model, epoch: int, batch: int, history: dict) -> Path:
        name = f"ckpt-e{epoch:04d}-b{batch:06d}.keras"
        write_atomic(self.folder / name, model.save)
        write_json_atomic(self.folder / STATE, {"epoch": epoch, "batch": batch, "model": name, "history": history})
        for old in self.folder.glob("ckpt-*.keras"):
            if old.name != name:
                old.unlink(missing_ok=True)
        return self.folder / name

    def latest(self) -> Position | None:
        try:
            state = json.loads((self.folder / STATE).read_text())
        except FileNotFoundError:
            return None
        model_file = self.folder / state["model"]
        if not model_file.exists():
            raise RuntimeError(f"{self.folder / STATE} names {model_file}, which is missing")
        return Position(state["epoch"], state["batch"], state.get("history", {}), model_file)
