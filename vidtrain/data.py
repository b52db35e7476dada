"""Which clips the job trains and validates on: demo, DATA_DIR or manifests, from the dataset index.

The first start probes every listed clip and keeps the outcome as the dataset index in
OUTPUT_DIR/index/ (loader.DatasetIndex); restarts and the other workers of a multi-worker job read
it and never probe again, so every start trains on the same clips, whatever a flaky file server
does meanwhile. The index is rebuilt when the settings that name the lists change (and no
checkpoint holds them to the old ones) or when VIDTRAIN_REINDEX is set; lists whose content
changed are noticed and logged, and the index is kept.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loader import DatasetIndex, Skipped, find_videos, list_clips, make_demo_dataset, probe
from loader.index import Item, Listing, lists_digest
from vidtrain.settings import Settings

log = logging.getLogger("vidtrain")
DEMO_SEED = 0  # the demo data stays the same whatever the training seed
INDEX_FOLDER = "index"
# The settings that name the lists and how they are read: an index built under others is another dataset's.
SOURCE_SETTINGS = ("data_dir", "train_manifest", "val_manifest", "video_root", "frame_template", "index_check",
                   "demo_clips_per_class")


class NoDataError(RuntimeError):
    """No usable data (exit code 3)."""


class IndexMismatch(ValueError):
    """The index on the output volume was built from other lists than the settings name (exit code 2)."""


@dataclass
class Splits:
    train: list[Item]
    val: list[Item]
    class_names: list[str]
    source: str
    skipped: list[Skipped] = field(default_factory=list)
    frames: dict[str, int] = field(default_factory=dict)  # frame count of every usable clip, by path
    index: DatasetIndex | None = None
    index_is_new: bool = False  # built by this start: to be written once the resume checks pass


def index_folder(settings: Settings) -> Path:
    return settings.output_dir / INDEX_FOLDER


def assemble(settings: Settings, progress: bool, stop_when=None, metrics=None, build: bool = True) -> Splits:
    """The configured data, from the dataset index: read when one built from the same lists exists
    (unless VIDTRAIN_REINDEX), else built by probing every clip (`build`; a worker other than the
    chief never builds: it reads the chief's). Raises NoDataError when a class or a split is left
    without usable clips; `stop_when()` (a stop request) ends probing early with ProbeInterrupted."""
    train, val, names, source, known = _list(settings)
    digest = lists_digest(train, val)
    wanted = _source(settings)
    index = _read_index(settings)
    if index is not None and index.source == wanted and not (settings.reindex and build):
        if index.lists_sha256 != digest:
            log.warning("the dataset lists changed since the index in %s was built (%s): training on the clips "
                        "indexed then; VIDTRAIN_REINDEX=1 indexes them again", index_folder(settings),
                        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(index.built)))
        else:
            log.info("dataset index: %s (built %s; no clip probed again)", index_folder(settings),
                     time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(index.built)))
        fresh = False
    elif not build:
        raise IndexMismatch(f"no dataset index for these lists in {index_folder(settings)}: the chief (worker 0) "
                            "writes it before the workers start training")
    else:
        index, fresh = _build(settings, train, val, names, known, wanted, digest, progress, stop_when, metrics), True
    return _splits(settings, index, source, fresh)


def write_index(settings: Settings, splits: Splits) -> None:
    """Store a newly built index (the chief, after the resume checks passed)."""
    if splits.index_is_new:
        path = splits.index.write(index_folder(settings))
        log.info("dataset index written to %s", path)
        splits.index_is_new = False


def _source(settings: Settings) -> dict:
    values = settings.redacted()
    return {name: values[name] for name in SOURCE_SETTINGS}


def _read_index(settings: Settings) -> DatasetIndex | None:
    try:
        return DatasetIndex.read(index_folder(settings))
    except ValueError as exc:
        log.warning("%s: indexing again", exc)
        return None


def _build(settings, train, val, names, known, source, digest, progress, stop_when, metrics) -> DatasetIndex:
    args = dict(workers=settings.index_workers, progress=progress, timeout=settings.decode_timeout_s,
                stop_when=stop_when, known=known, template=settings.frame_template, check=settings.index_check,
                metrics=metrics)
    train_ok, train_skipped, train_frames = probe(train + (val or []), **args)
    val_ok, val_skipped, val_frames = None, [], None
    if val is not None:  # probed in one pass with the training clips (one progress count): split back
        cut = _count_train(train, train_ok)
        train_ok, val_ok = train_ok[:cut], train_ok[cut:]
        train_frames, val_frames = train_frames[:cut], train_frames[cut:]
        in_val = {p for p, _ in val}
        train_skipped, val_skipped = ([s for s in train_skipped if s.path not in in_val],
                                      [s for s in train_skipped if s.path in in_val])
    return DatasetIndex(names, train_ok, train_frames, val_ok, val_frames, train_skipped, val_skipped, source,
                        digest)


def _count_train(train: list[Item], usable: list[Item]) -> int:
    """How many of `usable` (training clips, then validation clips, in order) are training clips."""
    training = {p for p, _ in train}
    return sum(1 for p, _ in usable if p in training)


def _splits(settings: Settings, index: DatasetIndex, source: str, fresh: bool) -> Splits:
    names = index.class_names
    if len(names) < 2:
        raise NoDataError(f"need at least 2 classes, found {names} in {source}")
    frames = dict(zip((p for p, _ in index.train), index.train_frames))
    if index.val is not None:
        frames.update(zip((p for p, _ in index.val), index.val_frames))
    bad = {"train": index.skipped, "val": index.val_skipped}
    held_out = index.val is None
    if held_out:  # held out after probing, so no class loses its validation clips to bad files
        train, val = stratified_split(index.train, settings.val_fraction, settings.seed)
    else:
        train, val = list(index.train), list(index.val)
    splits = Splits(train, val, names, source, index.skipped + index.val_skipped, frames, index, fresh)
    for s in splits.skipped:
        log.warning("skipping %s: %s", s.path, s.reason)
    if splits.skipped and settings.on_bad_video == "fail":
        raise NoDataError(f"{len(splits.skipped)} unusable clip(s) and VIDTRAIN_ON_BAD_VIDEO=fail; first: "
                          f"{splits.skipped[0].path}: {splits.skipped[0].reason}")
    _check_every_class(splits, bad, ("train",) if held_out else ("train", "val"))
    if not splits.val:
        raise NoDataError(f"no usable validation clips in {source} (VIDTRAIN_VAL_FRACTION holds out none: "
                          "every class has a single clip)")
    return splits


def _check_every_class(splits: Splits, bad: dict[str, list[Skipped]], names: tuple[str, ...]) -> None:
    """A class with no usable training clip (or, in a validation split of its own, validation
    clip) would train or score a model that silently lacks it: stop, naming the class and why
    its clips were left out."""
    for split, items in ((name, getattr(splits, name)) for name in names):
        have = {label for _, label in items}
        for label, name in enumerate(splits.class_names):
            if label in have:
                continue
            reasons = [f"{s.path}: {s.reason}" for s in bad[split] if s.label == label][:3]
            why = "; ".join(reasons) if reasons else "it has no clips in this split"
            raise NoDataError(f"class {name!r} has no usable {'training' if split == 'train' else 'validation'} "
                              f"clip in {splits.source} ({why})")


def _list(settings: Settings) -> tuple[list[Item], list[Item] | None, list[str], str, dict[str, int]]:
    """The listed clips (train, val or None when it is to be held out), class names, a name for the
    source, and frame counts the lists give."""
    if settings.train_manifest:
        train = list_clips(settings.train_manifest, settings.video_root)
        source = str(settings.train_manifest)
        val = list_clips(settings.val_manifest, settings.video_root, role="val") if settings.val_manifest else None
    else:
        root = settings.data_dir or _demo(settings)
        source = str(root)
        train = Listing(*find_videos(root / "train"))
        val = Listing(*find_videos(root / "val")) if (root / "val").is_dir() else None
    known = dict(train.frames)
    val_items = None
    if val is not None:
        known.update(val.frames)
        val_items = _without(_relabel(val.items, val.class_names, train.class_names), train.items, source)
    return train.items, val_items, train.class_names, source, known


def _without(val: list[Item], train: list[Item], source: str) -> list[Item]:
    """Validation clips that are not also training clips: a clip in both would score its own training."""
    training = {path for path, _ in train}
    twice = [path for path, _ in val if path in training]
    if twice:
        log.warning("%d clip(s) of %s are in both training and validation data; kept for training only, "
                    "e.g. %s", len(twice), source, twice[0])
    return [(path, label) for path, label in val if path not in training]


def _demo(settings: Settings) -> Path:
    folder = settings.cache_dir / "demo"
    log.info("no data configured: using the built-in demo dataset in %s", folder)
    per_class = settings.demo_clips_per_class
    try:
        return make_demo_dataset(folder, per_class, max(per_class * 3 // 10, 2), DEMO_SEED)
    except OSError as exc:  # a read-only cache: the demo set is an accelerator there, not a need
        temporary = Path(tempfile.mkdtemp(prefix="vidtrain-demo-")) / "demo"
        log.warning("cannot write the demo dataset to %s (%s): generating it in %s for this run", folder,
                    exc.strerror or exc, temporary)
        return make_demo_dataset(temporary, per_class, max(per_class * 3 // 10, 2), DEMO_SEED)


def _relabel(items: list[Item], names: list[str], train_names: list[str]) -> list[Item]:
    """Validation labels in the training class order; a class training never saw is an error."""
    unknown = sorted(set(names) - set(train_names))
    if unknown:
        raise NoDataError(f"validation classes {unknown} are not among the training classes {train_names}")
    index = {name: i for i, name in enumerate(train_names)}
    return [(path, index[names[label]]) for path, label in items]


def stratified_split(items: list[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """Hold out `fraction` of each class (at least one clip where a class has two), seeded."""
    by_class = defaultdict(list)
    for item in items:
        by_class[item[1]].append(item)
    rng = np.random.default_rng([seed, 7])
    train, val = [], []
    for label in sorted(by_class):
        group = by_class[label]
        order = rng.permutation(len(group))
        n_val = min(max(round(fraction * len(group)), 1), len(group) - 1) if len(group) > 1 else 0
        val += [group[i] for i in sorted(order[:n_val])]
        train += [group[i] for i in sorted(order[n_val:])]
    return train, val
