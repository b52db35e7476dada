"""VideoSequence on real decoded demo clips, and its Keras / tf.data adapters."""

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from loader import PrefetchGenerator, VideoSequence, find_videos, flip_label_map, to_tf_dataset
from loader.decode import DecodeError


@pytest.fixture(scope="module")
def train_items(demo_root):
    return find_videos(demo_root / "train")


def test_batches_shape_dtype_and_each_clip_once_per_epoch(train_items):
    items, _ = train_items
    seq = VideoSequence(items, batch_size=6, frames=8, size=(40, 56), shuffle=True, seed=3)
    assert len(seq) == 4  # 20 clips: 6 + 6 + 6 + 2
    labels = np.array([label for _, label in items])
    for epoch in range(2):
        ys = []
        for i in range(len(seq)):
            x, y = seq[i]
            assert x.dtype == np.uint8 and x.shape == (len(y), 8, 40, 56, 3) and y.dtype == np.int32
            ys.append(y)
        assert np.array_equal(np.concatenate(ys), labels[seq.order(epoch)])
        assert sorted(seq.order(epoch)) == list(range(20))
        seq.on_epoch_end()


def test_order_is_deterministic_per_seed_and_epoch(train_items):
    items, _ = train_items
    a = VideoSequence(items, 4, 4, (32, 40), shuffle=True, seed=7)
    b = VideoSequence(items, 4, 4, (32, 40), shuffle=True, seed=7)
    assert np.array_equal(a.order(0), b.order(0)) and np.array_equal(a.order(5), b.order(5))
    assert not np.array_equal(a.order(0), a.order(1))
    assert not np.array_equal(a.order(0), VideoSequence(items, 4, 4, shuffle=True, seed=8).order(0))
    assert np.array_equal(VideoSequence(items, 4, 4).order(3), np.arange(20))
    # Jumping straight to an epoch (as a resumed job does) gives that epoch's batches.
    for _ in range(2):
        a.on_epoch_end()
    b.set_epoch(2)
    (xa, ya), (xb, yb) = a[1], b[1]
    assert np.array_equal(xa, xb) and np.array_equal(ya, yb)


def test_random_sampling_is_seeded_by_epoch(train_items):
    items, _ = train_items
    make = lambda: VideoSequence(items, 4, 6, (32, 40), seed=1, sampling="random")  # noqa: E731
    a, b = make(), make()
    assert np.array_equal(a[0][0], b[0][0])
    b.on_epoch_end()
    assert not np.array_equal(a[0][0], b[0][0])  # same clips, other frames


def test_flip_swaps_left_and_right_labels_only(train_items):
    items, classes = train_items
    swaps = flip_label_map(classes)
    assert {classes[k]: classes[v] for k, v in swaps.items()} == {"swipe_left": "swipe_right",
                                                                  "swipe_right": "swipe_left"}
    plain = VideoSequence(items, 20, 4, (32, 40))
    flipped = VideoSequence(items, 20, 4, (32, 40), flip_labels=swaps, seed=2)
    (x0, y0), (x1, y1) = plain[0], flipped[0]
    n_flipped = 0
    for a, la, b, lb in zip(x0, y0, x1, y1):
        if np.array_equal(a, b):
            assert la == lb
        else:
            assert np.array_equal(a[:, :, ::-1], b) and lb == swaps.get(int(la), la)
            n_flipped += 1
    assert 0 < n_flipped < 20


@pytest.mark.parametrize(
    "names, expected",
    [(["a", "b"], {}), (["Left Swipe", "Right Swipe", "Stop"], {0: 1, 1: 0}),
     (["swipe_left", "swipe_right", "up"], {0: 1, 1: 0})],
)
def test_flip_label_map(names, expected):
    assert flip_label_map(names) == expected


def test_flip_label_map_refuses_a_missing_twin():
    with pytest.raises(ValueError, match="no mirrored twin 'swipe_right'"):
        flip_label_map(["swipe_left", "stop"])


class SkipCounter:
    def __init__(self):
        self.skips = []

    def count_skip(self, reason):
        self.skips.append(reason)


def copies(items, folder):
    """The clips copied to `folder` as 0.mp4, 1.mp4, ...: files a test may break."""
    local = []
    for k, (path, label) in enumerate(items):
        shutil.copy(path, folder / f"{k}.mp4")
        local.append((str(folder / f"{k}.mp4"), label))
    return local


def test_clip_failing_at_decode_time_is_replaced_counted_and_reported(train_items, tmp_path):
    items, _ = train_items
    local = copies(items[:6], tmp_path)
    (tmp_path / "2.mp4").write_bytes(b"broken after the probe")
    metrics = SkipCounter()
    seq = VideoSequence(local, 6, 4, (32, 40), metrics=metrics)
    stand_in = seq.candidates(2)[1]
    good = VideoSequence(local[stand_in:stand_in + 1], 1, 4, (32, 40))[0]
    x, y = seq[0]
    assert np.array_equal(x[2], good[0][0]) and y[2] == local[stand_in][1]  # the first drawn stands in for 2
    assert [s.path for s in seq.skipped] == [local[2][0]] and metrics.skips == ["decode_failed"]
    seq[0]
    assert metrics.skips == ["decode_failed"]  # left out of the rest of the epoch: not tried, not counted again
    strict = VideoSequence(local, 6, 4, (32, 40), on_bad_video="fail")
    with pytest.raises(DecodeError, match="2.mp4"):
        strict[0]


def test_a_clip_the_index_left_out_is_replaced_quietly(train_items, tmp_path, caplog):
    """The probe reported it once (a Kinetics download that never came): each epoch's failed load of it
    is neither logged nor counted again."""
    items, _ = train_items
    local = copies(items[:4], tmp_path)
    (tmp_path / "2.mp4").unlink()
    metrics = SkipCounter()
    seq = VideoSequence(local, 4, 4, (32, 40), metrics=metrics, left_out={local[2][0]})
    for epoch in range(2):
        seq.set_epoch(epoch)
        seq[0]
        assert [s.path for s in seq.failed] == [local[2][0]]
    assert metrics.skips == [] and "skipping" not in caplog.text


def test_a_failed_clip_is_tried_again_next_epoch(train_items, tmp_path):
    """A flaky file server: the clip fails in epoch 0 and reads again later; epoch 1 trains on it."""
    items, _ = train_items
    local = copies(items[:4], tmp_path)
    whole = (tmp_path / "1.mp4").read_bytes()
    (tmp_path / "1.mp4").write_bytes(b"unreadable for now")
    metrics = SkipCounter()
    seq = VideoSequence(local, 4, 4, (32, 40), metrics=metrics)
    seq[0]
    assert [s.path for s in seq.failed] == [local[1][0]]
    (tmp_path / "1.mp4").write_bytes(whole)
    seq.on_epoch_end()
    assert seq.failed == [] and [s.path for s in seq.skipped] == [local[1][0]]  # reported, no longer left out
    x, y = seq[0]
    reference = VideoSequence(local[1:2], 1, 4, (32, 40))[0]
    assert np.array_equal(x[1], reference[0][0]) and metrics.skips == ["decode_failed"]


def test_a_whole_class_failing_is_replaced_from_the_other_classes(tmp_path, train_items):
    """Every clip of one class unreadable (a sub-mount that hiccups): the replacements are drawn from the
    whole list, so the batch fills from the other classes instead of exhausting the class's neighbours."""
    items, names = train_items
    local = copies(items, tmp_path)
    for path, label in local:
        if label == 0:
            Path(path).write_bytes(b"mount gone")
    metrics = SkipCounter()
    seq = VideoSequence(local, len(local), 4, (32, 40), metrics=metrics)
    _, y = seq[0]
    assert 0 not in set(y.tolist()) and len(y) == len(local)
    assert sorted(s.path for s in seq.failed) == sorted(p for p, label in local if label == 0)


def test_a_clip_whose_replacements_all_fail_is_the_storage_failing(tmp_path, train_items):
    from loader.sequence import ClipsUnavailable

    items, _ = train_items
    local = [(str(tmp_path / f"{k}.mp4"), label) for k, (_, label) in enumerate(items)]  # none exist
    seq = VideoSequence(local, 2, 4, (32, 40))
    with pytest.raises(ClipsUnavailable, match="the 8 clips drawn at random to replace it all failed"):
        seq[0]


def test_shards_are_disjoint_and_cover_everything(train_items):
    items, _ = train_items
    shards = [VideoSequence(items, 4, 2, shard=(k, 3)).items for k in range(3)]
    flat = [item for shard in shards for item in shard]
    assert sorted(flat) == sorted(items) and len(flat) == len(set(flat))


@pytest.mark.parametrize(
    "kwargs, message",
    [({"batch_size": 0}, "batch_size must be >= 1, got 0"), ({"frames": 0}, "frames must be >= 1, got 0"),
     ({"size": (0, 5)}, "size must be (height, width) >= 1"), ({"sampling": "x"}, "sampling must be one of"),
     ({"on_bad_video": "ignore"}, "on_bad_video must be one of"), ({"shard": (2, 2)}, "shard must be")],
)
def test_bad_arguments(train_items, kwargs, message):
    args = {"batch_size": 2, "frames": 2} | kwargs
    with pytest.raises(ValueError) as info:
        VideoSequence(train_items[0], **args)
    assert message in str(info.value)


def test_index_out_of_range(train_items):
    with pytest.raises(IndexError):
        VideoSequence(train_items[0], 8, 2)[3]


def test_prefetched_real_batches_equal_direct_ones(train_items):
    items, _ = train_items
    seq = VideoSequence(items, 3, 6, (32, 40), shuffle=True, seed=4, sampling="random")
    direct = [seq[i] for i in range(len(seq))]
    with PrefetchGenerator(seq, workers=4, depth=3) as gen:
        for (xd, yd), (xp, yp) in zip(direct, gen, strict=True):
            assert np.array_equal(xd, xp) and np.array_equal(yd, yp)


class SpySequence(VideoSequence):
    def __getitem__(self, index):
        self.seen.append((self.epoch, index))
        return super().__getitem__(index)


def _spy_and_model(items, classes):
    """A sequence that records every (epoch, batch) built, and a tiny compiled model for it."""
    import keras

    seq = SpySequence(items, 4, 4, (32, 40), shuffle=True, seed=0)
    seq.seen = []
    model = keras.Sequential([keras.Input((4, 32, 40, 3)), keras.layers.Rescaling(1 / 255),
                              keras.layers.GlobalAveragePooling3D(), keras.layers.Dense(len(classes))])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return seq, model


def test_keras_fit_through_tf_data_sees_each_batch_once_per_epoch(train_items):
    seq, model = _spy_and_model(*train_items)
    model.fit(to_tf_dataset(seq, workers=2, depth=2, infinite=True), steps_per_epoch=len(seq), epochs=3,
              shuffle=False, verbose=0)
    built = sorted(seq.seen)
    assert built[: 3 * len(seq)] == [(e, i) for e in range(3) for i in range(len(seq))]
    assert len(built) == len(set(built))  # never a batch twice
    assert not [t for t in threading.enumerate() if t.name.startswith("vidtrain-prefetch")]


def test_tf_dataset_signature_and_reiteration(train_items):
    items, _ = train_items
    seq = VideoSequence(items, 8, 3, (24, 40))
    ds = to_tf_dataset(seq, workers=2, depth=2)
    assert ds.element_spec[0].shape.as_list() == [None, 3, 24, 40, 3]
    for _ in range(2):  # each iteration is one full epoch with its own generator
        assert sum(int(y.shape[0]) for _, y in ds) == 20


def test_keras_fit_directly_on_the_generator_sees_each_batch_once_per_epoch(train_items):
    seq, model = _spy_and_model(*train_items)
    with PrefetchGenerator(seq, workers=2, depth=2, infinite=True) as batches:
        model.fit(iter(batches), steps_per_epoch=len(seq), epochs=3, shuffle=False, verbose=0)
    built = sorted(seq.seen)
    assert built[: 3 * len(seq)] == [(e, i) for e in range(3) for i in range(len(seq))]
    assert len(built) == len(set(built))


def test_random_resized_crop_is_one_crop_per_clip_seeded_and_off_by_default(tmp_path):
    from PIL import Image

    # a frame folder of 6 identical frames with a pattern: the same crop of each gives equal frames
    y, x = np.mgrid[0:48, 0:64]
    pattern = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    folder = tmp_path / "clip"
    folder.mkdir()
    for k in range(6):
        Image.fromarray(pattern).save(folder / f"{k}.png")
    items = [(str(folder), 0)] * 4
    plain = VideoSequence(items, batch_size=4, frames=4, size=(48, 64))[0][0]
    cropped = VideoSequence(items, batch_size=4, frames=4, size=(48, 64), crop=True)
    x1 = cropped[0][0]
    assert x1.shape == plain.shape and x1.dtype == np.uint8
    assert all((clip == clip[0]).all() for clip in x1)  # every frame of a clip: the same crop
    assert not any((clip == plain[0]).all() for clip in x1)  # ... which is not the whole frame
    assert len({clip[0].tobytes() for clip in x1}) == 4  # each clip its own crop
    assert (cropped[0][0] == x1).all()  # a pure function of (seed, epoch, index)
    cropped.on_epoch_end()
    assert not (cropped[0][0] == x1).all()  # a new epoch, new crops
    assert (VideoSequence(items, batch_size=4, frames=4, size=(48, 64), crop=False)[0][0] == plain).all()


def test_multi_clip_entries_are_test_clips_at_the_training_time_scale(tmp_path):
    from conftest import gradient_frames

    from loader.demo import write_video

    path = tmp_path / "g.mp4"
    write_video(path, gradient_frames(t=12), codec="libx264", pix_fmt="yuv420p")
    seq = VideoSequence([(str(path), 0), (str(path), 1)], batch_size=4, frames=2, size=(48, 64), clips_per_video=3,
                        sampling="random", test_mode=True)
    assert len(seq) == 2 and seq.num_entries == 6
    x, y = seq[0]
    assert y.tolist() == [0, 0, 0, 1]
    # frame k is brightness 10 + 20k; the training's 2 segments of 6 frames, at offsets 1/6, 3/6, 5/6:
    # every clip spans the video with training's spacing (6 frames), not a third of it at 3x the density
    brightness = np.round((x[:3].mean(axis=(2, 3, 4)) - 10) / 20).astype(int).tolist()
    assert brightness == [[1, 7], [3, 9], [5, 11]]
    with pytest.raises(ValueError, match="only in test mode"):
        VideoSequence([(str(path), 0)], batch_size=4, frames=2, clips_per_video=3)
