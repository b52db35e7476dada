"""Index: which clips exist and which class each belongs to; the up-front probe.

`find_videos` and `read_manifest` list (path, label) items. `probe` opens every
clip once, in parallel, before training: unreadable, empty, audio-only or
truncated files are excluded there with their reason instead of being
discovered mid-epoch. Probe results are cached by (path, size, mtime).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
import tempfile
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from loader.decode import DecodeError, count_frames
from loader.prefetch import call_with_timeout

log = logging.getLogger("vidtrain")
Item = tuple[str, int]  # (path, label index)


class ManifestError(ValueError):
    """A manifest row that cannot be used; names the file and line."""

    def __init__(self, manifest: str | os.PathLike, line: int, message: str):
        super().__init__(f"{manifest}, line {line}: {message}")
        self.manifest, self.line = str(manifest), line


@dataclass(frozen=True)
class Skipped:
    """A clip left out of training, and why."""

    path: str
    reason: str
    kind: str  # one of loader.decode.SKIP_KINDS
    label: int | None = None


def find_videos(root: str | os.PathLike) -> tuple[list[Item], list[str]]:
    """Items of `root/<class>/<clip>` (a clip is a video file or a folder of frames).

    Classes are the sorted sub-folder names; clips are sorted by name.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    class_names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    items = [
        (str(clip), label)
        for label, name in enumerate(class_names)
        for clip in sorted((root / name).iterdir())
        if not clip.name.startswith(".")
    ]
    return items, class_names


def read_manifest(csv_path: str | os.PathLike, video_root: str | os.PathLike | None = None,
                  role: str = "train") -> tuple[list[Item], list[str]]:
    """Items of an annotation file, its format recognised from the file (see loader.datasets):
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
    from loader import datasets

    path, root = Path(csv_path), Path(video_root) if video_root is not None else None
    kind = datasets.detect(path)
    if kind in ("csv", "jester"):
        rows, order = _csv(path, root)
        order = datasets.jester_order(path) if kind == "jester" else order
    elif kind == "hmdb51":
        rows, order = datasets.hmdb51(path, root, role)
    elif kind.startswith("mmaction2"):
        rows, order = datasets.mmaction2(path, root, rawframes=kind.endswith("rawframes"))
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
    return [(clip, lookup[name]) for _, clip, name in rows], class_names


def _csv(csv_path: Path, root: Path | None) -> tuple[list[tuple[int, str, str]], list[str]]:
    rows = []
    for k, (line, row) in enumerate(_rows(csv_path)):
        if k == 0 and [c.lower() for c in row[:2]] == ["path", "label"]:  # a header
            continue
        rows.append((line, _parse_row(csv_path, line, row)))
    order = _class_order(csv_path, rows)
    return [(line, resolve(csv_path, clip, root), label) for line, (clip, label, _) in rows], order


def read_paths(csv_path: str | os.PathLike) -> list[str]:
    """The clip paths of a CSV whose first column is a path (a label column may follow or not),
    resolved as in read_manifest; for predicting."""
    csv_path = Path(csv_path)
    paths = [row[0] for k, (_, row) in enumerate(_rows(csv_path)) if not (k == 0 and row[0].lower() == "path")]
    return [resolve(csv_path, path) for path in paths if path]


def _rows(csv_path: Path):
    """(line, stripped cells) of every non-empty row. utf-8-sig: spreadsheet "CSV UTF-8" exports
    start with a byte-order mark, which would otherwise stick to the first cell."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        for line, row in enumerate(csv.reader(f, delimiter=";"), start=1):
            row = [cell.strip() for cell in row]
            if any(row):
                yield line, row


def _dedupe(manifest: Path, rows: list[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    """Drop repeated rows of one clip (with a warning); one clip under two labels is an error."""
    first: dict[str, tuple[int, str]] = {}
    kept = []
    for line, clip, label in rows:
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


def resolve(manifest: Path, path: str, root: Path | None = None) -> str:
    """A manifest's clip path: absolute as given; else under `root` (VIDEO_ROOT) when given; else
    beside the manifest, or in the folder named like it when only found there."""
    p = Path(path)
    if p.is_absolute():
        return str(p)
    if root is not None:
        return str(root / p)
    beside = manifest.parent / p
    named = manifest.parent / manifest.stem / p
    return str(named if not beside.exists() and named.exists() else beside)


class ProbeInterrupted(RuntimeError):
    """The probe stopped early because `stop_when()` became true."""


def probe(items: list[Item], workers: int = 4, cache_file: str | os.PathLike | None = None,
          progress: bool = True, timeout: float | None = None, stop_when=None) -> tuple[list[Item], list[Skipped]]:
    """Open every clip once (in parallel) and split items into usable and skipped.

    Input order is kept. A file that changed since the cached probe (size or
    mtime) is probed again. A clip whose probe takes over `timeout` seconds is
    skipped with kind "timeout". `stop_when()` is checked at least twice a
    second; once true, pending probes are cancelled and ProbeInterrupted raised.
    A cache file that cannot be written costs a warning.
    """
    cache = _load_cache(cache_file)
    keys = [_cache_key(path) for path, _ in items]
    todo = sorted({k for k in keys if k is not None and k not in cache})
    if todo:
        cache.update(_probe_all(todo, workers, progress, timeout, stop_when))
    if cache_file is not None and todo:
        try:  # a timeout may pass (a busy disk): probe such a clip again next time
            _save_cache(cache_file, {k: v for k, v in cache.items() if v.get("kind") != "timeout"})
        except OSError as exc:
            log.warning("probe cache %s cannot be written (%s): clips are probed again next time", cache_file,
                        exc.strerror or exc)
    usable, skipped = [], []
    for (path, label), key in zip(items, keys):
        entry = {"error": "missing file", "kind": "missing"} if key is None else cache[key]
        if entry["error"]:
            skipped.append(Skipped(path, entry["error"], entry["kind"], label))
        else:
            usable.append((path, label))
    return usable, skipped


def _probe_all(keys: list[str], workers: int, progress: bool, timeout, stop_when) -> dict:
    results = {}
    bar = tqdm(total=len(keys), desc="probing clips", unit="clip", disable=not progress, file=sys.stderr,
               mininterval=1.0)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vidtrain-probe")
    try:
        pending = {pool.submit(_probe_one, key.rsplit("|", 2)[0], timeout): key for key in keys}
        while pending:
            if stop_when is not None and stop_when():
                raise ProbeInterrupted(f"probe stopped with {len(pending)} of {len(keys)} clips left")
            done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                results[pending.pop(future)] = future.result()
            bar.update(len(done))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
    return results


def _probe_one(path: str, timeout: float | None = None) -> dict:
    try:
        return {"frames": call_with_timeout(count_frames, timeout, path, True), "error": None}
    except TimeoutError:
        return {"frames": 0, "error": f"probing took over {timeout:g} s (a hung decoder?)", "kind": "timeout"}
    except DecodeError as exc:
        return {"frames": 0, "error": exc.reason, "kind": exc.kind}


def _cache_key(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    size = len(os.listdir(path)) if os.path.isdir(path) else st.st_size
    return f"{os.path.abspath(path)}|{size}|{st.st_mtime_ns}"


def _load_cache(cache_file: str | os.PathLike | None) -> dict:
    if cache_file is None or not os.path.exists(cache_file):
        return {}
    try:
        return json.loads(Path(cache_file).read_text())
    except (OSError, ValueError):
        return {}  # a damaged cache costs one re-probe, never a wrong answer


def _save_cache(cache_file: str | os.PathLike, cache: dict) -> None:
    cache_file = Path(cache_file)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_file.parent, prefix=".probe-")
    with os.fdopen(fd, "w") as f:
        json.dump(cache, f)
    os.replace(tmp, cache_file)
