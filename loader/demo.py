"""The built-in gesture datasets: synthetic clips, encoded as real video files.

The demo set: five classes differ only in motion over time (a hand-like blob
swipes left or right, moves up or down, or holds still), on varied cluttered
backgrounds, at varied sizes and lengths. Start positions are drawn so that any
single frame is ambiguous: a model has to use time.

The benchmark set (`variant="hard"`, `make bench-learn`) is what a camera in a
room gives instead: 16:9 and 4:3 frames, camera shake, stronger sensor noise and
flicker, background objects that move, a second object that wanders through
every clip, gestures of varied speed (a third to most of the clip) and size, and
a sixth class that moves without travelling (`wave`, a distractor for the swipes).

The second benchmark set (`variant="second"`) is made differently, to test that what was chosen on
the first holds beyond it: six other motions (circling clockwise or anticlockwise, coming closer
or going away, a diagonal slide, a quick tap towards the camera and back), a two-tone hand on
low-contrast textured backgrounds (stripes, checks, waves, blotches) under a slow change of light, frames of
phones and webcams alike (4:3, 16:9 and 9:16 portrait), clips of 16 to 64 frames at 10, 12, 24 or
30 frames per second, and fewer clips per class, as gesture datasets have.

Everything is seeded: the same seed writes the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import av
import numpy as np

DEMO_CLASSES = ("move_down", "move_up", "stop", "swipe_left", "swipe_right")
HARD_CLASSES = DEMO_CLASSES + ("wave",)
SECOND_CLASSES = ("circle_ccw", "circle_cw", "closer", "farther", "slide_diagonal", "tap")
VARIANTS = {"demo": DEMO_CLASSES, "hard": HARD_CLASSES, "second": SECOND_CLASSES}
_VERSIONS = {"demo": 1, "hard": 1, "second": 2}  # raised when a variant's clips change: a kept copy is made anew
# (dx, dy) direction of travel per class.
_DIRECTIONS = {
    "move_down": (0, 1), "move_up": (0, -1), "stop": (0, 0),
    "swipe_left": (-1, 0), "swipe_right": (1, 0), "wave": (0, 0),
}
_SIZES = ((96, 128), (96, 160), (120, 160), (112, 112), (72, 96))  # (h, w), even for yuv420p
_HARD_SIZES = ((72, 128), (90, 160), (108, 192), (96, 128), (120, 160))  # 16:9 and 4:3
_SHAKE = 3  # camera shake: up to this many pixels off centre
_MARKER = "demo.json"
# x264's macroblock-tree rate control made the same frames encode to different
# bytes from run to run here; without it the files are byte-identical per seed.
_REPRODUCIBLE_X264 = {"x264-params": "no-mbtree=1"}


def render_clip(label: str, rng: np.random.Generator) -> np.ndarray:
    """Frames uint8 [T, H, W, 3] of one clip of class `label`."""
    h, w = _SIZES[rng.integers(len(_SIZES))]
    t = int(rng.integers(20, 41))
    background = _background(h, w, rng)
    radius = rng.uniform(0.12, 0.2) * min(h, w)
    xs, ys = _trajectory(label, t, h, w, radius, rng)
    colour = np.array([rng.uniform(170, 240), rng.uniform(120, 180), rng.uniform(90, 150)])
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((xx[None] - xs[:, None, None]) ** 2 + (yy[None] - ys[:, None, None]) ** 2) <= radius**2
    frames = np.where(inside[..., None], colour, background[None])
    frames = frames + rng.normal(0, 5, frames.shape)
    return np.clip(frames, 0, 255).astype(np.uint8)


def render_hard_clip(label: str, rng: np.random.Generator) -> np.ndarray:
    """Frames uint8 [T, H, W, 3] of one benchmark-set clip of class `label` (see the module docstring)."""
    h, w = _HARD_SIZES[rng.integers(len(_HARD_SIZES))]
    t = int(rng.integers(24, 49))
    big_h, big_w = h + 2 * _SHAKE, w + 2 * _SHAKE  # drawn larger, cropped at the shaking camera's position
    background = _background(big_h, big_w, rng)
    movers = [(rng.integers(0, big_h - 8), rng.integers(0, big_w - 8), rng.integers(6, big_h // 3),
               rng.integers(6, big_w // 3), rng.uniform(-0.5, 0.5, 2), rng.uniform(0, 255, 3))
              for _ in range(int(rng.integers(1, 4)))]
    radius = rng.uniform(0.14, 0.24) * min(h, w)
    xs, ys = _trajectory(label, t, big_h, big_w, radius, rng, span=(rng.uniform(0.35, 0.8), rng.uniform(0.8, 1.0)))
    if label == "wave":
        cycles, amplitude = rng.uniform(1.5, 3.0), rng.uniform(0.08, 0.16) * w
        xs = xs + amplitude * np.sin(2 * np.pi * cycles * np.arange(t) / t + rng.uniform(0, 2 * np.pi))
    hand = np.array([rng.uniform(170, 240), rng.uniform(120, 180), rng.uniform(90, 150)])
    other = rng.uniform(0, 255, 3)
    other_r = rng.uniform(0.05, 0.09) * min(h, w)
    walk = np.cumsum(rng.normal(0, 1.0, (2, t)), axis=1)  # it wanders through the clip
    ox, oy = walk + np.array([[rng.uniform(0, big_w)], [rng.uniform(0, big_h)]])
    shake = np.clip(np.cumsum(rng.normal(0, 0.6, (t, 2)), axis=0), -_SHAKE, _SHAKE).round().astype(int)
    yy, xx = np.mgrid[0:big_h, 0:big_w]
    frames = np.empty((t, h, w, 3))
    noise = rng.uniform(4, 8)
    for k in range(t):
        canvas = background.copy()
        for y0, x0, mh, mw, (vy, vx), colour in movers:
            y, x = int(y0 + vy * k) % (big_h - mh), int(x0 + vx * k) % (big_w - mw)
            canvas[y:y + mh, x:x + mw] = colour
        canvas[(xx - ox[k]) ** 2 + (yy - oy[k]) ** 2 <= other_r ** 2] = other
        canvas[(xx - xs[k]) ** 2 + (yy - ys[k]) ** 2 <= radius ** 2] = hand
        dy, dx = shake[k] + _SHAKE
        frames[k] = canvas[dy:dy + h, dx:dx + w] * rng.uniform(0.96, 1.04)  # flicker
    frames += rng.normal(0, noise, frames.shape)
    return np.clip(frames, 0, 255).astype(np.uint8)


_SECOND_SIZES = ((96, 128), (72, 128), (128, 72), (120, 160), (90, 160))  # 4:3, 16:9, 9:16 portrait
_SECOND_RATES = (10, 12, 24, 30)


def render_second_clip(label: str, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Frames uint8 [T, H, W, 3] of one second-set clip of class `label`, and its frame rate (see the
    module docstring)."""
    h, w = _SECOND_SIZES[rng.integers(len(_SECOND_SIZES))]
    t, fps = int(rng.integers(16, 65)), int(_SECOND_RATES[rng.integers(len(_SECOND_RATES))])
    background = _texture(h, w, rng)
    side = min(h, w)
    begin = rng.uniform(0, 0.3)
    length = rng.uniform(0.4, 1.0 - begin)
    p = np.clip((np.arange(t) / max(t - 1, 1) - begin) / length, 0, 1)  # the gesture's progress, 0 to 1
    cx, cy = rng.uniform(0.35, 0.65) * w, rng.uniform(0.35, 0.65) * h
    r0 = rng.uniform(0.15, 0.22) * side
    xs, ys, rs = np.full(t, cx), np.full(t, cy), np.full(t, r0)
    if label.startswith("circle"):
        turn = (1 if label == "circle_cw" else -1) * 2 * np.pi * rng.uniform(0.8, 1.2)
        phase, orbit = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.28) * side
        xs, ys = cx + orbit * np.cos(phase + turn * p), cy + orbit * np.sin(phase + turn * p)
    elif label in ("closer", "farther"):
        grow = rng.uniform(1.6, 2.2)
        rs = r0 * (1 + (grow - 1) * (p if label == "closer" else 1 - p))
    elif label == "slide_diagonal":
        sx, sy = rng.choice([-1, 1], 2)
        reach = rng.uniform(0.2, 0.3) * side
        xs, ys = cx + sx * reach * (2 * p - 1), cy + sy * reach * (2 * p - 1)
    else:  # tap: closer and back, in a short part of the clip
        rs = r0 * (1 + rng.uniform(0.7, 1.2) * np.sin(np.pi * p) ** 2)
    jitter = rng.normal(0, 0.5, (2, t))
    xs, ys = xs + jitter[0], ys + jitter[1]
    palm, fingers = np.array([rng.uniform(150, 230), rng.uniform(100, 170), rng.uniform(80, 140)]), \
        np.array([rng.uniform(90, 160), rng.uniform(60, 120), rng.uniform(40, 100)])
    light = 1 + rng.uniform(-0.25, 0.25) * np.linspace(0, 1, t)  # a slow change of light
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.empty((t, h, w, 3))
    for k in range(t):
        canvas = background.copy()
        d2 = (xx - xs[k]) ** 2 + (yy - ys[k]) ** 2
        canvas[d2 <= rs[k] ** 2] = fingers
        canvas[d2 <= (0.6 * rs[k]) ** 2] = palm
        frames[k] = canvas * light[k]
    frames += rng.normal(0, rng.uniform(2, 6), frames.shape)
    return np.clip(frames, 0, 255).astype(np.uint8), fps


def _texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A textured background: stripes, checks, waves or soft blotches, in two colours."""
    a, b = rng.uniform(0, 255, (2, 3))
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    kind = int(rng.integers(4))
    period = rng.uniform(6, 24)
    if kind == 0:
        angle = rng.uniform(0, np.pi)
        mix = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0).astype(float)
    elif kind == 1:
        mix = ((xx // period + yy // period) % 2).astype(float)
    elif kind == 2:
        mix = 0.5 + 0.5 * np.sin(xx * 2 * np.pi / period) * np.cos(yy * 2 * np.pi / (1.7 * period))
    else:
        mix = np.zeros((h, w))
        for _ in range(int(rng.integers(4, 9))):
            y0, x0, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.1, 0.3) * min(h, w)
            mix += np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * r ** 2))
        mix = np.clip(mix, 0, 1)
    return a + (b - a) * 0.35 * mix[..., None]


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    a, b = rng.uniform(0, 255, (2, 3))
    ramp = np.linspace(0, 1, w)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, h)[:, None, None]
    bg = np.broadcast_to(a + (b - a) * ramp, (h, w, 3)).copy()
    for _ in range(int(rng.integers(2, 6))):  # static clutter
        y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
        bg[y0 : y0 + rng.integers(6, h // 2), x0 : x0 + rng.integers(6, w // 2)] = rng.uniform(0, 255, 3)
    return bg


def _trajectory(label: str, t: int, h: int, w: int, r: float, rng: np.random.Generator,
                span: tuple[float, float] | None = None):
    """Centre positions per frame; the move fills a random middle part of the clip, or the share
    `span` = (length, latest end) of it."""
    dx, dy = _DIRECTIONS[label]
    lo_x, hi_x, lo_y, hi_y = r, w - r, r, h - r
    dist = rng.uniform(0.35, 0.6) * ((hi_x - lo_x) if dx else (hi_y - lo_y))
    x0 = rng.uniform(lo_x + (dist if dx < 0 else 0), hi_x - (dist if dx > 0 else 0))
    y0 = rng.uniform(lo_y + (dist if dy < 0 else 0), hi_y - (dist if dy > 0 else 0))
    if span is None:
        begin, end = rng.uniform(0, 0.25) * t, rng.uniform(0.75, 1.0) * t
    else:
        length, latest = span
        end = rng.uniform(length, max(latest, length)) * t
        begin = end - length * t
    progress = np.clip((np.arange(t) - begin) / max(end - begin, 1), 0, 1)
    progress = 0.5 - 0.5 * np.cos(np.pi * progress)  # ease in and out
    jitter = rng.normal(0, 0.6, (2, t))
    return x0 + dx * dist * progress + jitter[0], y0 + dy * dist * progress + jitter[1]


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 15, codec: str = "libx264",
                pix_fmt: str = "yuv420p", options: dict | None = None) -> None:
    """Encode uint8 [T, H, W, 3] frames to `path` (container from the suffix)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        stream.options = options or {}
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_demo_dataset(root: str | os.PathLike, train_per_class: int = 40, val_per_class: int = 12,
                      seed: int = 0, variant: str = "demo") -> Path:
    """Write `root/{train,val}/<class>/*.mp4` once (`variant`: "demo", "hard" for the benchmark set,
    "second" for the second benchmark set); reuse it when already complete.

    Written into a temporary sibling then renamed, so a killed run never leaves
    a half-written dataset that a later run would take for complete.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {tuple(VARIANTS)}, got {variant!r}")
    root = Path(root)
    params = {"train": train_per_class, "val": val_per_class, "seed": seed, "version": _VERSIONS[variant]}
    if variant != "demo":
        params["variant"] = variant
    marker = root / _MARKER
    if marker.exists() and json.loads(marker.read_text()) == params:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    rng = np.random.default_rng(seed)
    render = {"demo": lambda label, rng: (render_clip(label, rng), 15),
              "hard": lambda label, rng: (render_hard_clip(label, rng), 15), "second": render_second_clip}[variant]
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for label in VARIANTS[variant]:
            (tmp / split / label).mkdir(parents=True)
            for k in range(per_class):
                frames, fps = render(label, rng)
                write_video(tmp / split / label / f"{label}_{k:03d}.mp4", frames, fps=fps,
                            options=_REPRODUCIBLE_X264)
    (tmp / _MARKER).write_text(json.dumps(params))
    if root.exists():
        shutil.rmtree(root)
    os.replace(tmp, root)
    return root
