"""Which clips the job trains and validates on: demo, DATA_DIR or manifests, from the dataset index.

The first start lists the clips (class folders, a manifest, a dataset's own lists) and keeps what
the lists resolved to as the dataset index in OUTPUT_DIR/index/ (loader.DatasetIndex). Training
starts from it at once, at any dataset size, while `IndexProbe` looks at every clip in the
background (the chief's) and writes its outcome into the index: frame counts, and the clips it
leaves out with their reasons. Restarts and the other workers read the index: they neither list
nor probe again, so every start trains on the same clips whatever a flaky file server does
meanwhile. Training takes every listed clip in the listing's order; a clip that cannot be read is
found when it is loaded and replaced (loader.VideoSequence), so what the probe finds, and when,
never changes a batch, and a resume stays exact. What the probe's outcome means is checked when it
completes: a class left without a usable clip, or a bad clip under ON_BAD_VIDEO=fail, stops the
job (exit 3).

The index is listed again when the settings that name the lists change, under VIDTRAIN_REINDEX, or
when the lists' sources changed since (a digest of the list files, or of the class folders' names
and modification times: a folder's changes when a clip is added or removed) and no checkpoint
holds the job to the clips it was trained on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loader import DatasetIndex, Skipped, find_videos, list_clips, make_demo_dataset, probe
from loader.datasets import source_files
from loader.index import Item, Listing
from loader.prefetch import Background
from vidtrain.settings import Settings

log = logging.getLogger("vidtrain")
DEMO_SEED = 0  # the demo data stays the same whatever the training seed
INDEX_FOLDER = "index"
# The settings that name the lists and how they are read: an index built under others is another dataset's.
SOURCE_SETTINGS = ("data_dir", "train_manifest", "val_manifest", "video_root", "frame_template", "index_check",
                   "demo_clips_per_class")


class NoDataError(RuntimeError):
    """No usable data (exit code 3)."""


@dataclass
class Splits:
    """The clips of this run: `train` and `val` (listed, or held out of the listed training clips),
    class names, a name for the source, and the index they come from."""

    train: list[Item]
    val: list[Item]
    class_names: list[str]
    source: str
    index: DatasetIndex
    index_is_new: bool = False  # listed by this start: to be written once the resume checks pass

    @property
    def frames(self) -> dict[str, int]:
        """Frame count of every usable clip probed so far, by path (filled while the probe runs)."""
        return self.index.frames

    @property
    def skipped(self) -> list[Skipped]:
        """The listed clips the probe left out so far."""
        return self.index.skipped + self.index.val_skipped


def index_folder(settings: Settings) -> Path:
    return settings.output_dir / INDEX_FOLDER


def assemble(settings: Settings, pinned: bool = False) -> Splits:
    """The configured data, from the dataset index: read when one made from the same lists exists
    (unless VIDTRAIN_REINDEX), else listed anew. `pinned` (a checkpoint exists) keeps an index whose
    lists changed since: the checkpoint was trained on its clips. Raises NoDataError when a class or a
    split has no clips. (The chief's: the other workers take its splits, `splits_of` its index.)"""
    wanted, root = _source(settings), None if settings.train_manifest else _root(settings)
    index = _read_index(settings)
    if index is not None and index.source == wanted and not settings.reindex:
        fresh = False
        if index.lists_sha256 != (sources := _sources_digest(settings, root)):
            index, fresh = _changed(settings, root, index, sources, pinned)
        if not fresh:
            log.info("dataset index: %s (listed %s; %s)", index_folder(settings), _when(index.built),
                     "every clip probed" if index.complete else "the probe goes on in the background")
    else:
        index, fresh = _listed(settings, root), True
    return _splits(settings, index, fresh, str(settings.train_manifest or root))


def source_name(settings: Settings) -> str:
    """The data's name in messages: the training list, or the folder of class folders."""
    return str(settings.train_manifest or _root(settings))


def splits_of(settings: Settings, index: DatasetIndex) -> Splits:
    """The splits of an index the chief sent (a worker other than the chief reads no index of its own)."""
    return _splits(settings, index, False, source_name(settings))


def _changed(settings: Settings, root: Path | None, index: DatasetIndex, sources: str,
             pinned: bool) -> tuple[DatasetIndex, bool]:
    """The index to use when the lists' sources changed since it was listed, and whether it is new."""
    if pinned:
        log.warning("the dataset lists changed since the index in %s was listed (%s); the checkpoint in %s was "
                    "trained on the clips listed then, and resumes on them. To train on the lists as they are now, "
                    "start fresh: another VIDTRAIN_OUTPUT_DIR, or remove %s (the index is then listed again)",
                    index_folder(settings), _when(index.built), settings.output_dir / "checkpoints",
                    settings.output_dir / "checkpoints")
        return index, False
    new = _listed(settings, root, sources)
    if new.items_sha256 == index.items_sha256:  # the files changed, the clips they name did not
        index.lists_sha256 = sources
        return index, True
    log.info("the dataset lists changed since the index in %s was listed (%s): %d clips listed then, %d now; "
             "indexing them again", index_folder(settings), _when(index.built), _count(index), _count(new))
    return new, True


def _count(index: DatasetIndex) -> int:
    return len(index.train) + len(index.val or [])


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def write_index(settings: Settings, splits: Splits) -> None:
    """Store a newly listed index (the chief, after the resume checks passed)."""
    if splits.index_is_new:
        path = splits.index.write(index_folder(settings))
        log.info("dataset index written to %s (%d clips listed)", path, _count(splits.index))
        splits.index_is_new = False


def _source(settings: Settings) -> dict:
    values = settings.redacted()
    return {name: values[name] for name in SOURCE_SETTINGS}


def _read_index(settings: Settings) -> DatasetIndex | None:
    try:
        return DatasetIndex.read(index_folder(settings))
    except ValueError as exc:
        log.warning("%s: listing the data again", exc)
        return None


def _listed(settings: Settings, root: Path | None, sources: str | None = None) -> DatasetIndex:
    """A new index of the lists as they are (nothing probed yet); `root` holds the class folders."""
    train, val = _list(settings, root)
    return DatasetIndex(train.class_names, train.items, val, _source(settings),
                        sources or _sources_digest(settings, root), dict(train.frames))


def _sources_digest(settings: Settings, root: Path | None) -> str:
    """sha256 of what the lists are read from, without listing a clip: the list files (and what their
    format reads beside them), or each class folder's name and modification time."""
    digest = hashlib.sha256()
    if settings.train_manifest:
        for manifest in (settings.train_manifest, settings.val_manifest):
            for file in source_files(Path(manifest)) if manifest else ():
                digest.update(f"{file}\0".encode() + file.read_bytes())
    else:
        for split in ("train", "val"):
            folders = sorted(os.scandir(root / split), key=lambda e: e.name) if (root / split).is_dir() else []
            for entry in folders:
                digest.update(f"{split}/{entry.name}\0{entry.stat().st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _splits(settings: Settings, index: DatasetIndex, fresh: bool, source: str) -> Splits:
    names = index.class_names
    if len(names) < 2:
        raise NoDataError(f"need at least 2 classes, found {names} in {source}")
    held_out = index.val is None
    if held_out:
        train, val = stratified_split(index.train, settings.val_fraction, settings.seed)
    else:
        train, val = list(index.train), list(index.val)
    splits = Splits(train, val, names, source, index, fresh)
    _check_every_class(splits, ("train",) if held_out else ("train", "val"))
    if not splits.val:
        raise NoDataError(f"no validation clips in {source} (VIDTRAIN_VAL_FRACTION holds out none: every class "
                          "has a single clip)")
    if index.complete and (problem := probe_problem(settings, splits)):
        raise problem
    return splits


def probe_problem(settings: Settings, splits: Splits) -> NoDataError | None:
    """What the probe's outcome rules out: a bad clip under ON_BAD_VIDEO=fail, or a class left without
    a usable training clip (or validation clip, in a validation split of its own)."""
    skipped = splits.skipped
    if skipped and settings.on_bad_video == "fail":
        return NoDataError(f"{len(skipped)} unusable clip(s) and VIDTRAIN_ON_BAD_VIDEO=fail; first: "
                           f"{skipped[0].path}: {skipped[0].reason}")
    usable = Splits(splits.index.usable(splits.train), splits.index.usable(splits.val), splits.class_names,
                    splits.source, splits.index)
    try:
        _check_every_class(usable, ("train",) if splits.index.val is None else ("train", "val"))
    except NoDataError as exc:
        return exc
    return None


def _check_every_class(splits: Splits, names: tuple[str, ...]) -> None:
    """A class with no usable training clip (or, in a validation split of its own, validation
    clip) would train or score a model that silently lacks it: stop, naming the class and why
    its clips were left out."""
    bad = {"train": splits.index.skipped, "val": splits.index.val_skipped}
    for split, items in ((name, getattr(splits, name)) for name in names):
        have = {label for _, label in items}
        for label, name in enumerate(splits.class_names):
            if label in have:
                continue
            reasons = [f"{s.path}: {s.reason}" for s in bad[split] if s.label == label][:3]
            why = "; ".join(reasons) if reasons else "it has no clips in this split"
            raise NoDataError(f"class {name!r} has no usable {'training' if split == 'train' else 'validation'} "
                              f"clip in {splits.source} ({why})")


class IndexProbe:
    """The dataset index's probe, in the background (the chief runs it while it trains): every listed
    clip looked at once (loader.probe); when it completes, the frame counts go into the index's
    `frames` (which the loader reads as they come), the skipped clips are counted and logged, the
    index is written again, and `probe_problem` says what the outcome rules out."""

    def __init__(self, settings: Settings, splits: Splits, metrics=None, progress: bool = False,
                 stop_when=None):
        self.settings, self.splits, self.metrics = settings, splits, metrics
        self.progress, self.stop_when = progress, stop_when
        self._task: Background | None = None

    def start(self) -> IndexProbe:
        if self.splits.index.complete:
            self._count_skips()
        else:
            self._task = Background(self._run, "vidtrain-index-probe").start()
        return self

    def _run(self) -> NoDataError | None:
        index, settings = self.splits.index, self.settings
        usable, skipped, frames = probe(index.train + (index.val or []), settings.index_workers, self.progress,
                                        timeout=settings.decode_timeout_s, stop_when=self.stop_when,
                                        known=dict(index.frames), template=settings.frame_template,
                                        check=settings.index_check, metrics=self.metrics)
        index.frames.update(zip((path for path, _ in usable), frames))
        in_val = {path for path, _ in index.val or []}
        index.skipped = [s for s in skipped if s.path not in in_val]
        index.val_skipped = [s for s in skipped if s.path in in_val]
        index.left_out.update(s.path for s in skipped)  # the loader's failures of these are reported already
        index.complete = True
        index.write(index_folder(settings))
        log.info("dataset index complete: %d clips usable, %d left out (%s)", len(usable), len(skipped),
                 index_folder(settings))
        self._count_skips()
        return probe_problem(settings, self.splits)

    def _count_skips(self) -> None:
        for s in self.splits.skipped:
            log.warning("skipping %s: %s", s.path, s.reason)
            if self.metrics is not None:
                self.metrics.count_skip(s.kind, "index")

    def problem(self) -> NoDataError | None:
        """What the completed probe rules out, or None (also while it runs). Raises what stopped the
        probe itself (an index that cannot be written); a stop request ends it with nothing to say."""
        if self._task is None or not self._task.done():
            return None
        from loader import ProbeInterrupted

        try:
            return self._task.result()
        except ProbeInterrupted:
            return None

    def wait(self) -> NoDataError | None:
        """`problem()` once the probe has ended."""
        if self._task is not None:
            self._task.wait()
        return self.problem()


def _list(settings: Settings, root: Path | None) -> tuple[Listing, list[Item] | None]:
    """The listed training clips (with the class names and the frame counts the lists give) and the
    validation clips in the training class order (None when they are to be held out)."""
    if settings.train_manifest:
        train = list_clips(settings.train_manifest, settings.video_root)
        val = list_clips(settings.val_manifest, settings.video_root, role="val") if settings.val_manifest else None
        source = str(settings.train_manifest)
    else:
        train = Listing(*find_videos(root / "train"))
        val = Listing(*find_videos(root / "val")) if (root / "val").is_dir() else None
        source = str(root)
    if val is None:
        return train, None
    train.frames.update(val.frames)
    return train, _without(_relabel(val.items, val.class_names, train.class_names), train.items, source)


def _without(val: list[Item], train: list[Item], source: str) -> list[Item]:
    """Validation clips that are not also training clips: a clip in both would score its own training."""
    training = {path for path, _ in train}
    twice = [path for path, _ in val if path in training]
    if twice:
        log.warning("%d clip(s) of %s are in both training and validation data; kept for training only, "
                    "e.g. %s", len(twice), source, twice[0])
    return [(path, label) for path, label in val if path not in training]


def _root(settings: Settings) -> Path:
    """The folder of class folders: DATA_DIR, or the demo set (generated once)."""
    return settings.data_dir or _demo(settings)


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
