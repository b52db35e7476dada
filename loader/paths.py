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


class Resolver:
    """Where a list's clip paths live: absolute as given; else under `root` (VIDEO_ROOT) when given;
    else beside the list, or in the folder named like it (`train.csv` -> `train/`) when only found
    there. Each folder is listed once: at a quarter million rows one look per row (two where the
    named folder holds the clips) costs minutes on a network volume, one listing per folder seconds."""

    def __init__(self, manifest: str | os.PathLike, root: str | os.PathLike | None = None):
        self.manifest, self.root = Path(manifest), Path(root) if root is not None else None
        self._names: dict[Path, frozenset[str]] = {}

    def __call__(self, path: str) -> str:
        p = Path(path)
        if p.is_absolute():
            return str(p)
        if self.root is not None:
            return str(self.root / p)
        beside = self.manifest.parent / p
        named = self.manifest.parent / self.manifest.stem / p
        return str(named if not self._exists(beside) and self._exists(named) else beside)

    def _exists(self, path: Path) -> bool:
        if path.parent not in self._names:
            try:
                self._names[path.parent] = frozenset(os.listdir(path.parent))
            except OSError:
                self._names[path.parent] = frozenset()
        return path.name in self._names[path.parent]


def resolve(manifest: Path, path: str, root: Path | None = None) -> str:
    """One listed clip's path (see Resolver)."""
    return Resolver(manifest, root)(path)


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
