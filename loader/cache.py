"""Frame cache: every frame of a clip, decoded once at training size, in a file that is memory-mapped.

From the second epoch on, a clip's frames are read from the cache instead of
being decoded again, whatever the sampling: the sampler picks indices from
the clip's frame count as before, and the cache returns those frames. So
batches read through the cache are byte-identical to decoded ones.

A cache file is keyed by (path, file size, mtime, height, width): a changed
clip gets a new file. Its layout: MAGIC, a little-endian uint32 header length,
a JSON header {"key", "shape"}, padding to 64 bytes, then the frames as uint8
[N, H, W, 3]. Files are written to a temporary name and renamed into place, so
several loader threads and several processes on one node may fill the cache at
once; a reader never sees a partial file under the final name. A file that is
truncated, foreign (another key or not ours) or otherwise unreadable counts as
a miss and is decoded again, never returned.

The cache is bounded: it stops adding at `max_bytes` and logs that once. The
bound counts the folder's files when opened plus what this process adds, and
the folder is counted again before the process would stop adding, so workers
filling one cache overshoot it by at most what they add between two counts.
A cache that cannot be written (a read-only folder) logs one warning and the
loader goes on decoding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from loader.decode import frame_files
from loader.hooks import NullCacheMetrics

log = logging.getLogger("vidtrain")
MAGIC = b"VIDTRAIN-FRAMES1"
ALIGN = 64
SUFFIX = ".frames"
# One clip larger than this is never cached (a 3000-frame file at 224x224 would be 450 MB).
MAX_CLIP_FRACTION = 0.05


class FrameCache:
    """Decoded frames of whole clips under `root`, at most `max_bytes` in all.

    Thread-safe: one lock guards the byte count and the "full" and "broken"
    flags; it is never held while decoding, reading or writing a file.
    """

    def __init__(self, root: str | os.PathLike, max_bytes: int, metrics=None):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.root, self.max_bytes = Path(root), int(max_bytes)
        self.metrics = metrics or NullCacheMetrics()
        self._lock = threading.Lock()
        self._full = self._broken = False
        self._too_big: set[Path] = set()  # set.add and `in` are atomic: no lock needed
        self._bytes = self._count_bytes()
        self.metrics.set_cache_bytes(self._bytes)

    def frames(self, path: str, size: tuple[int, int], decode_all: Callable[[], np.ndarray]) -> np.ndarray | None:
        """All frames of clip `path` at `size`: from the cache, or `decode_all()` stored for next time.
        Returns a read-only array (memory-mapped on a hit), or None for a clip known to be too large
        to cache (the caller decodes just the frames it needs)."""
        key = clip_key(path, size)
        file = self._file(key)
        if file in self._too_big:
            return None
        cached = read_frames(file, key)
        self.metrics.count_cache(hit=cached is not None)
        if cached is not None:
            return cached
        frames = decode_all()
        self._store(file, key, frames)
        return frames

    def _file(self, key: list) -> Path:
        digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()
        return self.root / digest[:2] / (digest + SUFFIX)

    def _store(self, file: Path, key: list, frames: np.ndarray) -> None:
        size = _file_size(key, frames.shape)
        if size > MAX_CLIP_FRACTION * self.max_bytes:
            self._too_big.add(file)
            return
        if not self._reserve(size):
            return
        try:
            write_frames(file, key, frames)
        except OSError as exc:
            with self._lock:
                self._bytes -= size
                broken, self._broken = self._broken, True
            if not broken:
                log.warning("frame cache %s cannot be written (%s): decoding every epoch instead", self.root,
                            exc.strerror or exc)
            return
        self.metrics.set_cache_bytes(self._bytes)

    def _reserve(self, size: int) -> bool:
        with self._lock:
            if self._broken or self._full:
                return False
            if self._bytes + size <= self.max_bytes:
                self._bytes += size
                return True
        recount = self._count_bytes()  # other processes may have added (or someone removed) files
        with self._lock:
            self._bytes = recount
            if self._bytes + size <= self.max_bytes:
                self._bytes += size
                return True
            full, self._full = self._full, True
        if not full:
            log.info("frame cache %s is full (%.2f of %.2f GB): clips not cached yet are decoded every epoch",
                     self.root, recount / 1e9, self.max_bytes / 1e9)
        return False

    def _count_bytes(self) -> int:
        try:
            return sum(f.stat().st_size for f in self.root.glob(f"*/*{SUFFIX}"))
        except OSError:
            return 0


def clip_key(path: str | os.PathLike, size: tuple[int, int]) -> list:
    """(path, bytes, mtime_ns, height, width); a frame folder counts its images' total size and newest mtime."""
    path = str(path)
    if os.path.isdir(path):
        stats = [f.stat() for f in frame_files(path)]
        nbytes, mtime = sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)
    else:
        stat = os.stat(path)
        nbytes, mtime = stat.st_size, stat.st_mtime_ns
    return [os.path.abspath(path), nbytes, mtime, int(size[0]), int(size[1])]


def _header(key: list, shape) -> bytes:
    header = json.dumps({"key": key, "shape": list(shape)}).encode()
    head = len(MAGIC) + 4 + len(header)
    return MAGIC + struct.pack("<I", len(header)) + header + b"\0" * (-head % ALIGN)


def _file_size(key: list, shape) -> int:
    return len(_header(key, shape)) + int(np.prod(shape))


def write_frames(file: Path, key: list, frames: np.ndarray) -> None:
    """Write atomically: a temporary file in the same folder, fsynced, renamed into place."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=".tmp-", suffix=SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_header(key, frames.shape))
            f.write(np.ascontiguousarray(frames).data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600: other users of a shared node may read it
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
