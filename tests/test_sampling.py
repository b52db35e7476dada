import numpy as np
import pytest

from loader.sampling import random_offset_indices, sample_indices, stride_indices, uniform_indices


@pytest.mark.parametrize(
    "num_frames, frames, expected",
    [
        (30, 5, [3, 9, 15, 21, 27]),
        (10, 10, list(range(10))),
        (8, 4, [1, 3, 5, 7]),
        (1, 4, [0, 0, 0, 0]),  # a 1-frame clip repeats its frame
        (3, 6, [0, 0, 1, 1, 2, 2]),  # shorter than requested: each frame twice
        (100, 1, [50]),
    ],
)
def test_uniform(num_frames, frames, expected):
    assert uniform_indices(num_frames, frames).tolist() == expected


@pytest.mark.parametrize(
    "num_frames, frames, stride, start, expected",
    [
        (30, 4, 2, None, [11, 13, 15, 17]),  # centred window of span 7
        (30, 4, 3, 0, [0, 3, 6, 9]),
        (5, 4, 2, None, [0, 2, 4, 4]),  # window longer than the clip: the last frame repeats
        (1, 3, 5, None, [0, 0, 0]),
        (10, 3, 1, 7, [7, 8, 9]),
    ],
)
def test_stride(num_frames, frames, stride, start, expected):
    assert stride_indices(num_frames, frames, stride, start).tolist() == expected


@pytest.mark.parametrize("num_frames, frames", [(30, 8), (7, 16), (1, 4), (100, 100), (16, 3)])
def test_random_offset_stays_in_its_segments(num_frames, frames):
    for seed in range(20):
        idx = random_offset_indices(num_frames, frames, np.random.default_rng(seed))
        assert len(idx) == frames
        assert idx.min() >= 0 and idx.max() <= num_frames - 1
        assert np.all(np.diff(idx) >= 0)
        segment = np.floor(np.arange(frames) * num_frames / frames)
        assert np.all(idx >= segment)


def test_random_offset_is_seeded_and_varies():
    a = random_offset_indices(300, 8, np.random.default_rng(1))
    b = random_offset_indices(300, 8, np.random.default_rng(1))
    c = random_offset_indices(300, 8, np.random.default_rng(2))
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: uniform_indices(0, 4), "num_frames must be >= 1, got 0"),
        (lambda: uniform_indices(10, 0), "frames must be >= 1, got 0"),
        (lambda: stride_indices(10, 2, 0), "stride must be >= 1, got 0"),
        (lambda: stride_indices(10, 2, 1, 10), "start must be in [0, 9], got 10"),
        (lambda: sample_indices("bogus", 10, 2), "sampling mode must be one of"),
        (lambda: sample_indices("random", 10, 2), "random sampling needs an rng"),
    ],
)
def test_bad_arguments_name_the_value(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value)


@pytest.mark.parametrize("mode, num_frames, frames, clip, clips, expected", [
    # uniform / random: the training's segment grid (3 segments of 10), at offsets 1/6, 3/6, 5/6
    ("uniform", 30, 3, 0, 3, [1, 11, 21]),
    ("uniform", 30, 3, 1, 3, [5, 15, 25]),
    ("random", 30, 3, 2, 3, [8, 18, 28]),
    ("uniform", 30, 4, 0, 1, [3, 11, 18, 26]),  # one clip: the plain uniform sampling
    ("uniform", 2, 3, 1, 2, [0, 1, 1]),  # shorter than the request: frames repeat
    # stride 2, span 7: starts spread over the 23 frames of room, (2c + 1) * 23 // 6
    ("stride", 30, 4, 0, 3, [3, 5, 7, 9]),
    ("stride", 30, 4, 1, 3, [11, 13, 15, 17]),
    ("stride", 30, 4, 2, 3, [19, 21, 23, 25]),
    ("stride", 30, 4, 0, 1, [11, 13, 15, 17]),  # one clip: the centred window, as in training
    ("stride", 5, 4, 1, 2, [0, 2, 4, 4]),  # no room: every clip is the clamped window
])
def test_test_clips(mode, num_frames, frames, clip, clips, expected):
    from loader.sampling import test_indices

    assert test_indices(mode, num_frames, frames, clip, clips).tolist() == expected
    if clips == 1 and mode != "stride":
        assert expected == uniform_indices(num_frames, frames).tolist()


@pytest.mark.parametrize("mode", ["uniform", "random", "stride"])
@pytest.mark.parametrize("clips", [2, 3, 5])
def test_test_clips_keep_the_training_time_scale(mode, clips):
    """The frames of a test clip are as far apart as a training clip's: multi-clip evaluation
    shows the model the motion at the speed it learnt it (the clips differ in offset only)."""
    from loader.sampling import test_indices

    num_frames, frames = 120, 8
    rng = np.random.default_rng(0)
    training = np.mean([np.diff(sample_indices(mode, num_frames, frames, rng)).mean() for _ in range(50)])
    for clip in range(clips):
        spacing = np.diff(test_indices(mode, num_frames, frames, clip, clips)).mean()
        assert spacing == pytest.approx(training, abs=1.0)
    starts = [test_indices(mode, num_frames, frames, c, clips)[0] for c in range(clips)]
    assert len(set(starts)) == clips  # and each clip is another view


def test_test_clip_must_be_one_of_the_clips():
    from loader.sampling import test_indices

    with pytest.raises(ValueError, match=r"clip must be in \[0, 2\], got 3"):
        test_indices("uniform", 30, 4, 3, 3)
