"""Frame cache: every frame of a clip, decoded once at training size, in a file that is memory-mapped.

From the second epoch on, a clip's frames are read from the cache instead of
being decoded again, whatever the sampling: the sampler picks indices from
the clip's frame count as before, and the cache returns those frames. So
batches read through the cache are byte-identical to decoded ones.

A cache file is keyed by (path, file size, mtime, height, width[, frame
template]): a changed clip gets a new file. Its layout: MAGIC, a little-endian
uint32 header length, a JSON header {"key", "shape"}, padding to 64 bytes, then
the frames as uint8 [N, H, W, 3]. Files are written atomically (loader.atomic),
so several loader threads and several processes may fill the cache at once; a
reader never sees a partial file under the final name. A file that is
truncated, foreign (another key or not ours) or otherwise unreadable counts as
a miss and is decoded again, never returned.

The cache is bounded, for every process that shares its folder: the bytes in it
are counted in one file (`.usage`) that a process changes only under a lock on
`.lock` (flock), and a clip's room is taken there before it is decoded. A
temporary file carries its writer's host, process id and the room it took in its
name, so opening the cache counts the writes still running and removes what
dead writers left. Whether a clip fits is decided from its frame count before
decoding (the dataset index knows it): a clip too large for its share, or one
that finds the cache full, is never decoded whole, only its sampled frames.
What is cached stays, first come first served: every epoch visits every clip
once in a new order, so evicting the least recently used would only trade one
clip for another (on such a cyclic scan LRU keeps nothing that is read again
before it is evicted).

A cache that cannot be written (a read-only folder) logs one warning and the
loader goes on decoding.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from loader.atomic import TEMP_PREFIX, write_atomic
from loader.decode import DecodeError, frame_files
from loader.hooks import NullCacheMetrics

log = logging.getLogger("vidtrain")
MAGIC = b"VIDTRAIN-FRAMES2"  # 2: short_side frames resized by the decoder (1: by Pillow after decoding)
ALIGN = 64
SUFFIX = ".frames"
# One clip larger than this share of the bound is never cached (a 3000-frame file at 224x224 is 450 MB).
MAX_CLIP_FRACTION = 0.05
# A temporary file of another host's writer this old is taken for the leftover of a dead one.
STALE_AFTER_S = 3600.0
USAGE, LOCK = ".usage", ".lock"


class FrameCache:
    """Decoded frames of whole clips under `root`, at most `max_bytes` in all (for every process
    that shares `root`).

    Thread-safe: one lock guards this process's flags (and serialises its turns at the folder's
    file lock); it is never held while decoding, reading or writing a clip."""

    def __init__(self, root: str | os.PathLike, max_bytes: int, metrics=None):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.root, self.max_bytes = Path(root), int(max_bytes)
        self.metrics = metrics or NullCacheMetrics()
        self._lock = threading.Lock()
        self._full = self._broken = False
        self._too_big: set[Path] = set()  # set.add and `in` are atomic: no lock needed
        self._tag = f"{_host()}.{os.getpid()}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with self._usage() as usage:
                usage[0] = self._recount()
            self.metrics.set_cache_bytes(usage[0], self.max_bytes)
        except OSError as exc:
            self._fail(exc)

    def frames(self, path: str, size: tuple[int, int], decode_all: Callable[[], np.ndarray],
               template: str | None = None, frame_count: int | None = None,
               resize: str = "squash") -> np.ndarray | None:
        """All frames of clip `path` at `size`: from the cache, or `decode_all()` stored for next time.
        Returns a read-only array (memory-mapped on a hit), or None when the clip is not to be
        decoded whole: too large to cache, or the cache full (the caller decodes just the frames it
        needs). `frame_count` (from the dataset index) decides that before decoding; without it the
        clip is decoded first. `resize` (loader.geometry) is part of the key: "short_side" frames are
        stored at the size that covers `size` with the clip's aspect."""
        key = clip_key(path, size, template, resize)
        file = self._file(key)
        if file in self._too_big:
            return None
        cached = read_frames(file, key)
        self.metrics.count_cache(hit=cached is not None)
        if cached is not None:
            return cached
        self._discard(file)  # a file of another format or a damaged one: its bytes leave the count
        need = None if frame_count is None else _file_size(key, (frame_count, *size, 3))
        if need is not None and not self._admit(file, need):
            return None
        try:
            frames = decode_all()
        except BaseException:
            if need is not None:
                self._release(need)
            raise
        actual = _file_size(key, frames.shape)
        if need != actual:  # unknown before, or the header's count was not the decoder's
            if need is not None:
                self._release(need)
            if not self._admit(file, actual):
                return frames
        self._write(file, key, frames, actual)
        return frames

    def give_up(self, path: str, size: tuple[int, int], template: str | None = None, resize: str = "squash") -> None:
        """Never decode clip `path` whole again in this process (its whole decode took too long)."""
        try:
            self._too_big.add(self._file(clip_key(path, size, template, resize)))
        except DecodeError:
            pass

    def _discard(self, file: Path) -> None:
        try:
            size = file.stat().st_size
            file.unlink()
        except OSError:
            return
        self._release(size)

    def _file(self, key: list) -> Path:
        digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()
        return self.root / digest[:2] / (digest + SUFFIX)

    def _admit(self, file: Path, size: int) -> bool:
        if size > MAX_CLIP_FRACTION * self.max_bytes:
            self._too_big.add(file)
            return False
        return self._reserve(size)

    def _reserve(self, size: int) -> bool:
        """Take `size` bytes of the shared bound; False when it has no room (or is broken)."""
        with self._lock:
            if self._broken or self._full:
                return False
            try:
                with self._usage() as usage:
                    fits = usage[0] + size <= self.max_bytes
                    if fits:
                        usage[0] += size
                    total = usage[0]
            except OSError as exc:
                self._fail(exc)
                return False
            self._full = not fits
        self.metrics.set_cache_bytes(total, self.max_bytes)
        if not fits:
            log.info("frame cache %s is full (%.2f of %.2f GB): clips not cached yet are decoded every epoch, "
                     "their sampled frames only", self.root, total / 1e9, self.max_bytes / 1e9)
        return fits

    def _release(self, size: int) -> None:
        with self._lock:
            try:
                with self._usage() as usage:
                    usage[0] = max(usage[0] - size, 0)
                    total = usage[0]
            except OSError:
                return
        self.metrics.set_cache_bytes(total, self.max_bytes)

    def _write(self, file: Path, key: list, frames: np.ndarray, size: int) -> None:
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            write_frames(file, key, frames, tag=f"{self._tag}.{size}")
        except OSError as exc:
            self._release(size)
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        broken, self._broken = self._broken, True  # two threads failing at once cost one more warning
        if not broken:
            log.warning("frame cache %s cannot be written (%s): decoding every epoch instead", self.root,
                        exc.strerror or exc)

    @contextlib.contextmanager
    def _usage(self):
        """[bytes] of the shared count, held under the folder's lock; written back when the block ends."""
        with open(self.root / LOCK, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                path = self.root / USAGE
                try:
                    usage = [int(path.read_text() or 0)]
                except (FileNotFoundError, ValueError):
                    usage = [self._recount()]
                before = usage[0]
                yield usage
                if usage[0] != before or not path.exists():
                    tmp = path.with_name(f"{USAGE}.{self._tag}")
                    tmp.write_text(str(usage[0]))
                    os.replace(tmp, path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _recount(self) -> int:
        """Bytes of the complete files plus the room live writers took; removes dead writers' files.
        Called under the folder's lock."""
        total = 0
        for folder in (f for f in self.root.glob("??") if f.is_dir()):
            for entry in os.scandir(folder):
                if not entry.name.startswith(TEMP_PREFIX):
                    total += entry.stat().st_size if entry.name.endswith(SUFFIX) else 0
                elif (taken := _live_room(entry)) is None:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                        log.info("frame cache: removed %s, left by a writer that is gone", entry.path)
                else:
                    total += taken
        return total


def _host() -> str:
    """This host's name as it goes into a temporary file's name (no "-" or "." in it: they separate)."""
    return socket.gethostname().replace("-", "_").replace(".", "_")


def _live_room(entry: os.DirEntry) -> int | None:
    """The room a temporary file's writer took, or None when the writer is gone (or unknown and old)."""
    tag = entry.name[len(TEMP_PREFIX):].split("-", 1)[0].split(".")
    try:
        age = time.time() - entry.stat().st_mtime
    except OSError:
        return 0
    if len(tag) != 3 or not tag[1].isdigit() or not tag[2].isdigit():
        return None if age > STALE_AFTER_S else 0
    host, pid, room = tag[0], int(tag[1]), int(tag[2])
    if host == _host():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, another user's
        return room
    return None if age > STALE_AFTER_S else room


def clip_key(path: str | os.PathLike, size: tuple[int, int], template: str | None = None,
             resize: str = "squash") -> list:
    """(path, bytes, mtime_ns, height, width); a frame folder counts its frames' total size and newest
    mtime, and its frame template (another template reads other frames); a resize other than
    "squash" is named at the end. A clip that is gone (or cannot be looked at) is a DecodeError, as
    decoding it would be."""
    try:
        return _clip_key(str(path), size, template, resize)
    except FileNotFoundError:
        raise DecodeError(path, "file not found", "missing") from None
    except OSError as exc:
        raise DecodeError(path, f"cannot be read ({exc.strerror or exc})") from None


def _clip_key(path: str, size: tuple[int, int], template: str | None, resize: str) -> list:
    extra = [resize] if resize != "squash" else []
    if os.path.isdir(path):
        stats = [f.stat() for f in frame_files(path, template)]
        nbytes, mtime = sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)
        return [os.path.abspath(path), nbytes, mtime, int(size[0]), int(size[1])] + ([template] if template else []) \
            + extra
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns, int(size[0]), int(size[1])] + extra


def _header(key: list, shape) -> bytes:
    header = json.dumps({"key": key, "shape": list(shape)}).encode()
    head = len(MAGIC) + 4 + len(header)
    return MAGIC + struct.pack("<I", len(header)) + header + b"\0" * (-head % ALIGN)


def _file_size(key: list, shape) -> int:
    return len(_header(key, shape)) + int(np.prod(shape))


def write_frames(file: Path, key: list, frames: np.ndarray, tag: str = "") -> None:
    """Write atomically (loader.atomic); `tag` goes into the temporary file's name."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
    file.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(_header(key, frames.shape))
            f.write(np.ascontiguousarray(frames).data)

    write_atomic(file, write, tag)


def read_frames(file: Path, key: list) -> np.ndarray | None:
    """The frames in `file` if it is complete and holds `key`; None for a missing, partial,
    truncated or foreign file."""
    try:
        with open(file, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                return None
            (length,) = struct.unpack("<I", f.read(4))
            header = json.loads(f.read(length))
            actual = os.fstat(f.fileno()).st_size
        shape = tuple(header["shape"])
        offset = len(_header(key, shape))
        if header["key"] != key or len(shape) != 4 or shape[-1] != 3 or actual != offset + int(np.prod(shape)):
            return None
        return np.memmap(file, np.uint8, "r", offset=offset, shape=shape)
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
