"""Frame sampling: pure arithmetic from a clip's frame count to frame indices.

Nothing here opens a file. Every function returns `frames` indices in
non-decreasing order, each in [0, num_frames - 1]; a clip shorter than the
request repeats frames instead of failing.
"""

from __future__ import annotations

import numpy as np

SAMPLING_MODES = ("uniform", "random", "stride")


def _check(num_frames: int, frames: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")


def uniform_indices(num_frames: int, frames: int) -> np.ndarray:
    """The centre frame of each of `frames` equal segments (deterministic)."""
    _check(num_frames, frames)
    centres = (np.arange(frames) + 0.5) * num_frames / frames
    return np.minimum(centres.astype(np.int64), num_frames - 1)


def random_offset_indices(num_frames: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """One random frame inside each of `frames` equal segments (TSN-style jitter)."""
    _check(num_frames, frames)
    starts = np.floor(np.arange(frames) * num_frames / frames).astype(np.int64)
    ends = np.floor(np.arange(1, frames + 1) * num_frames / frames).astype(np.int64)
    # A segment shorter than one frame (clip shorter than the request) keeps its start.
    widths = np.maximum(ends - starts, 1)
    offsets = (rng.random(frames) * widths).astype(np.int64)
    return np.minimum(starts + offsets, num_frames - 1)


def stride_indices(num_frames: int, frames: int, stride: int, start: int | None = None) -> np.ndarray:
    """Every `stride`-th frame from `start` (default: the window centred in the clip).

    A window longer than the clip is clamped at the last frame, which repeats.
    """
    _check(num_frames, frames)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    span = (frames - 1) * stride + 1
    if start is None:
        start = max((num_frames - span) // 2, 0)
    if not 0 <= start < num_frames:
        raise ValueError(f"start must be in [0, {num_frames - 1}], got {start}")
    return np.minimum(start + stride * np.arange(frames), num_frames - 1)


def sample_indices(
    mode: str, num_frames: int, frames: int, rng: np.random.Generator | None = None, stride: int = 2
) -> np.ndarray:
    """Dispatch on `mode` (one of SAMPLING_MODES); `random` needs an `rng`."""
    if mode == "uniform":
        return uniform_indices(num_frames, frames)
    if mode == "random":
        if rng is None:
            raise ValueError("random sampling needs an rng")
        return random_offset_indices(num_frames, frames, rng)
    if mode == "stride":
        return stride_indices(num_frames, frames, stride)
    raise ValueError(f"sampling mode must be one of {SAMPLING_MODES}, got {mode!r}")


def test_indices(mode: str, num_frames: int, frames: int, clip: int = 0, clips: int = 1,
                 stride: int = 2) -> np.ndarray:
    """Clip `clip` of `clips` test-time clips of a video, at the training's time scale (the
    field's practice: MMAction2's SampleFrames(test_mode=True), TSN's segment grid).

    uniform / random: the training's `frames` segments over the whole video, one frame in each,
    at offset (clip + 0.5) / clips of the segment: every clip spans the whole video, the clips
    interleave, and one clip is the plain uniform sampling. stride: `clips` windows of the
    training's span ((frames - 1) * stride + 1), their starts spread evenly over the video; one
    clip is the centred window."""
    if not 0 <= clip < clips:
        raise ValueError(f"clip must be in [0, {clips - 1}], got {clip}")
    _check(num_frames, frames)
    if mode in ("uniform", "random"):
        positions = (np.arange(frames) + (clip + 0.5) / clips) * num_frames / frames
        return np.minimum(positions.astype(np.int64), num_frames - 1)
    if mode == "stride":
        room = max(num_frames - ((frames - 1) * stride + 1), 0)
        return stride_indices(num_frames, frames, stride, (2 * clip + 1) * room // (2 * clips))
    raise ValueError(f"sampling mode must be one of {SAMPLING_MODES}, got {mode!r}")


def describe_test_clip(mode: str, frames: int, stride: int = 2) -> str:
    """How `test_indices` takes one clip of a video, in words (for a server that samples clips itself)."""
    if mode == "stride":
        return f"{frames} frames, every {stride}th, in a window centred in the video"
    return f"{frames} frames: the centre frame of each of {frames} equal segments of the video"
