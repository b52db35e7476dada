"""A training copy of a clip: every frame, smaller, and cheap to seek in.

Decoding is the loader's cost and it grows with the source's pixels: 16 frames of a 1080p H.264
clip take several times as long to decode as those of a 340x256 one, and a clip's keyframes may
be seconds apart, so a seek decodes every frame since the last one. `prepare_clip` reads a clip
as training reads it (decord, or a frame folder's images in order), frame by frame at the copy's
size, and writes every frame, in order, as H.264 with a keyframe every KEYFRAME_INTERVAL frames
(a seek then decodes at most that many), at the source's frame rate. The copy is written
atomically: it exists whole or not at all.
"""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np

from loader.atomic import write_atomic
from loader.decode import frame_size, iter_frames

KEYFRAME_INTERVAL = 16  # frames: a random access decodes at most this many
FOLDER_RATE = Fraction(30)  # frames per second of a copy made from a frame folder (it has none of its own)
QUALITY = {"crf": "18", "preset": "veryfast"}  # visually lossless at training sizes, fast to write


def copy_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(h, w) of the copy: the short side at `short_side` (never enlarged), the aspect kept, both even
    (H.264's 4:2:0 chroma needs even sides)."""
    scale = min(short_side / min(height, width), 1.0)
    return max(2, round(height * scale / 2) * 2), max(2, round(width * scale / 2) * 2)


def prepare_clip(source: str | os.PathLike, target: str | os.PathLike, short_side: int,
                 template: str | None = None) -> int:
    """Write the training copy of clip `source` (a video file or a frame folder) to `target` (.mp4);
    returns its frame count, the source's. Raises loader.DecodeError for a clip that cannot be read
    (nothing is left at `target` then)."""
    size = copy_size(*frame_size(source, template), short_side)
    chunks, fps = iter_frames(source, size, template)
    rate = Fraction(fps).limit_denominator(1001) if fps else FOLDER_RATE
    written = []
    write_atomic(target, lambda tmp: written.append(_encode(str(tmp), chunks, size, rate)))
    return written[0]


def _encode(path: str, chunks, size: tuple[int, int], rate: Fraction) -> int:
    count = 0
    with av.open(path, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate, options=QUALITY | {"threads": "1"})
        stream.height, stream.width, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.codec_context.gop_size = KEYFRAME_INTERVAL
        for chunk in chunks:
            for frame in chunk:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
                count += 1
        container.mux(stream.encode())
    return count
