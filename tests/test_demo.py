"""The demo dataset: seeded, real video files, classes told apart only by motion."""

import json

import numpy as np
import pytest

from loader.demo import DEMO_CLASSES, HARD_CLASSES, SECOND_CLASSES, make_demo_dataset, render_clip, render_second_clip


def test_render_is_seeded():
    a = render_clip("swipe_left", np.random.default_rng(5))
    b = render_clip("swipe_left", np.random.default_rng(5))
    c = render_clip("swipe_left", np.random.default_rng(6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def _blob_track(frames):
    """Centre of the pixels that change over the clip: where the blob moved."""
    moving = np.abs(frames.astype(int) - np.median(frames, axis=0)).sum(-1) > 60
    ys, xs = [], []
    for mask in moving:
        y, x = np.nonzero(mask)
        ys.append(y.mean() if len(y) else np.nan)
        xs.append(x.mean() if len(x) else np.nan)
    return np.array(xs), np.array(ys)


@pytest.mark.parametrize("label, axis, sign", [("swipe_left", 0, -1), ("swipe_right", 0, 1),
                                               ("move_up", 1, -1), ("move_down", 1, 1)])
def test_each_class_moves_its_own_way(label, axis, sign):
    for seed in range(5):
        track = _blob_track(render_clip(label, np.random.default_rng(seed)))[axis]
        track = track[~np.isnan(track)]
        assert sign * (track[-3:].mean() - track[:3].mean()) > 5


def test_stop_holds_still():
    frames = render_clip("stop", np.random.default_rng(0)).astype(int)
    assert np.abs(frames[-1] - frames[0]).mean() < 8  # only noise and sub-pixel jitter


def test_dataset_layout_and_reuse(demo_root):
    for split, per_class in (("train", 4), ("val", 2)):
        for label in DEMO_CLASSES:
            assert len(list((demo_root / split / label).glob("*.mp4"))) == per_class
    marker = json.loads((demo_root / "demo.json").read_text())
    assert marker["train"] == 4 and marker["seed"] == 0
    before = (demo_root / "train" / "stop" / "stop_000.mp4").stat().st_mtime_ns
    make_demo_dataset(demo_root, train_per_class=4, val_per_class=2, seed=0)  # complete: reused
    assert (demo_root / "train" / "stop" / "stop_000.mp4").stat().st_mtime_ns == before


def test_dataset_is_byte_identical_for_a_seed(tmp_path):
    a = make_demo_dataset(tmp_path / "a", train_per_class=1, val_per_class=1, seed=3)
    b = make_demo_dataset(tmp_path / "b", train_per_class=1, val_per_class=1, seed=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*.mp4"))
    assert len(files) == 10
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


@pytest.mark.parametrize("label, sign", [("circle_cw", 1), ("circle_ccw", -1)])
def test_the_second_sets_circles_turn_their_own_way(label, sign):
    for seed in range(5):
        frames, fps = render_second_clip(label, np.random.default_rng(seed))
        assert fps in (10, 12, 24, 30) and 16 <= len(frames) <= 64
        xs, ys = _blob_track(frames)
        seen = ~np.isnan(xs)
        angle = np.unwrap(np.arctan2(ys[seen] - np.nanmean(ys), xs[seen] - np.nanmean(xs)))
        assert sign * (angle[-1] - angle[0]) > np.pi  # most of a turn, clockwise on screen (y points down)


def test_the_benchmark_sets_hold_their_own_classes(tmp_path):
    for variant, classes in (("hard", HARD_CLASSES), ("second", SECOND_CLASSES)):
        root = make_demo_dataset(tmp_path / variant, train_per_class=1, val_per_class=1, seed=0, variant=variant)
        assert sorted(p.name for p in (root / "train").iterdir()) == sorted(classes)
        assert json.loads((root / "demo.json").read_text())["variant"] == variant
