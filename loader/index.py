"""Index: which clips exist, which class each belongs to, and how many frames each has.

Listing: `find_videos` (class folders) and `read_manifest` / `list_clips` (a `path;label` CSV or
a public dataset's own list, loader.datasets) give (path, label) items. Probing: `probe` looks at
every clip once, in parallel with a bounded window, and splits the items into usable clips with
their frame counts and skipped clips with their reasons; a list that gives frame counts (MMAction2
raw frames) needs no probe. `DatasetIndex` holds the outcome and is written once (atomically) for
restarts and other workers to read instead of probing again (MMAction2 and DALI work from an
annotation list the same way: the expensive look at every file happens once).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from loader import datasets
from loader.atomic import write_json_atomic
from loader.decode import DecodeError, count_frames
from loader.hooks import NullIndexMetrics
from loader.paths import ManifestError, Resolver, resolve
from loader.prefetch import Interrupted, map_bounded

log = logging.getLogger("vidtrain")
Item = tuple[str, int]  # (path, label index)
INDEX_CHECKS = ("header", "decode")  # how closely the probe looks at a clip
PROGRESS_EVERY_S = 10.0  # a progress line this often in a log (no terminal)

__all__ = ["DatasetIndex", "INDEX_CHECKS", "Item", "Listing", "ManifestError", "ProbeInterrupted", "Skipped",
           "find_videos", "list_clips", "probe", "read_manifest", "read_paths", "resolve"]


@dataclass(frozen=True)
class Skipped:
    """A clip left out of training, and why."""

    path: str
    reason: str
    kind: str  # one of loader.decode.SKIP_KINDS
    label: int | None = None


@dataclass
class Listing:
    """A list's clips as (path, label) items, its class names and the frame counts it gives (MMAction2
    raw-frame lists: path -> total_frames)."""

    items: list[Item]
    class_names: list[str]
    frames: dict[str, int] = field(default_factory=dict)


def find_videos(root: str | os.PathLike) -> tuple[list[Item], list[str]]:
    """Items of `root/<class>/<clip>` (a clip is a video file or a folder of frames).

    Classes are the sorted sub-folder names; clips are sorted by name.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    class_names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    items = [
        (os.path.join(root, name, clip), label)
        for label, name in enumerate(class_names)
        for clip in sorted(os.listdir(root / name))
        if not clip.startswith(".")
    ]
    return items, class_names


def read_manifest(csv_path: str | os.PathLike, video_root: str | os.PathLike | None = None,
                  role: str = "train") -> tuple[list[Item], list[str]]:
    """Items and class names of an annotation file (see `list_clips`)."""
    listing = list_clips(csv_path, video_root, role)
    return listing.items, listing.class_names


def list_clips(csv_path: str | os.PathLike, video_root: str | os.PathLike | None = None,
               role: str = "train") -> Listing:
    """The clips of an annotation file, its format recognised from the file (see loader.datasets):
    a `path;label` or `path;label;index` manifest, or a public dataset's own list (UCF101/HMDB51
    split lists, Something-Something-v2 JSON, Kinetics CSV, Jester CSV, MMAction2 lists).

    Classes follow the dataset's index file where it has one (the index column of a manifest,
    classInd.txt, the SSv2 or Jester labels file); otherwise they are sorted by name. Clips
    live under `video_root` when given; otherwise a relative path resolves against the
    manifest's folder or, when not found there, the folder named like the manifest
    (`train.csv` -> `train/`). A first row `path;label` is taken as a header. A clip listed
    twice counts once; under two labels it is an error naming both lines. `role` ("train" or
    "val") picks the clips of a file that marks both (HMDB51's official split files).
    """
    path, root = Path(csv_path), Path(video_root) if video_root is not None else None
    kind = datasets.detect(path)
    frames: dict[str, int] = {}
    if kind in ("csv", "jester"):
        rows, order = _csv(path, root)
        order = datasets.jester_order(path) if kind == "jester" else order
    elif kind == "hmdb51":
        rows, order = datasets.hmdb51(path, root, role)
    elif kind.startswith("mmaction2"):
        rows, order, frames = datasets.mmaction2(path, root, rawframes=kind.endswith("rawframes"))
    else:
        rows, order = getattr(datasets, kind)(path, root)
    rows = _dedupe(path, rows)
    class_names = order if order is not None else sorted({name for _, _, name in rows})
    lookup = {name: i for i, name in enumerate(class_names)}
    for line, _, name in rows:
        if name not in lookup:
            raise ManifestError(path, line, f"class {name!r} is not in the dataset's class list")
    log.info("%s: read as %s: %d %s clips, %d classes", path, datasets.NAMES[kind], len(rows), role,
             len(class_names))
    return Listing([(clip, lookup[name]) for _, clip, name in rows], class_names, frames)


def _csv(csv_path: Path, root: Path | None) -> tuple[list[tuple[int, str, str]], list[str]]:
    rows = []
    for k, (line, row) in enumerate(datasets.rows(csv_path)):
        if k == 0 and [c.lower() for c in row[:2]] == ["path", "label"]:  # a header
            continue
        rows.append((line, _parse_row(csv_path, line, row)))
    order, place = _class_order(csv_path, rows), Resolver(csv_path, root)
    return [(line, place(clip), label) for line, (clip, label, _) in rows], order


def read_paths(csv_path: str | os.PathLike) -> list[str]:
    """The clip paths of a CSV whose first column is a path (a label column may follow or not),
    resolved as in read_manifest; for predicting."""
    csv_path = Path(csv_path)
    paths = [row[0] for k, (_, row) in enumerate(datasets.rows(csv_path)) if not (k == 0 and row[0].lower() == "path")]
    place = Resolver(csv_path)
    return [place(path) for path in paths if path]


def _dedupe(manifest: Path, rows: list[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    """Drop repeated rows of one clip (with a warning); one clip under two labels is an error."""
    first: dict[str, tuple[int, str]] = {}
    kept = []
    for line, clip, label in rows:
        clip = os.path.normpath(clip)
        if clip not in first:
            first[clip] = (line, label)
            kept.append((line, clip, label))
        elif first[clip][1] != label:
            raise ManifestError(manifest, line, f"{clip} is labelled {label!r} here and {first[clip][1]!r} on line "
                                f"{first[clip][0]}")
        else:
            log.warning("%s, line %d: %s repeats line %d; counted once", manifest, line, clip, first[clip][0])
    return kept


def _parse_row(csv_path: Path, line: int, row: list[str]) -> tuple[str, str, int | None]:
    if len(row) not in (2, 3):
        raise ManifestError(csv_path, line, f"expected 'path;label' or 'path;label;index', got {';'.join(row)!r}")
    if not row[0] or not row[1]:
        raise ManifestError(csv_path, line, f"empty path or label in {';'.join(row)!r}")
    index = None
    if len(row) == 3:
        try:
            index = int(row[2])
        except ValueError:
            raise ManifestError(csv_path, line, f"class index must be an integer, got {row[2]!r}") from None
        if index < 0:
            raise ManifestError(csv_path, line, f"class index must be >= 0, got {index}")
    return row[0], row[1], index


def _class_order(csv_path: Path, rows: list[tuple[int, tuple[str, str, int | None]]]) -> list[str]:
    if not rows:
        return []
    with_index = {index is not None for _, (_, _, index) in rows}
    if len(with_index) > 1:
        raise ManifestError(csv_path, rows[0][0], "some rows have a class index and some do not")
    if with_index == {False}:
        return sorted({label for _, (_, label, _) in rows})
    index_of: dict[str, int] = {}
    label_of: dict[int, str] = {}
    for line, (_, label, index) in rows:
        if index_of.setdefault(label, index) != index or label_of.setdefault(index, label) != label:
            raise ManifestError(csv_path, line, f"label {label!r} with index {index} contradicts an earlier row")
    return [label_of[i] for i in sorted(label_of)]


# -- probing ---------------------------------------------------------------------------------------
class ProbeInterrupted(RuntimeError):
    """The probe stopped early because `stop_when()` became true."""


def probe(items: list[Item], workers: int = 16, progress: bool = True, timeout: float | None = None,
          stop_when=None, known: dict[str, int] | None = None, template: str | None = None,
          check: str = "header", metrics=None) -> tuple[list[Item], list[Skipped], list[int]]:
    """Look at every clip once, in parallel, and split `items` into usable and skipped ones.

    Returns (usable items, skipped, frame counts of the usable items), input order kept.
    `check="header"` (the default) reads a video's frame count from its container (opening it
    with the decoder where the container does not store one) and lists a frame folder; "decode"
    also decodes the last frame and reads every frame image's header, so a truncated file fails
    here rather than mid-epoch. Either way a clip whose header lies is caught when it is loaded,
    like any bad clip. `known` gives frame counts that need no probe (a raw-frame list's
    total_frames). `workers` threads probe with at most 2 x workers clips in flight; a clip whose
    probe takes over `timeout` seconds is skipped with kind "timeout". `stop_when()` is checked at
    least twice a second; once true, ProbeInterrupted is raised. Progress goes to a bar on a
    terminal (`progress`), else to the log every PROGRESS_EVERY_S seconds, and to
    `metrics.set_index_progress(done, total)`.
    """
    if check not in INDEX_CHECKS:
        raise ValueError(f"check must be one of {INDEX_CHECKS}, got {check!r}")
    known = known or {}
    todo = list(dict.fromkeys(path for path, _ in items if path not in known))
    outcomes: dict[str, int | DecodeError] = {path: frames for path, frames in known.items()}
    reporter = Progress(len(todo), progress, (metrics or NullIndexMetrics()).set_index_progress)
    try:
        for path, frames, error in map_bounded(lambda p: count_frames(p, check == "decode", template), todo,
                                               workers, timeout, stop_when):
            outcomes[path] = frames if error is None else _as_decode_error(path, error, timeout)
            reporter.advance()
    except Interrupted:
        raise ProbeInterrupted(f"probe stopped with {len(todo) - reporter.done} of {len(todo)} clips left") from None
    finally:
        reporter.close()
    usable, skipped, frames = [], [], []
    for path, label in items:
        outcome = outcomes[path]
        if isinstance(outcome, DecodeError):
            skipped.append(Skipped(path, outcome.reason, outcome.kind, label))
        else:
            usable.append((path, label))
            frames.append(int(outcome))
    return usable, skipped, frames


def _as_decode_error(path: str, error: BaseException, timeout: float | None) -> DecodeError:
    if isinstance(error, DecodeError):
        return error
    if isinstance(error, TimeoutError):
        return DecodeError(path, f"probing took over {timeout:g} s (a hung decoder?)", "timeout")
    if isinstance(error, FileNotFoundError):
        return DecodeError(path, "missing file", "missing")
    if isinstance(error, OSError):
        return DecodeError(path, f"cannot be read ({error.strerror or error})")
    return DecodeError(path, f"cannot be read ({type(error).__name__}: {error})")  # a decoder's own error


class Progress:
    """Progress through `total` clips: a tqdm bar on a terminal, else a log line every
    PROGRESS_EVERY_S seconds (done/total, rate, time left); always `report(done, total)` (a metric).
    `doing` and `done_verb` name the work in the lines ("indexing", "indexed")."""

    def __init__(self, total: int, terminal: bool, report, doing: str = "indexing", done_verb: str = "indexed"):
        self.total, self.done, self.report, self.doing, self.done_verb = total, 0, report, doing, done_verb
        self.began = self.logged = time.monotonic()
        self.bar = tqdm(total=total, desc=f"{doing} clips", unit="clip", file=sys.stderr, mininterval=1.0) \
            if terminal and total else None
        report(0, total)
        if total and not terminal:
            log.info("%s %d clips", doing, total)

    def advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update()
        now = time.monotonic()
        if now - self.logged >= PROGRESS_EVERY_S or self.done == self.total:
            self.report(self.done, self.total)
            if self.bar is None and self.done < self.total:
                rate = self.done / max(now - self.began, 1e-9)
                log.info("%s: %d / %d clips (%.1f/s, about %.0f s left)", self.doing, self.done, self.total, rate,
                         (self.total - self.done) / max(rate, 1e-9))
            self.logged = now

    def close(self) -> None:
        self.report(self.done, self.total)
        if self.bar is not None:
            self.bar.close()
        if self.total and self.done == self.total:
            seconds = time.monotonic() - self.began
            log.info("%s %d clips in %.1f s (%.1f/s)", self.done_verb, self.total, seconds,
                     self.total / max(seconds, 1e-9))


# -- the stored index ------------------------------------------------------------------------------
INDEX_FILE = "index.json"
INDEX_VERSION = 2  # 2: the listing, whole, and the probe's outcome beside it (1: the probed clips only)


@dataclass
class DatasetIndex:
    """What the lists resolved to, and what the probe found. `train` and `val` are the listed clips
    (`val` None when validation clips are held out of `train`), in the class order `class_names`;
    `source` the settings that name the lists and `lists_sha256` a digest of the lists' sources as
    they were when listed (vidtrain.data). The probe's outcome: `frames` (path -> frame count of
    every usable clip probed so far, or given by the list), `skipped` and `val_skipped` (the clips it
    left out, with reasons), and `complete` once every listed clip was looked at. Written when listed
    (training starts from it) and again when the probe completes."""

    class_names: list[str]
    train: list[Item]
    val: list[Item] | None
    source: dict
    lists_sha256: str
    frames: dict[str, int] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    val_skipped: list[Skipped] = field(default_factory=list)
    complete: bool = False
    built: float = field(default_factory=time.time)
    left_out: set[str] = field(default_factory=set, compare=False, repr=False)  # the skipped clips' paths

    def __post_init__(self):
        self.left_out.update(s.path for s in self.skipped + self.val_skipped)

    @property
    def items_sha256(self) -> str:
        return lists_digest(self.train, self.val)

    def usable(self, items: list[Item]) -> list[Item]:
        """`items` but those the probe left out."""
        return [item for item in items if item[0] not in self.left_out]

    def to_json(self) -> dict:
        """The index as index.json holds it (also what the chief sends the other workers)."""
        def split(items):
            return None if items is None else {"paths": [p for p, _ in items], "labels": [lb for _, lb in items],
                                               "frames": [self.frames.get(p) for p, _ in items]}

        return {"version": INDEX_VERSION, "built": self.built, "source": self.source, "lists_sha256": self.lists_sha256,
                "complete": self.complete, "class_names": self.class_names, "train": split(self.train),
                "val": split(self.val), "skipped": [asdict(s) for s in self.skipped],
                "val_skipped": [asdict(s) for s in self.val_skipped]}

    @classmethod
    def from_json(cls, data, where: str) -> DatasetIndex | None:
        """The index `to_json` gave, or None for another version. Raises ValueError naming `where`
        when it is malformed."""
        if not isinstance(data, dict) or data.get("version") != INDEX_VERSION:
            return None
        frames = {}

        def split(part):
            if part is None:
                return None
            frames.update((p, n) for p, n in zip(part["paths"], part["frames"]) if n is not None)
            return list(zip(part["paths"], part["labels"]))

        try:
            return cls(data["class_names"], split(data["train"]), split(data["val"]), data["source"],
                       data["lists_sha256"], frames, [Skipped(**s) for s in data["skipped"]],
                       [Skipped(**s) for s in data["val_skipped"]], data["complete"], data["built"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{where} cannot be read (no {exc})") from None

    def write(self, folder: str | os.PathLike) -> Path:
        """Write atomically to `folder`/index.json (a reader sees the old index or the new one)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / INDEX_FILE, self.to_json(), indent=None)
        return folder / INDEX_FILE

    @classmethod
    def read(cls, folder: str | os.PathLike) -> DatasetIndex | None:
        """The index in `folder`, or None when there is none (or it is of another version). Raises
        ValueError naming the file when it cannot be parsed."""
        path = Path(folder) / INDEX_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path} cannot be read ({exc})") from None
        return cls.from_json(data, str(path))


def lists_digest(train: list[Item], val: list[Item] | None) -> str:
    """sha256 of the listed clips: whether a listing names the same clips as another."""
    digest = hashlib.sha256()
    for items in (train, val or []):
        for path, label in items:
            digest.update(f"{path}\0{label}\n".encode())
        digest.update(b"--\n")
    return digest.hexdigest()
