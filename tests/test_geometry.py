"""Frame geometry: squash, or the short side resized keeping the aspect and a window cut; a table of
the arithmetic, then the windows on real encoded 16:9 and 4:3 clips."""

import numpy as np
import pytest

from loader import VideoSequence
from loader.geometry import covering_size, crop_origin


@pytest.mark.parametrize("frame, out, expected", [
    ((90, 160), (64, 64), (64, 114)),  # 16:9 landscape: the short side to 64
    ((120, 160), (64, 64), (64, 85)),  # 4:3
    ((160, 90), (64, 64), (114, 64)),  # portrait (a phone)
    ((64, 64), (64, 64), (64, 64)),
    ((90, 160), (48, 128), (72, 128)),  # a wide window: the long side decides
    ((32, 40), (64, 64), (64, 80)),  # smaller than the window: scaled up
])
def test_covering_size(frame, out, expected):
    assert covering_size(*frame, out) == expected


@pytest.mark.parametrize("size, out, crop, crops, expected", [
    ((64, 114), (64, 64), 0, 1, (0, 25)),  # the centre
    ((64, 114), (64, 64), 0, 3, (0, 0)),  # three along the long side: start, centre, end
    ((64, 114), (64, 64), 1, 3, (0, 25)),
    ((64, 114), (64, 64), 2, 3, (0, 50)),
    ((114, 64), (64, 64), 2, 3, (50, 0)),  # portrait: along the height
])
def test_crop_origin(size, out, crop, crops, expected):
    assert crop_origin(size, out, crop=crop, crops=crops) == expected


def test_a_random_window_stays_inside_and_varies():
    origins = {crop_origin((64, 114), (64, 64), np.random.default_rng(seed)) for seed in range(30)}
    assert all(y == 0 and 0 <= x <= 50 for y, x in origins) and len(origins) > 10


@pytest.fixture(scope="module")
def wide_clip(tmp_path_factory):
    """A 16:9 clip whose column x holds brightness x (so a window shows where it was cut)."""
    from loader.demo import write_video

    ramp = np.linspace(16, 240, 160).astype(np.uint8)
    frames = np.broadcast_to(ramp[None, None, :, None], (8, 90, 160, 3)).copy()
    path = tmp_path_factory.mktemp("geometry") / "wide.mp4"
    write_video(path, frames, codec="libx264", pix_fmt="yuv444p")
    return str(path)


def columns(x):
    return x[0, 0, 32].mean(axis=-1)  # the middle row of the first clip's first frame


def test_short_side_keeps_the_aspect_and_cuts_the_centre_in_test_mode(wide_clip):
    squash = VideoSequence([(wide_clip, 0)], 1, 4, (64, 64), test_mode=True)[0][0]
    short = VideoSequence([(wide_clip, 0)], 1, 4, (64, 64), test_mode=True, resize="short_side")[0][0]
    assert squash.shape == short.shape == (1, 4, 64, 64, 3)
    # squashed: the whole width (16..240) in 64 columns; the centre window: 64 of 114 columns, the middle
    assert columns(squash)[0] < 25 and columns(squash)[-1] > 230
    assert 60 < columns(short)[0] < 75 and 180 < columns(short)[-1] < 195


def test_three_crops_run_along_the_long_side_and_training_windows_vary(wide_clip):
    three = VideoSequence([(wide_clip, 0)], 3, 4, (64, 64), test_mode=True, resize="short_side", crops=3)
    assert three.views_per_video == 3 and len(three) == 1
    x, y = three[0]
    starts = [columns(x[k:k + 1])[0] for k in range(3)]
    assert starts[0] < starts[1] < starts[2] and y.tolist() == [0, 0, 0]
    train = VideoSequence([(wide_clip, 0)], 1, 4, (64, 64), resize="short_side", shuffle=True, seed=0)
    firsts = set()
    for epoch in range(6):
        train.set_epoch(epoch)
        firsts.add(round(float(columns(train[0][0])[0])))
    assert len(firsts) > 2  # a new window each epoch


def test_three_crops_need_the_short_side_resize_in_test_mode(wide_clip):
    with pytest.raises(ValueError, match="crops must be 1, or 3 in test mode with resize='short_side'"):
        VideoSequence([(wide_clip, 0)], 1, 4, (64, 64), test_mode=True, crops=3)


@pytest.mark.slow
def test_the_job_evaluates_three_crops_of_every_clip(tiny_demo, tmp_path):
    import json

    from jobs import job, settings

    assert job(settings(tiny_demo, tmp_path / "out", epochs=1, resize="short_side", eval_clips=2, eval_crops=3))[0] == 0
    final = json.loads((tmp_path / "out" / "report.json").read_text())["final"]
    assert (final["eval_clips"], final["eval_crops"], final["val_videos"], final["val_clips"]) == (2, 3, 5, 30)
    meta = json.loads((tmp_path / "out" / "saved_model" / "assets" / "vidtrain.json").read_text())
    assert meta["resize"] == "short_side" and "centre" in meta["frame"]
