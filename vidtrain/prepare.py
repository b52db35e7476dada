"""VIDTRAIN_MODE=prepare: a training copy of the footage, made once, read by every training run.

Decoding is the loader's cost, and it grows with the source's pixels; MMAction2 tells its users
to resize Kinetics with scripts of their own before training. Here it is a mode of the job: it
reads the same data settings as training (DATA_DIR, the manifests, VIDEO_ROOT, VAL_FRACTION with
SEED) and writes into PREPARE_DIR a copy of every listed clip (loader.prepare: every frame, in
order, the short side at PREPARE_SHORT_SIDE, a keyframe every 16 frames) as
`<split>/<class>/<clip>.mp4`, and `train.csv` and `val.csv` (`path;label;index`, paths relative
to them, the class order of the source) that a training run reads as TRAIN_MANIFEST and
VAL_MANIFEST. LOADER_WORKERS threads copy clips side by side, with progress as indexing shows it
(log lines, `vidtrain_prepare_clips{state}`). A copy that exists is not made again, so a rerun
after a stop or a failure redoes nothing; a clip that cannot be read is left out of the lists and
reported in `prepare_report.json`, with the reason.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
import time
from pathlib import Path

from loader.atomic import remove_temporaries, write_atomic, write_json_atomic
from loader.decode import DecodeError
from loader.index import Progress, Skipped
from loader.prefetch import map_bounded
from loader.prepare import prepare_clip
from vidtrain.data import NoDataError, Splits, assemble
from vidtrain.metrics import JobMetrics
from vidtrain.settings import Settings

log = logging.getLogger("vidtrain")
SPLIT_FILES = {"train": "train.csv", "val": "val.csv"}
REPORT = "prepare_report.json"
TIMEOUT_FACTOR = 10  # a whole clip's copy may take this many times DECODE_TIMEOUT_S (16 frames') before it is skipped


def prepare_mode(settings: Settings, metrics: JobMetrics, progress: bool) -> int:
    """Copy every listed clip (see the module docstring); returns the exit code (0; NoDataError: 3)."""
    began = time.monotonic()
    splits = assemble(settings)
    out = settings.prepare_dir
    plan = copies(splits, out)
    for folder in {target.parent for _, target, _ in plan}:
        folder.mkdir(parents=True, exist_ok=True)
        remove_temporaries(folder)  # what a stopped run was writing
    todo = [(source, target) for source, target, _ in plan if not target.exists()]
    log.info("prepare: %d clips listed, %d copied before, %d to copy into %s (short side %d)", len(plan),
             len(plan) - len(todo), len(todo), out, settings.prepare_short_side)
    reporter = Progress(len(todo), progress, metrics.set_prepare_progress, "preparing", "prepared")
    failed: dict[str, Skipped] = {}
    try:
        for (source, target), _, error in map_bounded(
                lambda job: prepare_clip(job[0], job[1], settings.prepare_short_side, settings.frame_template),
                todo, settings.loader_workers, timeout=TIMEOUT_FACTOR * settings.decode_timeout_s):
            if error is not None:
                failed[source] = _skip(source, error)
                metrics.count_skip(failed[source].kind, "prepare")
                log.warning("skipping %s: %s", source, failed[source].reason)
            reporter.advance()
    finally:
        reporter.close()
    kept = [(source, target, label) for source, target, label in plan if source not in failed]
    write_json_atomic(out / REPORT, {
        "mode": "prepare", "settings": settings.redacted(), "source": splits.source, "clips": len(plan),
        "copied": len(todo) - len(failed), "copied_before": len(plan) - len(todo),
        "skipped": [vars(s) for s in failed.values()], "short_side": settings.prepare_short_side,
        "seconds": round(time.monotonic() - began, 1)})
    _write_lists(out, splits, kept)
    log.info("prepare: %d clips in %s (%d left out); train with VIDTRAIN_TRAIN_MANIFEST=%s and "
             "VIDTRAIN_VAL_MANIFEST=%s", len(kept), out, len(failed), out / SPLIT_FILES["train"],
             out / SPLIT_FILES["val"])
    return 0


def copies(splits: Splits, out: Path) -> list[tuple[str, Path, int]]:
    """(source, copy, label) of every listed clip, in list order: `out/<split>/<class>/<clip>.mp4`,
    named after the source (with a digest of its path where two sources of a class share a name),
    the same on every run."""
    folders = _class_folders(splits.class_names)
    plan, taken = [], set()
    for split, items in (("train", splits.train), ("val", splits.val)):
        for source, label in items:
            name = _slug(Path(source).stem if Path(source).suffix else Path(source).name)
            target = out / split / folders[label] / f"{name}.mp4"
            if target in taken:
                target = target.with_name(f"{name}-{hashlib.sha256(source.encode()).hexdigest()[:8]}.mp4")
            taken.add(target)
            plan.append((source, target, label))
    return plan


def _class_folders(names: list[str]) -> list[str]:
    """A folder name for each class: its name made safe for a file system, unique."""
    folders = []
    for label, name in enumerate(names):
        slug = _slug(name)
        folders.append(slug if slug not in folders else f"{slug}_{label}")
    return folders


def _slug(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "clip"


def _skip(source: str, error: BaseException) -> Skipped:
    if isinstance(error, DecodeError):
        return Skipped(source, error.reason, error.kind)
    if isinstance(error, TimeoutError):
        return Skipped(source, f"copying took over {TIMEOUT_FACTOR} x VIDTRAIN_DECODE_TIMEOUT_S", "timeout")
    return Skipped(source, f"cannot be read ({type(error).__name__}: {error})", "unreadable")


def _write_lists(out: Path, splits: Splits, kept: list[tuple[str, Path, int]]) -> None:
    """train.csv and val.csv of the copies; a class left without a copy in a split stops the job (exit 3)."""
    for split, file in SPLIT_FILES.items():
        rows = [(target.relative_to(out).as_posix(), splits.class_names[label], label)
                for _, target, label in kept if target.relative_to(out).parts[0] == split]
        missing = sorted(set(range(len(splits.class_names))) - {label for *_, label in rows})
        if missing:
            raise NoDataError(f"prepare: class {splits.class_names[missing[0]]!r} has no {split} clip that could "
                              f"be copied (see {out / REPORT})")

        def write(tmp: Path, rows=rows) -> None:
            with open(tmp, "w", newline="") as f:
                csv.writer(f, delimiter=";").writerows(rows)

        write_atomic(out / file, write)
