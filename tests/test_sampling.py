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


@pytest.mark.parametrize("num_frames, frames, window, windows, expected", [
    (30, 3, 0, 3, [1, 5, 8]),       # frames 0-9, uniform: centres of 3 segments of 10
    (30, 3, 1, 3, [11, 15, 18]),    # frames 10-19
    (30, 3, 2, 3, [21, 25, 28]),    # frames 20-29
    (31, 2, 1, 2, [19, 27]),        # frames 15-30 (16 frames): 15 + [4, 12]
    (2, 2, 2, 3, [1, 1]),           # shorter than the windows: window 2 is frame 1, repeated
    (30, 4, 0, 1, [3, 11, 18, 26]),  # one window: the plain uniform sampling
])
def test_window_indices(num_frames, frames, window, windows, expected):
    from loader.sampling import window_indices

    assert window_indices("uniform", num_frames, frames, window, windows).tolist() == expected
    if windows == 1:
        assert expected == uniform_indices(num_frames, frames).tolist()


def test_window_must_be_one_of_the_windows():
    from loader.sampling import window_indices

    with pytest.raises(ValueError, match=r"window must be in \[0, 2\], got 3"):
        window_indices("uniform", 30, 4, 3, 3)
