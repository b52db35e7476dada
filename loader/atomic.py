"""Atomic file writes: a reader sees the old file or the whole new one, never a part.

Used by everything that writes a file others read while it may be killed: the dataset index
and the frame cache (loader), checkpoints, reports and the export (vidtrain). A temporary file
in the target's folder is written, fsynced, given mode 0644 (mkstemp's 0600 would hide it from
other users of a mounted volume) and renamed into place.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

TEMP_PREFIX = ".tmp-"  # every temporary file starts so: leftovers of a killed write are easy to find
FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class OutputError(OSError):
    """A file could not be written for lack of space (the job exits 1: Kubernetes retries)."""


def write_atomic(path: str | os.PathLike, write, tag: str = "") -> None:
    """Call write(tmp_path), fsync, rename to `path`, then fsync the folder (so that the rename
    itself survives a power cut, not only the data). Out of space, the temporary file is removed,
    `path` is left as it was, and OutputError names the file and the space left. `tag` (no "-" in
    it) starts the temporary file's name, after TEMP_PREFIX: who is writing."""
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".weights.h5") else path.suffix  # what Keras asks of it
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{tag + '-' if tag else ''}"
                               f"{path.name[:len(path.name) - len(suffix)]}-", suffix=suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        sync_folder(path.parent)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if out_of_space(exc):
            free = shutil.disk_usage(path.parent).free
            error = OutputError(f"cannot write {path}: no space left ({free / 2**20:.1f} MiB free in "
                                f"{path.parent}); its previous version is intact")
            error.errno = errno.ENOSPC
            raise error from None
        raise


def sync_folder(folder: str | os.PathLike) -> None:
    """fsync a folder: its entries (a rename into it) reach the disk. A file system that cannot sync a
    folder (some network ones) is left to its own guarantees."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


RENAME_EXCHANGE = 2  # renameat2's flag (linux/fs.h): swap two paths atomically


def swap_in(new: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Put the folder `new` at `path` in one step, so a reader sees the old folder or the new one,
    never neither: renameat2(RENAME_EXCHANGE) swaps the two where the kernel and file system can
    (Linux 3.15+: ext4, xfs, btrfs, tmpfs, overlayfs), then the old folder, now at `new`, is removed.
    Elsewhere the old folder is renamed aside first (a moment with neither). Returns `path`."""
    new, path = Path(new), Path(path)
    if path.exists() and _exchange(new, path):
        shutil.rmtree(new, ignore_errors=True)
    else:
        aside = path.with_name(f"{TEMP_PREFIX}old-{path.name}-{os.getpid()}")
        if path.exists():
            path.rename(aside)
        new.rename(path)
        shutil.rmtree(aside, ignore_errors=True)
    sync_folder(path.parent)
    return path


def _exchange(a: Path, b: Path) -> bool:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_cwd = -100  # AT_FDCWD
    return renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), RENAME_EXCHANGE) == 0


def write_json_atomic(path: str | os.PathLike, data, indent: int | None = 2) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=indent, default=str)))


def out_of_space(exc: BaseException | None) -> bool:
    """An ENOSPC (or quota, or file-size limit) error, also when a library wrapped it."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in FULL:
            return True
        if "No space left on device" in str(exc) or "File too large" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary files a killed write left in `folder` (not below it); returns what was removed.
    Call only where no other process writes at the same time."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass  # another process removed or renamed it meanwhile
    return removed
