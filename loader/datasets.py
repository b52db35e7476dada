"""Public datasets' own annotation files, read as they are published; recognised from the file.

Each reader returns `(rows, class_order)`: rows `(line, clip path, class name)` in file order,
and the class order of the dataset's own index file (None where it has none: classes are
then sorted by name). `VIDEO_ROOT` (`root`) says where the clips live; without it, paths
resolve as in a `path;label` manifest (beside it, or in the folder named like it).
A clip that is named but not on disk keeps its expected path: the probe reports it skipped
as missing, like any other bad clip.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

from loader.paths import ManifestError, Resolver

Row = tuple[int, str, str]  # (line, clip path, class name)
VIDEO_EXTENSIONS = frozenset({".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".ogv"})
UCF_CLASS_INDEX = "classInd.txt"
SSV2_LABELS = "something-something-v2-labels.json"
JESTER_LABELS = "jester-v1-labels.csv"
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")
HMDB_SPLIT_FILE = re.compile(r"^(?P<name>.+)_test_split(?P<split>[123])\.txt$")
HMDB_ROLE = {"train": "1", "val": "2"}  # the official files mark each clip 1 (train), 2 (test) or 0 (unused)

NAMES = {"csv": "path;label CSV", "jester": "Jester CSV", "ucf101": "UCF101/HMDB51 split list",
         "hmdb51": "HMDB51 official split files",
         "ssv2": "Something-Something-v2 JSON", "kinetics": "Kinetics CSV",
         "mmaction2-videos": "MMAction2 video list", "mmaction2-rawframes": "MMAction2 rawframe list"}


def detect(path: Path) -> str:
    """Which annotation format `path` is (a key of NAMES), from its name, first row and neighbours."""
    if path.suffix.lower() == ".json":
        return "ssv2"
    line, first = next(_lines(path), (1, ""))
    if first.replace(" ", "").lower().startswith("label,youtube_id"):
        return "kinetics"
    if ";" in first:
        return "jester" if (path.parent / JESTER_LABELS).exists() else "csv"
    if HMDB_SPLIT_FILE.match(path.name):
        return "hmdb51"
    tokens = first.split()
    if (path.parent / UCF_CLASS_INDEX).exists() and len(tokens) in (1, 2):
        return "ucf101"
    if len(tokens) == 2 and tokens[1].isdigit():
        return "mmaction2-videos"
    if len(tokens) == 3 and tokens[1].isdigit() and tokens[2].isdigit():
        return "mmaction2-rawframes"
    raise ManifestError(path, line, f"unrecognised annotation format: {first!r}; expected one of "
                        f"{', '.join(NAMES.values())} (see README: Your data)")


def source_files(path: Path) -> list[Path]:
    """The files an annotation list is read from: the list, and what its format reads beside it (a
    class index or labels file, HMDB51's other split files). A digest of them tells whether the
    lists changed without listing the clips again."""
    kind = detect(path)
    beside = {"jester": [path.parent / JESTER_LABELS], "ucf101": [path.parent / UCF_CLASS_INDEX],
              "ssv2": [path.parent / SSV2_LABELS]}.get(kind, [])
    if kind == "hmdb51":
        split = HMDB_SPLIT_FILE.match(path.name)["split"]
        beside = [p for p in path.parent.iterdir() if (m := HMDB_SPLIT_FILE.match(p.name)) and m["split"] == split]
    return sorted({path, *(p for p in beside if p.exists())})


def ucf101(path: Path, root: Path | None) -> tuple[list[Row], list[str]]:
    """`Class/v_Class_g08_c01.avi 1` (train) or `Class/v_Class_g01_c01.avi` (test) rows; the class
    is the path's folder, its order from classInd.txt (`1 ApplyEyeMakeup`) beside the list."""
    classes = _class_index(path.parent / UCF_CLASS_INDEX)
    place, rows = Resolver(path, root), []
    for line, text in _lines(path):
        tokens = text.split()
        if len(tokens) not in (1, 2) or "/" not in tokens[0]:
            raise ManifestError(path, line, f"expected 'Class/clip.avi [index]', got {text!r}")
        name = tokens[0].split("/")[0]
        if name not in classes:
            raise ManifestError(path, line, f"class {name!r} is not in {UCF_CLASS_INDEX}")
        if len(tokens) == 2 and (not tokens[1].isdigit() or not 1 <= int(tokens[1]) <= len(classes)
                                 or classes[int(tokens[1]) - 1] != name):
            raise ManifestError(path, line, f"label {tokens[1]!r} is not {name!r}'s index in {UCF_CLASS_INDEX}")
        rows.append((line, place(tokens[0]), name))
    return rows, classes


def hmdb51(path: Path, root: Path | None, role: str) -> tuple[list[Row], list[str]]:
    """HMDB51's own split files (testTrainMulti_7030_splits/): one `<class>_test_split<N>.txt`
    per class, rows `clip.avi 1|2|0`. Naming any one of them reads all 51 of that split: the
    clips marked 1 for training, 2 for validation; the clip is <root>/<class>/<clip>.avi."""
    split = HMDB_SPLIT_FILE.match(path.name)["split"]
    classes = {m["name"]: p for p in path.parent.iterdir()
               if (m := HMDB_SPLIT_FILE.match(p.name)) and m["split"] == split}
    place, rows = Resolver(path, root), []
    for name, file in sorted(classes.items()):
        for line, text in _lines(file):
            tokens = text.split()
            if len(tokens) != 2 or tokens[1] not in ("0", "1", "2"):
                raise ManifestError(file, line, f"expected 'clip.avi 0|1|2', got {text!r}")
            if tokens[1] == HMDB_ROLE[role]:
                rows.append((line, place(f"{name}/{tokens[0]}"), name))
    return rows, sorted(classes)


def ssv2(path: Path, root: Path | None) -> tuple[list[Row], list[str] | None]:
    """A list of `{"id", "label", "template", "placeholders"}`; the clip is <root>/<id>.webm, the
    class the template without brackets, ordered by something-something-v2-labels.json."""
    entries = _json_list(path)
    order = _ssv2_labels(path.parent / SSV2_LABELS)
    place, rows = Resolver(path, root), []
    for k, (line, entry) in enumerate(entries):
        if not (isinstance(entry, dict) and isinstance(entry.get("id"), (str, int))
                and isinstance(entry.get("template"), str)):
            raise ManifestError(path, line, f"entry {k} needs an 'id' and a 'template' (a test split without "
                                f"labels cannot be trained or evaluated on), got {entry!r:.120}")
        name = entry["template"].replace("[", "").replace("]", "")
        if order is not None and name not in order:
            raise ManifestError(path, line, f"class {name!r} is not in {SSV2_LABELS}")
        rows.append((line, place(f"{entry['id']}.webm"), name))
    return rows, order


def kinetics(path: Path, root: Path | None) -> tuple[list[Row], None]:
    """`label,youtube_id,time_start,time_end,split` rows; the clip is the file named
    `<youtube_id>_<start:06d>_<end:06d>.<video extension>` anywhere under the root (downloaders
    lay them out flat or per class). Kinetics has no class index file: classes sorted by name."""
    base = root if root is not None else path.parent
    on_disk = {p.stem: p for p in base.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS}
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in KINETICS_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(path, 1, f"the header lacks {missing} (a test split without labels cannot be "
                                "trained or evaluated on)")
        for row in reader:
            line = reader.line_num
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except (TypeError, ValueError):
                raise ManifestError(path, line, f"time_start/time_end must be numbers, got "
                                    f"{row['time_start']!r}, {row['time_end']!r}") from None
            if not row["label"] or not row["youtube_id"]:
                raise ManifestError(path, line, f"empty label or youtube_id in {row!r}")
            stem = f"{row['youtube_id']}_{start:06d}_{end:06d}"
            rows.append((line, str(on_disk.get(stem, base / f"{stem}.mp4")), row["label"]))
    return rows, None


def mmaction2(path: Path, root: Path | None, rawframes: bool) -> tuple[list[Row], list[str], dict[str, int]]:
    """`path label_index` (videos) or `frame_dir total_frames label_index` (raw frames), whitespace
    separated, paths relative to the root (MMAction2's data_prefix). The classes are the label
    indices as names ("0", "1", ...), in numeric order. A raw-frame list's total_frames are
    returned by clip path (they need no probe)."""
    width = 3 if rawframes else 2
    place, rows, indices, frames = Resolver(path, root), [], set(), {}
    for line, text in _lines(path):
        tokens = text.split()
        if len(tokens) != width or not all(t.isdigit() for t in tokens[1:]):
            shape = "frame_dir total_frames label_index" if rawframes else "path label_index"
            raise ManifestError(path, line, f"expected '{shape}' (whitespace separated), got {text!r}")
        if rawframes and int(tokens[1]) < 1:
            raise ManifestError(path, line, f"total_frames must be >= 1, got {tokens[1]}")
        indices.add(int(tokens[-1]))
        clip = place(tokens[0])
        rows.append((line, clip, tokens[-1]))
        if rawframes:
            frames[os.path.normpath(clip)] = int(tokens[1])
    return rows, [str(i) for i in sorted(indices)], frames


def jester_order(path: Path) -> list[str]:
    """Jester's class order: jester-v1-labels.csv beside the list, one class per line."""
    return [text for _, text in _lines(path.parent / JESTER_LABELS)]


def _class_index(path: Path) -> list[str]:
    """classInd.txt: `1 ApplyEyeMakeup` rows, 1-based and complete."""
    by_index = {}
    for line, text in _lines(path):
        tokens = text.split()
        if len(tokens) != 2 or not tokens[0].isdigit():
            raise ManifestError(path, line, f"expected 'index ClassName', got {text!r}")
        by_index[int(tokens[0])] = tokens[1]
    if sorted(by_index) != list(range(1, len(by_index) + 1)):
        raise ManifestError(path, 1, f"class indices must run 1..{len(by_index)}, got {sorted(by_index)}")
    return [by_index[i] for i in sorted(by_index)]


def _ssv2_labels(path: Path) -> list[str] | None:
    if not path.exists():
        return None
    try:
        labels = json.loads(path.read_text(encoding="utf-8-sig"))
        order = sorted(labels, key=lambda name: int(labels[name]))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
        raise ManifestError(path, 1, f"expected {{\"Template\": \"index\"}}: {exc}") from None
    return order


def _json_list(path: Path) -> list[tuple[int, object]]:
    """(line, element) of every element of the JSON list in `path`, in one pass."""
    text = path.read_text(encoding="utf-8-sig")
    decoder, entries = json.JSONDecoder(), []
    i = len(text) - len(text.lstrip())
    line = 1 + text.count("\n", 0, i)
    if not text.startswith("[", i):
        raise ManifestError(path, line, "expected a JSON list of clips")
    i += 1
    try:
        while True:
            start = i
            while i < len(text) and text[i] in " \t\r\n,":
                i += 1
            line += text.count("\n", start, i)
            if i >= len(text) or text[i] == "]":
                break
            element, end = decoder.raw_decode(text, i)
            entries.append((line, element))
            line += text.count("\n", i, end)
            i = end
    except json.JSONDecodeError as exc:
        raise ManifestError(path, exc.lineno, f"not valid JSON: {exc.msg}") from None
    if i >= len(text):
        raise ManifestError(path, line, "not valid JSON: the list is not closed")
    return entries


def rows(path: Path):
    """(line number, stripped cells) of every non-empty `;`-separated row (cells may be quoted)."""
    for number, text in _lines(path):
        row = [cell.strip() for cell in next(csv.reader([text], delimiter=";"))]
        if any(row):
            yield number, row


def _lines(path: Path):
    """(line number, stripped text) of every non-empty line. utf-8-sig: spreadsheet "CSV UTF-8"
    exports start with a byte-order mark, which would otherwise stick to the first cell."""
    with open(path, encoding="utf-8-sig") as f:
        for number, text in enumerate(f, start=1):
            if text.strip():
                yield number, text.strip()

