"""Which clips the job trains and validates on: demo, DATA_DIR or manifests; probed up front."""

from __future__ import annotations

import logging
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


def assemble(settings: Settings, progress: bool) -> Splits:
    """Index, split and probe the configured data; raise NoDataError when nothing usable is left."""
    splits = _index(settings)
    if len(splits.class_names) < 2:
        raise NoDataError(f"need at least 2 classes, found {splits.class_names} in {splits.source}")
    cache = settings.cache_dir / "probe.json"
    splits.train, bad_train = probe(splits.train, settings.loader_workers, cache, progress)
    splits.val, bad_val = probe(splits.val, settings.loader_workers, cache, progress)
    splits.skipped = bad_train + bad_val
    for s in splits.skipped:
        log.warning("skipping %s: %s", s.path, s.reason)
    if splits.skipped and settings.on_bad_video == "fail":
        raise NoDataError(f"{len(splits.skipped)} unusable clip(s) and VIDTRAIN_ON_BAD_VIDEO=fail; first: "
                          f"{splits.skipped[0].path}: {splits.skipped[0].reason}")
    if not splits.train or not splits.val:
        raise NoDataError(f"no usable clips left in {splits.source} (train {len(splits.train)}, "
                          f"val {len(splits.val)}, skipped {len(splits.skipped)})")
    return splits


def _index(settings: Settings) -> Splits:
    if settings.train_manifest:
        train, names = read_manifest(settings.train_manifest)
        source = str(settings.train_manifest)
        val = _relabel(*read_manifest(settings.val_manifest), names) if settings.val_manifest else None
    else:
        root = settings.data_dir or _demo(settings)
        source = str(root)
        train, names = find_videos(root / "train")
        val = _relabel(*find_videos(root / "val"), names) if (root / "val").is_dir() else None
    if val is None:
        train, val = stratified_split(train, settings.val_fraction, settings.seed)
    return Splits(train, val, names, source)


def _demo(settings: Settings) -> Path:
    log.info("no data configured: using the built-in demo dataset in %s", settings.cache_dir / "demo")
    per_class = settings.demo_clips_per_class
    return make_demo_dataset(settings.cache_dir / "demo", per_class, max(per_class * 3 // 10, 2), DEMO_SEED)


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
