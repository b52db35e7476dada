"""Frame geometry: how a frame of any aspect becomes HEIGHT x WIDTH. Pure arithmetic, no pixels.

squash: the frame is resized to HEIGHT x WIDTH whatever its aspect (a 16:9 frame into a square
is squeezed sideways).
short_side: the frame is resized, keeping its aspect, to the smallest size that covers HEIGHT x
WIDTH (MMAction2's Resize(-1, short side)), then a HEIGHT x WIDTH window is cut from it: at a
random place in training (one place for every frame of a clip), in the centre in evaluation, or
three windows along the long side (MMAction2's ThreeCrop: start, centre, end) for three-crop
evaluation.
"""

from __future__ import annotations

import numpy as np

RESIZE_MODES = ("squash", "short_side")


def covering_size(height: int, width: int, out: tuple[int, int]) -> tuple[int, int]:
    """(h, w) with the frame's aspect that covers `out` = (height, width) with the least scaling."""
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be >= 1, got {height}x{width}")
    scale = max(out[0] / height, out[1] / width)
    return max(out[0], round(height * scale)), max(out[1], round(width * scale))


def crop_origin(size: tuple[int, int], out: tuple[int, int], rng: np.random.Generator | None = None,
                crop: int = 0, crops: int = 1) -> tuple[int, int]:
    """Top-left corner of the `out` window in a frame of `size`: random with `rng`; otherwise crop
    `crop` of `crops` evenly spread along each axis with room (one crop: the centre; three: the
    start, the centre and the end of the long side)."""
    if not 0 <= crop < crops:
        raise ValueError(f"crop must be in [0, {crops - 1}], got {crop}")
    room = (size[0] - out[0], size[1] - out[1])
    if min(room) < 0:
        raise ValueError(f"a {out[0]}x{out[1]} window does not fit a {size[0]}x{size[1]} frame")
    if rng is not None:
        return int(rng.integers(0, room[0] + 1)), int(rng.integers(0, room[1] + 1))
    if crops == 1:
        return room[0] // 2, room[1] // 2
    along = int(np.argmax(room))  # the long side: the axis with the room
    place = room[along] * crop // (crops - 1)
    return (place, room[1] // 2) if along == 0 else (room[0] // 2, place)
