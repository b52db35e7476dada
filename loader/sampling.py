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


def window_indices(mode: str, num_frames: int, frames: int, window: int, windows: int,
                   rng: np.random.Generator | None = None, stride: int = 2) -> np.ndarray:
    """`mode` sampling inside window `window` of `windows` equal temporal windows (frames
    [w * n / W, (w + 1) * n / W)): the clips of multi-clip evaluation. One window is the whole clip."""
    if not 0 <= window < windows:
        raise ValueError(f"window must be in [0, {windows - 1}], got {window}")
    _check(num_frames, frames)
    start = window * num_frames // windows
    end = max((window + 1) * num_frames // windows, start + 1)  # a clip shorter than `windows` repeats frames
    return start + sample_indices(mode, end - start, frames, rng, stride)
