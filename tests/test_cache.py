"""FrameCache: byte-identical batches, atomic under concurrent fillers (threads and processes),
bad files re-decoded, bounded, and harmless when it cannot be written."""

import logging
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from jobs import ROOT
from PIL import Image

from loader import FrameCache, PrefetchGenerator, VideoSequence, find_videos
from loader.cache import SUFFIX, clip_key, read_frames, write_frames
from loader.demo import make_demo_dataset, render_clip

SAMPLINGS = ("uniform", "random", "stride")


class Counts:
    """CacheHooks that count, for the assertions."""

    def __init__(self):
        self.hits = self.misses = self.bytes = 0

    def count_cache(self, hit):
        if hit:
            self.hits += 1
        else:
            self.misses += 1

    def set_cache_bytes(self, total, bound):
        self.bytes = total


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = make_demo_dataset(tmp_path_factory.mktemp("cache") / "demo", 2, 1, 0)
    return find_videos(root / "train")[0]  # 10 h264 clips of 20-40 frames


@pytest.fixture(scope="module")
def frame_folders(tmp_path_factory):
    """Clips as folders of frame images (JPEG and PNG), as in the gesture-recognition datasets."""
    root, items = tmp_path_factory.mktemp("folders"), []
    for k in range(6):
        folder = root / f"clip{k}"
        folder.mkdir()
        for t, frame in enumerate(render_clip("swipe_left", np.random.default_rng(k))[:12]):
            Image.fromarray(frame).save(folder / f"{t:05d}.{'jpg' if k % 2 else 'png'}")
        items.append((str(folder), k % 2))
    return items


def epochs(seq, count=2):
    batches = []
    for epoch in range(count):
        seq.set_epoch(epoch)
        batches += [seq[i] for i in range(len(seq))]
    return batches


def assert_identical(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.dtype == xb.dtype == np.uint8 and xa.shape == xb.shape
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)


@pytest.mark.parametrize("sampling, resize", [(sampling, "squash") for sampling in SAMPLINGS]
                         + [("random", "short_side")])
@pytest.mark.parametrize("layout", ["video files", "frame folders"])
def test_batches_through_the_cache_are_byte_identical(videos, frame_folders, tmp_path, sampling, resize, layout):
    items = videos if layout == "video files" else frame_folders
    counts = Counts()
    common = dict(batch_size=4, frames=8, size=(48, 40), shuffle=True, seed=3, sampling=sampling, flip_labels={},
                  resize=resize)
    plain = epochs(VideoSequence(items, **common))
    cached = epochs(VideoSequence(items, cache=FrameCache(tmp_path, 10**9, counts), **common))
    assert_identical(plain, cached)
    assert (counts.misses, counts.hits) == (len(items), len(items))  # filled in epoch 1, read in epoch 2
    assert counts.bytes == sum(f.stat().st_size for f in tmp_path.rglob(f"*{SUFFIX}")) > 0


def test_concurrent_fillers_threads_and_processes_leave_only_complete_files(videos, tmp_path):
    """Two processes and, in each, 4 loader threads fill one cache with the same clips at once."""
    script = ("import sys; from loader import FrameCache, PrefetchGenerator, VideoSequence, find_videos\n"
              "items = find_videos(sys.argv[1])[0]\n"
              "seq = VideoSequence(items, 2, 8, (48, 40), sampling='random', cache=FrameCache(sys.argv[2], 10**9))\n"
              "with PrefetchGenerator(seq, workers=4, depth=4) as batches: print(sum(len(y) for _, y in batches))")
    from pathlib import Path

    train = str(Path(videos[0][0]).parent.parent)  # the class folders
    procs = [subprocess.Popen([sys.executable, "-c", script, train, str(tmp_path / "frames")], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    assert [out.split()[-1] for out, _ in results] == [str(len(videos))] * 2
    files = list((tmp_path / "frames").rglob("*"))
    assert not [f for f in files if f.name.startswith(".tmp-")]  # no temporary file left behind
    assert len([f for f in files if f.suffix == SUFFIX]) == len(videos)
    for path, _ in videos:  # every file is complete and holds its clip, equal to a fresh decode
        from loader.decode import decode_clip

        key = clip_key(path, (48, 40))
        stored = [read_frames(f, key) for f in files if f.suffix == SUFFIX]
        found = [s for s in stored if s is not None]
        assert len(found) == 1 and np.array_equal(found[0], decode_clip(path, np.arange, (48, 40)))


def test_many_writers_of_one_clip_at_once_leave_one_valid_file(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (30, 24, 32, 3), dtype=np.uint8)
    key = ["clip.mp4", 1, 2, 24, 32]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: write_frames(tmp_path / "x.frames", key, frames), range(32)))
    assert [p.name for p in tmp_path.iterdir()] == ["x.frames"]
    assert np.array_equal(read_frames(tmp_path / "x.frames", key), frames)


@pytest.mark.parametrize("damage", ["truncated", "overlong", "foreign key", "garbage", "empty"])
def test_a_bad_cache_file_is_decoded_again_never_returned(videos, tmp_path, damage):
    path = videos[0][0]
    counts, decoded = Counts(), []
    cache = FrameCache(tmp_path, 10**9, counts)

    def decode_all():
        from loader.decode import decode_clip

        decoded.append(1)
        return decode_clip(path, np.arange, (48, 40))

    good = np.array(cache.frames(path, (48, 40), decode_all))
    file = next(tmp_path.rglob(f"*{SUFFIX}"))
    data = file.read_bytes()
    if damage == "truncated":
        file.write_bytes(data[:-100])
    elif damage == "overlong":  # not what was written: something else wrote or appended to it
        file.write_bytes(data + b"\x00" * 100)
    elif damage == "foreign key":
        write_frames(file, clip_key(videos[1][0], (48, 40)), good)
    elif damage == "garbage":
        file.write_bytes(b"\x00" * len(data))
    else:
        file.write_bytes(b"")
    again = cache.frames(path, (48, 40), decode_all)
    assert np.array_equal(again, good) and len(decoded) == 2 and counts.misses == 2
    assert np.array_equal(read_frames(file, clip_key(path, (48, 40))), good)  # and stored whole again


def test_a_changed_clip_gets_a_new_key(videos, tmp_path):
    import shutil

    copy = tmp_path / "clip.mp4"
    shutil.copy(videos[0][0], copy)
    before = clip_key(copy, (48, 40))
    shutil.copy(videos[1][0], copy)
    assert clip_key(copy, (48, 40)) != before and clip_key(copy, (32, 40)) != clip_key(copy, (48, 40))


def test_the_cache_stops_adding_at_its_bound_and_says_so_once(videos, tmp_path, caplog, monkeypatch):
    per_clip = FrameCache(tmp_path / "probe", 10**9)
    seq = VideoSequence(videos, 2, 8, (48, 40), cache=per_clip)
    epochs(seq, 1)
    sizes = sorted(f.stat().st_size for f in (tmp_path / "probe").rglob(f"*{SUFFIX}"))
    bound = sum(sizes[:3]) + 1  # room for about three clips
    caplog.set_level(logging.INFO, logger="vidtrain")
    counts = Counts()
    monkeypatch.setattr("loader.cache.MAX_CLIP_FRACTION", 1.0)  # a small bound: let any one clip in
    cached = epochs(VideoSequence(videos, 2, 8, (48, 40), cache=FrameCache(tmp_path / "c", bound, counts)))
    assert_identical(cached, epochs(VideoSequence(videos, 2, 8, (48, 40))))
    stored = sum(f.stat().st_size for f in (tmp_path / "c").rglob(f"*{SUFFIX}"))
    assert 0 < stored <= bound and counts.bytes == stored
    assert caplog.text.count("is full") == 1


def test_a_clip_too_large_for_its_share_is_never_cached(videos, tmp_path):
    counts = Counts()
    cache = FrameCache(tmp_path, 10_000, counts)  # 5% of it is far below one clip
    seq = VideoSequence(videos[:2], 2, 8, (48, 40), cache=cache)
    assert_identical(epochs(seq, 3), epochs(VideoSequence(videos[:2], 2, 8, (48, 40)), 3))
    assert not list(tmp_path.rglob(f"*{SUFFIX}")) and counts.misses == 2  # tried once per clip, then skipped


def test_a_cache_that_cannot_be_written_warns_once_and_decoding_goes_on(videos, tmp_path, caplog):
    (tmp_path / "file").write_text("a file where the cache folder should be")
    seq = VideoSequence(videos, 2, 8, (48, 40), cache=FrameCache(tmp_path / "file" / "frames", 10**9))
    with PrefetchGenerator(seq, workers=2, depth=2) as batches:
        got = list(batches)
    assert_identical(got, [VideoSequence(videos, 2, 8, (48, 40))[i] for i in range(len(seq))])
    assert caplog.text.count("cannot be written") == 1


# -- a cache without a tax (full, too large, shared by processes) ------------------------------------
class FrameCounter:
    """Wraps loader.sequence.decode_clip: how many distinct frames were asked of the decoder in all."""

    def __init__(self, monkeypatch):
        import loader.sequence

        self.frames, decode = 0, loader.sequence.decode_clip

        def counted(indices):
            self.frames += len(np.unique(indices))
            return indices

        monkeypatch.setattr(loader.sequence, "decode_clip",
                            lambda path, sample, *args: decode(path, lambda n: counted(sample(n)), *args))


def counts_of(items):
    from loader.decode import count_frames

    return {path: count_frames(path, check_last=False) for path, _ in items}


def test_a_full_cache_decodes_only_the_sampled_frames(videos, tmp_path, monkeypatch):
    """Once the bound is reached, a clip the cache lacks costs what it costs without a cache: its
    sampled frames, not every frame decoded and thrown away."""
    counter = FrameCounter(monkeypatch)
    full = FrameCache(tmp_path / "full", 0)  # no room at all
    cached = epochs(VideoSequence(videos, 2, 8, (48, 40), cache=full, frame_counts=counts_of(videos)), 2)
    with_full_cache, counter.frames = counter.frames, 0
    assert_identical(cached, epochs(VideoSequence(videos, 2, 8, (48, 40)), 2))
    assert with_full_cache == counter.frames  # the same frames as without a cache
    assert with_full_cache <= 2 * 8 * len(videos) and not list((tmp_path / "full").rglob(f"*{SUFFIX}"))


def test_a_clip_too_large_for_its_share_is_known_before_it_is_decoded(videos, tmp_path, monkeypatch):
    counter = FrameCounter(monkeypatch)
    cache = FrameCache(tmp_path, 10_000)  # 5% of it is far below one clip
    epochs(VideoSequence(videos[:2], 2, 8, (48, 40), cache=cache, frame_counts=counts_of(videos[:2])), 1)
    assert counter.frames <= 2 * 8  # the sampled frames, never a whole clip


def test_the_bound_holds_across_processes_sharing_the_folder(videos, tmp_path):
    """Two processes with one bound fill one folder with different clips: together they stay
    within it (the room is taken under a file lock before a clip is decoded)."""
    from pathlib import Path

    sizes = []
    probe = FrameCache(tmp_path / "sizes", 10**9)
    for path, _ in videos:
        probe.frames(path, (48, 40), lambda path=path: __import__("loader.decode").decode.decode_clip(
            path, np.arange, (48, 40)))
    sizes = sorted(f.stat().st_size for f in (tmp_path / "sizes").rglob(f"*{SUFFIX}"))
    bound = sum(sizes[:4])  # room for about four of ten clips
    script = ("import sys; import loader.cache as c; c.MAX_CLIP_FRACTION = 1.0\n"
              "from loader import FrameCache, PrefetchGenerator, VideoSequence, find_videos\n"
              "items = find_videos(sys.argv[1])[0][int(sys.argv[3])::2]\n"
              "seq = VideoSequence(items, 1, 8, (48, 40), cache=FrameCache(sys.argv[2], int(sys.argv[4])))\n"
              "with PrefetchGenerator(seq, workers=2, depth=2) as batches: print(sum(len(y) for _, y in batches))")
    train = str(Path(videos[0][0]).parent.parent)
    procs = [subprocess.Popen([sys.executable, "-c", script, train, str(tmp_path / "shared"), str(k), str(bound)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    stored = sum(f.stat().st_size for f in (tmp_path / "shared").rglob(f"*{SUFFIX}"))
    assert 0 < stored <= bound
    assert int((tmp_path / "shared" / ".usage").read_text()) == stored  # the shared count is the truth


def test_opening_the_cache_removes_what_dead_writers_left_and_counts_live_writes(videos, tmp_path):
    import os
    import socket

    from loader.atomic import TEMP_PREFIX

    host = socket.gethostname().replace("-", "_").replace(".", "_")
    folder = tmp_path / "ab"
    folder.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (folder / f"{TEMP_PREFIX}{host}.{dead}.5000-x.frames").write_bytes(b"\0" * 100)  # its writer is gone
    (folder / f"{TEMP_PREFIX}{host}.{os.getpid()}.7000-y.frames").write_bytes(b"\0" * 10)  # a live writer's
    counts = Counts()
    FrameCache(tmp_path, 10**9, counts)
    assert sorted(p.name.split("-")[1].split(".")[1] for p in folder.iterdir()) == [str(os.getpid())]
    assert counts.bytes == 7000  # the room the live write took, not the bytes written so far


# -- a large source: decoded at the cache's size, within its time, or frame by frame -------------------
@pytest.fixture(scope="module")
def full_hd(tmp_path_factory):
    """One 1920x1080 H.264 clip of 24 frames: 149 MB of frames at its own resolution."""
    import av

    path = tmp_path_factory.mktemp("hd") / "hd.mp4"
    frames = np.random.default_rng(0).integers(0, 256, (24, 1080, 1920, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24, options={"preset": "ultrafast"})
        stream.height, stream.width, stream.pix_fmt = 1080, 1920, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return str(path)


@pytest.mark.parametrize("resize", ["squash", "short_side"])
def test_filling_the_cache_never_holds_a_clip_at_its_own_resolution(full_hd, tmp_path, resize):
    """A whole clip is decoded at the cache's size (the decoder scales each frame as it goes): the
    fill's peak stays far below the 149 MB the frames take at 1920x1080 (it was 9.7 GB for a 5 s
    4K clip with RESIZE=short_side)."""
    import tracemalloc

    seq = VideoSequence([(full_hd, 0)], 1, 8, (64, 64), cache=FrameCache(tmp_path, 10**9), resize=resize,
                        frame_counts={full_hd: 24})
    tracemalloc.start()
    try:
        x, _ = seq[0]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20 and x.shape == (1, 8, 64, 64, 3)
    assert len(list(tmp_path.rglob(f"*{SUFFIX}"))) == 1  # the whole clip is cached
    assert np.array_equal(x, VideoSequence([(full_hd, 0)], 1, 8, (64, 64), resize=resize)[0][0])


def test_a_whole_clip_slower_than_the_time_limit_falls_back_to_its_sampled_frames(videos, tmp_path, monkeypatch):
    """The cache's whole-clip decode runs out of time (a long clip): the sampled frames are decoded
    instead, the batch is what it is without a cache, and the clip is not decoded whole again."""
    import threading

    import loader.sequence

    decode, release, whole = loader.sequence.decode_clip, threading.Event(), []

    def slow_when_whole(path, sample, *args):
        if sample is np.arange:  # the cache asks for every frame
            whole.append(path)
            release.wait()
        return decode(path, sample, *args)

    monkeypatch.setattr(loader.sequence, "decode_clip", slow_when_whole)
    try:
        seq = VideoSequence(videos[:2], 2, 8, (48, 40), cache=FrameCache(tmp_path, 10**9), decode_timeout=0.5)
        batches = epochs(seq, 2)
    finally:
        release.set()
    assert_identical(batches, epochs(VideoSequence(videos[:2], 2, 8, (48, 40)), 2))
    assert sorted(whole) == sorted(p for p, _ in videos[:2]) and seq.skipped == []  # once each, nothing lost
