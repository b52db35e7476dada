"""Which clips the job trains and validates on: demo, DATA_DIR or manifests; probed up front."""

from __future__ import annotations

import logging
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loader import Skipped, find_videos, make_demo_dataset, probe, read_manifest
from loader.index import Item
from vidtrain.settings import Settings

log = logging.getLogger("vidtrain")
DEMO_SEED = 0  # the demo data stays the same whatever the training seed


class NoDataError(RuntimeError):
    """No usable data (exit code 3)."""


@dataclass
class Splits:
    train: list[Item]
    val: list[Item]
    class_names: list[str]
    source: str
    skipped: list[Skipped] = field(default_factory=list)


def assemble(settings: Settings, progress: bool, stop_when=None) -> Splits:
    """Index, probe and split the configured data; raise NoDataError when a class or a split is left
    without usable clips. `stop_when()` (a stop request) ends probing early with ProbeInterrupted."""
    splits = _index(settings)
    if len(splits.class_names) < 2:
        raise NoDataError(f"need at least 2 classes, found {splits.class_names} in {splits.source}")
    probe_args = dict(workers=settings.loader_workers, cache_file=settings.cache_dir / "probe.json",
                      progress=progress, timeout=settings.decode_timeout_s, stop_when=stop_when)
    splits.train, bad_train = probe(splits.train, **probe_args)
    held_out = splits.val is None
    if held_out:  # held out after probing, so no class loses its validation clips to bad files
        splits.train, splits.val = stratified_split(splits.train, settings.val_fraction, settings.seed)
        bad_val = []
    else:
        splits.val, bad_val = probe(splits.val, **probe_args)
    splits.skipped = bad_train + bad_val
    for s in splits.skipped:
        log.warning("skipping %s: %s", s.path, s.reason)
    if splits.skipped and settings.on_bad_video == "fail":
        raise NoDataError(f"{len(splits.skipped)} unusable clip(s) and VIDTRAIN_ON_BAD_VIDEO=fail; first: "
                          f"{splits.skipped[0].path}: {splits.skipped[0].reason}")
    _check_every_class(splits, {"train": bad_train, "val": bad_val}, ("train",) if held_out else ("train", "val"))
    if not splits.val:
        raise NoDataError(f"no usable validation clips in {splits.source} (VIDTRAIN_VAL_FRACTION holds out none: "
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


def _index(settings: Settings) -> Splits:
    """Items of the configured data; `val` is None when it is to be held out of `train`."""
    if settings.train_manifest:
        train, names = read_manifest(settings.train_manifest, settings.video_root)
        source = str(settings.train_manifest)
        val = _relabel(*read_manifest(settings.val_manifest, settings.video_root, role="val"), names) \
            if settings.val_manifest else None
    else:
        root = settings.data_dir or _demo(settings)
        source = str(root)
        train, names = find_videos(root / "train")
        val = _relabel(*find_videos(root / "val"), names) if (root / "val").is_dir() else None
    if val is not None:
        val = _without(val, train, source)
    return Splits(train, val, names, source)


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
