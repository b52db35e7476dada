"""Decode: frames of one clip, a video file (decord) or a folder of images (Pillow).

A `VideoReader` is opened per call and let go at return: decord readers are
not thread-safe, so none is ever shared between threads.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Iterator

import av
import decord
import numpy as np
from natsort import natsorted
from PIL import Image

from loader.geometry import covering_size
from loader.paths import template_pattern

# FFmpeg's own messages would repeat, unattributed, what DecodeError reports per clip.
decord.logging.set_level(decord.logging.QUIET)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
DECODE_DEVICES = ("cpu", "gpu")


SKIP_KINDS = ("missing", "empty", "no_video", "unreadable", "truncated", "decode_failed", "timeout")  # metric labels


class DecodeError(RuntimeError):
    """A clip that cannot be decoded: its path, a short reason, and a `kind`
    from SKIP_KINDS (bounded, so it can label a metric)."""

    def __init__(self, path: str | os.PathLike, reason: str, kind: str = "unreadable"):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.kind = str(path), reason, kind


def _context(device: str):
    if device not in DECODE_DEVICES:
        raise ValueError(f"decode device must be one of {DECODE_DEVICES}, got {device!r}")
    return decord.gpu(0) if device == "gpu" else decord.cpu(0)


# MMAction2's frame extraction writes RGB frames as img_00001.jpg beside optical flow (flow_x_/flow_y_ or x_/y_).
RGB_PREFIX = "img_"


def frame_files(folder: str | os.PathLike, template: str | None = None) -> list[Path]:
    """The RGB frame images of a frame folder, in order.

    With a `template` (`img_{:05d}.jpg`, `{:05d}.jpg`): the files it names, by their number.
    Without: every image, in natural order (frame2 before frame10), except that a folder holding
    `img_*` files (MMAction2's raw frames, with flow images beside them) uses only those."""
    names = os.listdir(folder)
    if template is not None:
        pattern = template_pattern(template)
        numbered = [(int(m[1]), name) for name in names if (m := pattern.fullmatch(name))]
        return [Path(folder, name) for _, name in sorted(numbered)]
    images = [name for name in names if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS]
    rgb = [name for name in images if name.startswith(RGB_PREFIX)]
    return [Path(folder, name) for name in natsorted(rgb or images)]


def _open_video(path: str, size: tuple[int, int] | None, device: str) -> decord.VideoReader:
    height, width = size if size else (-1, -1)
    try:
        # num_threads=1: parallelism comes from the loader's workers, one clip each.
        return decord.VideoReader(path, ctx=_context(device), width=width, height=height, num_threads=1)
    except (decord.DECORDError, RuntimeError) as exc:
        message = _short(exc)
        if "video stream" in message:
            raise DecodeError(path, "no video stream (audio-only?)", "no_video") from exc
        if message.startswith("Error reading"):
            raise DecodeError(path, "not a readable video (invalid data or unknown format)") from exc
        raise DecodeError(path, message) from exc


_CPP_LOCATION = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")
_CPP_CHECK = re.compile(r"Check failed: .*?\(-?\d+ vs\. -?\d+\)\s*")  # the failed C++ expression


def _short(exc: BaseException) -> str:
    """decord's messages carry C++ source locations, failed checks and stack traces; keep the message."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith("Stack")]
    text = _CPP_LOCATION.sub("", lines[0] if lines else type(exc).__name__)
    if _CPP_CHECK.search(text):
        text = "decoder error: " + (_CPP_CHECK.sub("", text).strip() or "a check in decord failed")
    return text[:300]


def count_frames(path: str | os.PathLike, check_last: bool = True, template: str | None = None) -> int:
    """Frame count of a clip. Without `check_last` it is cheap: a video's container header (the
    decoder opens it only where the container stores no count: WebM, MKV), a frame folder's
    listing. With `check_last`, the last frame is decoded too (and every frame image's header
    read), so a truncated file fails here, at probe time, rather than mid-epoch. `template`: see
    frame_files."""
    path = str(path)
    if os.path.isdir(path):
        files = _frame_files_or_empty(path, template)
        if check_last:  # every file's header (cheap), and the last frame whole
            for file in files:
                _in_folder(path, _check_header, file)
            _in_folder(path, _read_image, files[-1], None)
        return len(files)
    if os.path.getsize(path) == 0:
        raise DecodeError(path, "empty file", "empty")
    stored = _sniff(path)
    if stored > 0 and not check_last:
        return stored
    reader = _open_video(path, None, "cpu")
    n = len(reader)
    if n < 1:
        raise DecodeError(path, "no video frames", "empty")
    if check_last:
        try:
            reader[n - 1].asnumpy()
        except (decord.DECORDError, RuntimeError, IndexError) as exc:
            raise DecodeError(path, f"last frame {n - 1} unreadable ({_short(exc)})", "truncated") from exc
    return n


def _frame_files_or_empty(folder: str, template: str | None) -> list[Path]:
    files = frame_files(folder, template)
    if not files:
        which = f"no images named like {template!r}" if template else "no images"
        raise DecodeError(folder, f"frame folder holds {which}", "empty")
    return files


def _in_folder(folder: str, read, file: Path, *args):
    """read(file, *args), with a failure reported against the clip (the folder), naming the frame."""
    try:
        return read(file, *args)
    except DecodeError as exc:
        raise DecodeError(folder, f"frame {file.name}: {exc.reason}", exc.kind) from exc


def _check_header(file: Path) -> None:
    try:
        with Image.open(file):
            pass
    except (OSError, ValueError) as exc:
        raise DecodeError(file, f"unreadable image ({exc})") from exc


# Read little of a file to find its streams (the frame count is in the header): 2 ms a clip, not 3.5.
_QUICK_PROBE = {"probesize": "4096", "analyzeduration": "0"}


def _sniff(path: str) -> int:
    """The frame count the container stores (0 where it stores none); see _stream."""
    return _stream(path)[0]


def _stream(path: str) -> tuple[int, int, int]:
    """(stored frame count or 0, height, width) of the video stream, from the container's header,
    opened with PyAV: a file FFmpeg cannot open would make decord print an unattributed "ERROR
    opening" line from C++ (dmlc's logger, which no setting silences). A container whose streams a
    short look does not find (MPEG-TS) is looked at again in full before it counts as having no
    video."""
    try:
        for options in (_QUICK_PROBE, None):
            with av.open(path, options=options) as container:
                if container.streams.video:
                    video = container.streams.video[0]
                    return max(int(video.frames), 0), video.codec_context.height, video.codec_context.width
                streams = len(container.streams)
    except av.FFmpegError as exc:
        raise DecodeError(path, "not a readable video (invalid data or unknown format)") from exc
    if not streams:  # an MP4 cut before its index (moov), say
        raise DecodeError(path, "no streams found (a truncated or damaged file?)")
    raise DecodeError(path, "no video stream (audio-only?)", "no_video")


def _read_image(file: Path, size: tuple[int, int] | None) -> np.ndarray:
    try:
        with Image.open(file) as img:
            img = _to_rgb8(img)
            if size and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(img)
    except (OSError, ValueError) as exc:
        raise DecodeError(file, f"unreadable image ({exc})") from exc


def _to_rgb8(img: Image.Image) -> Image.Image:
    """8-bit RGB of any mode. Pillow's convert("RGB") clips 16- and 32-bit grey (I;16, I) at 255,
    so a mid-grey 16-bit PNG came out white: scale those to 8 bits instead. Palette, grey with
    alpha, RGBA and CMYK (also Adobe's inverted CMYK JPEG) convert as Pillow does."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # Pillow opens 16-bit grey PNGs as I;16 or I
        grey = np.rint(np.asarray(img, dtype=np.float64) * 255 / 65535).clip(0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if img.mode == "F":  # float images: taken as 0..1
        grey = np.rint(np.asarray(img, dtype=np.float64) * 255).clip(0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return img.convert("RGB")


def decode_clip(
    path: str | os.PathLike,
    sample: Callable[[int], np.ndarray],
    size: tuple[int, int] | None = None,
    device: str = "cpu",
    template: str | None = None,
    cover: bool = False,
) -> np.ndarray:
    """Frames `sample(num_frames)` of a clip as uint8 [T, H, W, 3], resized at decode: to
    `size`=(h, w), or with `cover` to the size with the clip's aspect that covers `size`
    (loader.geometry.covering_size; the size is read from the header first). A frame never
    exists in memory at the source's resolution outside the decoder, so a whole 4K clip costs
    what its frames at training size cost. The clip is opened once: its length comes from the
    open reader (a frame folder's listing), so no separate count is needed."""
    path = str(path)
    if os.path.isdir(path):
        files = _frame_files_or_empty(path, template)
        if cover and size:
            size = covering_size(*_in_folder(path, _image_size, files[0]), size)
        unique, inverse = _unique(sample(len(files)))
        frames = np.stack([_in_folder(path, _read_image, files[i], size) for i in unique])
    else:
        if not os.path.exists(path):
            raise DecodeError(path, "file not found", "missing")
        if cover and size:
            size = covering_size(*_stream(path)[1:], size)
        frames, inverse = _decode_video(path, sample, size, device)
    return frames[inverse]


def _image_size(file: Path) -> tuple[int, int]:
    """(height, width) of an image, from its header."""
    try:
        with Image.open(file) as img:
            return img.height, img.width
    except (OSError, ValueError) as exc:
        raise DecodeError(file, f"unreadable image ({exc})") from exc


# decord pads each row of some output widths (8, 16, 24, 32, 48, 96, ... px, native or
# resized) to an aligned pitch and reports the pitch as extra channels: single frames
# come back [H, W, 4 or 6], and get_batch fails its copy (dmlc/decord#336). Frames of
# those widths are read one by one and unpadded. Threads may add to the set
# concurrently: set.add is atomic, and a race costs one failed get_batch.
_PADDED_WIDTHS: set[int] = set()


def _decode_video(path: str, sample, size: tuple[int, int] | None, device: str):
    reader = _open_video(path, size, device)
    try:
        unique, inverse = _unique(sample(len(reader)))
        return _batch(path, reader, unique, size), inverse
    finally:
        del reader


def _batch(path: str, reader: decord.VideoReader, indices: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Frames `indices` of an open reader as uint8 [T, H, W, 3]."""
    width = size[1] if size else None
    try:
        if width not in _PADDED_WIDTHS:
            try:
                return reader.get_batch(indices.tolist()).asnumpy()
            except decord.DECORDError as exc:
                if "size must exactly match" not in str(exc):
                    raise
                _PADDED_WIDTHS.add(width)
        return np.stack([_unpad(reader[int(i)].asnumpy()) for i in indices])
    except (decord.DECORDError, RuntimeError, IndexError) as exc:
        raise DecodeError(path, _short(exc)) from exc


def frame_size(path: str | os.PathLike, template: str | None = None) -> tuple[int, int]:
    """(height, width) of a clip's frames, from the container's header or the first frame image's."""
    path = str(path)
    if os.path.isdir(path):
        return _in_folder(path, _image_size, _frame_files_or_empty(path, template)[0])
    if not os.path.exists(path):
        raise DecodeError(path, "file not found", "missing")
    return _stream(path)[1:]


def iter_frames(path: str | os.PathLike, size: tuple[int, int], template: str | None = None,
                chunk: int = 32) -> tuple[Iterator[np.ndarray], float | None]:
    """Every frame of a clip, in order, resized to `size` at decode, `chunk` frames at a time (memory
    stays flat whatever the clip's length), and its average frame rate (None for a frame folder)."""
    path = str(path)
    if os.path.isdir(path):
        files = _frame_files_or_empty(path, template)
        return (np.stack([_in_folder(path, _read_image, f, size) for f in files[i:i + chunk]])
                for i in range(0, len(files), chunk)), None
    if not os.path.exists(path):
        raise DecodeError(path, "file not found", "missing")
    reader = _open_video(path, size, "cpu")
    if len(reader) < 1:
        raise DecodeError(path, "no video frames", "empty")
    return (_batch(path, reader, np.arange(i, min(i + chunk, len(reader))), size)
            for i in range(0, len(reader), chunk)), reader.get_avg_fps()


def _unpad(frame: np.ndarray) -> np.ndarray:
    """[H, W, C] with C != 3 from a padded row pitch -> the [H, W, 3] RGB it holds."""
    if frame.shape[2] == 3:
        return frame
    height, width = frame.shape[:2]
    return np.ascontiguousarray(frame.reshape(height, -1)[:, : width * 3].reshape(height, width, 3))


def decode_frames(path: str | os.PathLike, indices, size: tuple[int, int] | None = None,
                  device: str = "cpu", template: str | None = None) -> np.ndarray:
    """Frames at fixed `indices`; an index past the clip's end is a DecodeError."""
    indices = np.asarray(indices, dtype=np.int64)

    def fixed(num_frames: int) -> np.ndarray:
        if indices.max() >= num_frames:
            raise DecodeError(path, f"frame {indices.max()} requested, clip has {num_frames}")
        return indices

    return decode_clip(path, fixed, size, device, template)


def _unique(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode each frame once even when sampling repeats it."""
    return np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)


def check_decode_device(device: str, sample_path: str | os.PathLike) -> None:
    """Fail at start, not mid-epoch, when `device` cannot decode (e.g. decord without CUDA)."""
    if device == "cpu" or os.path.isdir(sample_path):
        return
    try:
        decode_frames(sample_path, np.zeros(1, np.int64), None, device)
    except (DecodeError, ValueError) as exc:
        raise RuntimeError(
            f"decode device {device!r} is not usable: decord {decord.__version__} could not decode "
            f"{sample_path} on the GPU ({exc}); it needs decord built with CUDA/NVDEC"
        ) from exc
