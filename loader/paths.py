"""Names of things on disk, with no heavy imports (settings validate with them): the error a bad
list row raises and where a listed clip lives (loader.index, loader.datasets), and the file names
a frame template names (loader.decode)."""

from __future__ import annotations

import os
import re
import string
from pathlib import Path


class ManifestError(ValueError):
    """A list row that cannot be used; names the file and line."""

    def __init__(self, manifest: str | os.PathLike, line: int, message: str):
        super().__init__(f"{manifest}, line {line}: {message}")
        self.manifest, self.line = str(manifest), line


def resolve(manifest: Path, path: str, root: Path | None = None) -> str:
    """A listed clip's path: absolute as given; else under `root` (VIDEO_ROOT) when given; else
    beside the list, or in the folder named like it (`train.csv` -> `train/`) when only found there."""
    p = Path(path)
    if p.is_absolute():
        return str(p)
    if root is not None:
        return str(root / p)
    beside = manifest.parent / p
    named = manifest.parent / manifest.stem / p
    return str(named if not beside.exists() and named.exists() else beside)


def template_pattern(template: str) -> re.Pattern:
    """The file names a frame template names: `img_{:05d}.jpg` -> `img_(\\d+)\\.jpg`. Raises ValueError
    unless the template has exactly one integer field."""
    fields = [(text, field, spec) for text, field, spec, _ in string.Formatter().parse(template)]
    numbered = [f for f in fields if f[1] is not None]
    if len(numbered) != 1 or numbered[0][1] not in ("", "0"):
        raise ValueError(f"a frame template needs exactly one number field such as {{:05d}}, got {template!r}")
    try:
        if template.format(1) == template.format(2):
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(f"a frame template's field must format a frame number, got {template!r}") from None
    prefix = "".join(text for text, _, _ in fields[: fields.index(numbered[0]) + 1])
    suffix = "".join(text for text, _, _ in fields[fields.index(numbered[0]) + 1:])
    return re.compile(re.escape(prefix) + r"(\d+)" + re.escape(suffix))
