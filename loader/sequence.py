"""Batch: `VideoSequence`, a Keras PyDataset from batch index to (clips, labels).

Everything a batch holds is a pure function of (seed, epoch, batch index):
clip order, sampled frames and flips. So any worker thread may build any
batch, in any order, and get the same result; `on_epoch_end` only moves the
epoch on. The prefetch module owns all threading.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Mapping, Sequence
from dataclasses import asdict

import keras
import numpy as np

from loader.decode import DecodeError, decode_clip
from loader.geometry import RESIZE_MODES, crop_origin
from loader.hooks import NullLoaderMetrics
from loader.index import Item, Skipped
from loader.prefetch import call_with_timeout
from loader.sampling import SAMPLING_MODES, sample_indices, test_indices

log = logging.getLogger("vidtrain")
ON_BAD_VIDEO = ("skip", "fail")
MAX_REPLACEMENTS = 8  # clips tried in place of one that fails at decode time
REPLACEMENT_STREAM = 1_000_003  # seeds the draw of replacements apart from a clip's sampling and views


class ClipsUnavailable(RuntimeError):
    """A clip and every clip drawn to replace it failed to decode: the storage is failing, not a file
    (transient: the job exits 1, and the restarted job resumes from its checkpoint)."""

    def __init__(self, path: str, reasons: list[str]):
        super().__init__(f"{path} and the {len(reasons) - 1} clips drawn at random to replace it all failed to "
                         f"decode (first: {reasons[0]}; last: {reasons[-1]}): the data looks unreachable")
        self.path, self.reasons = path, reasons


class VideoSequence(keras.utils.PyDataset):
    """Batch `i` -> (x uint8 [B, T, H, W, 3], y int32 [B]) over `items`.

    `len()` is batches per epoch; the last batch may be short, so each clip
    comes exactly once per epoch. With `shuffle`, the order is a permutation
    seeded by (seed, epoch). `flip_labels` turns on horizontal-flip
    augmentation and says which label each label becomes when flipped (see
    `flip_label_map`); None turns it off. `shard=(index, count)` keeps every
    count-th clip, so the shards of all workers are disjoint and cover all.
    A clip that fails to decode despite the probe is replaced by a clip drawn
    at random from the whole list (seeded by (seed, epoch, clip), so any other
    class may stand in when a whole class folder fails), left out of the rest
    of that epoch and tried again in the next (the cause may have passed; not
    a clip whose decode hung), and listed in `skipped`; with `on_bad_video="fail"` it raises DecodeError. A
    clip whose MAX_REPLACEMENTS replacements all fail too raises
    ClipsUnavailable (the storage, not a file). With `cache` (a loader.FrameCache)
    every frame of a clip is decoded once, at training size, and later epochs
    read the sampled ones from it: the batches are byte-identical to uncached
    ones (a clip the cache cannot decode whole in time, or at all, is decoded
    frame by frame as without a cache). A clip whose decode takes longer than
    `decode_timeout` seconds (a hung decoder) fails with kind "timeout" and is
    replaced like any other bad clip.
    `frame_template` names the RGB frames of frame folders (`loader.decode.frame_files`);
    `frame_counts` (path -> frames, from the dataset index) lets the cache decide whether a clip
    fits before decoding it whole; `left_out` (paths the index's probe left out, and reported) are
    tried like any clip, but their failures are neither logged nor counted again.
    `resize` (loader.geometry): "squash" resizes every frame to `size` whatever its aspect;
    "short_side" keeps the aspect, covers `size` and cuts a `size` window: at a random place in
    training (the same for every frame of a clip), centred in test mode.
    `crop` turns on random resized crops (`random_resized_crop`), the same for every frame of
    a clip. `test_mode` (validation, evaluation, prediction) takes deterministic test-time clips
    at the training's time scale (`loader.sampling.test_indices`); `clips_per_video=N` (multi-clip
    evaluation) yields N such clips of each video, and `crops=3` (three-crop evaluation,
    "short_side") three windows of each along the long side; a video's N x crops views are
    consecutive entries: entry e is view e % V of video e // V, V = views_per_video.
    """

    def __init__(self, items: Sequence[Item], batch_size: int, frames: int, size: tuple[int, int] = (112, 112),
                 shuffle: bool = False, seed: int = 0, sampling: str = "uniform", stride: int = 2,
                 flip_labels: Mapping[int, int] | None = None, on_bad_video: str = "skip", device: str = "cpu",
                 shard: tuple[int, int] = (0, 1), metrics=None, cache=None, decode_timeout: float | None = None,
                 clips_per_video: int = 1, crop: bool = False, test_mode: bool = False,
                 frame_template: str | None = None, frame_counts: Mapping[str, int] | None = None,
                 resize: str = "squash", crops: int = 1, left_out: Container[str] = (), **pydataset_kwargs):
        super().__init__(**pydataset_kwargs)
        _check_args(batch_size, frames, size, sampling, on_bad_video, shard)
        if clips_per_video < 1 or (clips_per_video > 1 and not test_mode):
            raise ValueError(f"clips_per_video must be >= 1 (> 1 only in test mode), got {clips_per_video}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        if crops not in (1, 3) or (crops == 3 and not (test_mode and resize == "short_side")):
            raise ValueError(f"crops must be 1, or 3 in test mode with resize='short_side', got {crops}")
        self.clips_per_video, self.test_mode, self.resize, self.crops = clips_per_video, test_mode, resize, crops
        self.items = list(items)[shard[0] :: shard[1]]
        if not self.items:
            raise ValueError(f"no clips to load (shard {shard[0]} of {shard[1]} of {len(items)} items)")
        self.batch_size, self.frames, self.size = batch_size, frames, tuple(size)
        self.shuffle, self.seed, self.sampling, self.stride = shuffle, seed, sampling, stride
        self.flip_labels = dict(flip_labels) if flip_labels is not None else None
        self.crop = crop
        self.on_bad_video, self.device = on_bad_video, device
        self.metrics = metrics or NullLoaderMetrics()
        self.cache, self.decode_timeout, self.frame_template = cache, decode_timeout, frame_template
        self.frame_counts, self.left_out = frame_counts or {}, left_out
        # Every failure of this run: path -> (the last epoch it failed in, why). Written by worker threads
        # (dict operations are atomic); this epoch's are left out of it (`_failed`), later epochs try again.
        self._history: dict[str, tuple[int, Skipped]] = {}
        self.set_epoch(0)

    @property
    def views_per_video(self) -> int:
        """Test views of each video: clips_per_video clips x crops windows."""
        return self.clips_per_video * self.crops

    @property
    def num_entries(self) -> int:
        """Clips per epoch: every video's views."""
        return len(self.items) * self.views_per_video

    def __len__(self) -> int:
        return -(-self.num_entries // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Jump to `epoch` (e.g. when resuming, or before a validation pass); not to be called while
        batches are being built. The clips that failed in an earlier epoch are tried again, but for
        those whose decode hung (its thread cannot be stopped: each try would leave one more)."""
        self.epoch = epoch
        self._order = self.order(epoch)
        self._failed = {path: s for path, (failed_in, s) in self._history.items()
                        if failed_in == epoch or s.kind == "timeout"}

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)

    def order(self, epoch: int) -> np.ndarray:
        """Entry indices (clips when clips_per_video is 1) in the order epoch `epoch` visits them."""
        if not self.shuffle:
            return np.arange(self.num_entries)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_entries)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range [0, {len(self)})")
        clips = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        x = np.empty((len(clips), self.frames, *self.size, 3), np.uint8)
        y = np.empty(len(clips), np.int32)
        for row, entry in enumerate(clips):
            x[row], y[row] = self._load(*divmod(int(entry), self.views_per_video))
        return x, y

    def _load(self, clip: int, view: int = 0) -> tuple[np.ndarray, int]:
        reasons = []
        for candidate in self.candidates(clip):
            path, label = self.items[candidate]
            if path in self._failed:
                continue
            # A fresh generator per attempt: a clip that fails mid-decode consumes no random numbers of
            # its replacement, so the batch is the same whether the failure is new or already known.
            rng = np.random.default_rng([self.seed, self.epoch, clip] + ([view] if view else []))
            try:
                frames = self._decode(path, self._sampler(rng, view // self.crops))
            except DecodeError as exc:
                if self.on_bad_video == "fail":
                    raise
                self._record_failure(exc)
                reasons.append(f"{exc.path}: {exc.reason}")
                continue
            if self.resize == "short_side":
                y, x = crop_origin(frames.shape[1:3], self.size, None if self.test_mode else rng, view % self.crops,
                                   self.crops)
                frames = frames[:, y:y + self.size[0], x:x + self.size[1]]
            return self._augment(frames, label, rng)
        raise ClipsUnavailable(self.items[clip][0], reasons or ["every candidate failed earlier in this epoch"])

    def candidates(self, clip: int) -> list[int]:
        """Clip `clip`, then the clips that stand in for it if it fails, in order: MAX_REPLACEMENTS
        drawn from the whole list, seeded by (seed, epoch, clip)."""
        n = len(self.items)
        if n < 2:
            return [clip]
        rng = np.random.default_rng([self.seed, self.epoch, clip, REPLACEMENT_STREAM])
        return [clip] + [int((clip + offset) % n) for offset in rng.integers(1, n, MAX_REPLACEMENTS)]

    def _decode(self, path: str, sample) -> np.ndarray:
        """Frames `sample(num_frames)` of the clip: through the cache when there is one. A clip the
        cache cannot take whole (too large, the cache full, a frame unreadable, or its whole decode
        over the time limit: a long clip is slow to decode entirely where its sampled frames are
        quick) is decoded frame by frame, as without a cache."""
        if self.cache is not None:
            try:
                every = self.cache.frames(path, self.size, lambda: self._timed_decode(path, np.arange),
                                          self.frame_template, self.frame_counts.get(path), self.resize)
            except DecodeError as exc:
                if exc.kind == "timeout":
                    self.cache.give_up(path, self.size, self.frame_template, self.resize)
                every = None
            if every is not None:
                return np.asarray(every[sample(len(every))])
        return self._timed_decode(path, sample)

    def _timed_decode(self, path: str, sample) -> np.ndarray:
        """Frames `sample(n)` at the decode size: `size` (squash), or covering it with the frame's aspect."""
        try:
            return call_with_timeout(decode_clip, self.decode_timeout, path, sample, self.size, self.device,
                                     self.frame_template, self.resize == "short_side")
        except TimeoutError:
            raise DecodeError(path, f"decoding took over {self.decode_timeout:g} s (a hung decoder?)",
                              "timeout") from None

    def _sampler(self, rng: np.random.Generator, view: int):
        if self.test_mode:
            return lambda num_frames: test_indices(self.sampling, num_frames, self.frames, view,
                                                   self.clips_per_video, self.stride)
        return lambda num_frames: sample_indices(self.sampling, num_frames, self.frames, rng, self.stride)

    def _augment(self, frames: np.ndarray, label: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        if self.flip_labels is not None and rng.random() < 0.5:
            frames, label = frames[:, :, ::-1], self.flip_labels.get(label, label)
        if self.crop:
            frames = random_resized_crop(frames, rng)
        return frames, label

    def _record_failure(self, exc: DecodeError) -> None:
        if exc.path not in self._failed:
            # The probe's kinds where the cause is the same (a frame folder the template leaves empty, a
            # file gone); anything else that fails after the probe passed is a decode failure.
            kind = exc.kind if exc.kind in ("empty", "missing", "timeout") else "decode_failed"
            skipped = Skipped(exc.path, exc.reason, kind)
            self._failed[exc.path] = skipped
            self._history[exc.path] = (self.epoch, skipped)
            if exc.path in self.left_out:
                return  # the index reported it
            self.metrics.count_skip(kind)
            log.warning("skipping %s: %s (failed while decoding; another clip takes its place, and it is tried "
                        "again next epoch)", exc.path, exc.reason)

    @property
    def skipped(self) -> list[Skipped]:
        """Every clip that failed at decode time in this run (and was replaced)."""
        return [s for _, s in self._history.values()]

    @property
    def failed(self) -> list[Skipped]:
        """The clips left out of the current epoch (or validation pass) because they failed in it."""
        return list(self._failed.values())

    def failure_records(self) -> list[dict]:
        """Every failure of the run with the last epoch it failed in, for a checkpoint."""
        return [{"epoch": epoch, **asdict(s)} for epoch, s in self._history.values()]

    def restore_failures(self, records: Sequence[dict]) -> None:
        """Take over an earlier run's `failure_records` (a resume): those of this sequence's clips are
        reported, and those of the current epoch left out from the start, as they were after they
        failed. Call before building batches."""
        mine = {path for path, _ in self.items}
        for record in records:
            epoch, skipped = failure_of(record)
            if skipped.path in mine:
                self._history[skipped.path] = (epoch, skipped)
                if (epoch == self.epoch or skipped.kind == "timeout") and skipped.path not in self._failed:
                    self._failed[skipped.path] = skipped
                    self.metrics.count_skip(skipped.kind)


def failure_of(record: dict) -> tuple[int, Skipped]:
    """(epoch, loader.Skipped) of one of `failure_records`."""
    fields = {k: v for k, v in record.items() if k != "epoch"}
    return int(record.get("epoch", -1)), Skipped(**fields)


def random_resized_crop(frames: np.ndarray, rng: np.random.Generator, scale: tuple[float, float] = (0.5, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """One random crop of `scale` of the frame's area and aspect ratio in `ratio` (log-uniform),
    the same for every frame of the clip, resized back to the frame size (bilinear): spatial
    scale jitter that keeps the motion between frames intact."""
    from PIL import Image

    _, h, w, _ = frames.shape
    area = rng.uniform(*scale)
    aspect = float(np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]))))
    ch = min(h, max(1, round(h * np.sqrt(area / aspect))))
    cw = min(w, max(1, round(w * np.sqrt(area * aspect))))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(f[y:y + ch, x:x + cw])).resize(
        (w, h), Image.Resampling.BILINEAR)) for f in frames])


def flip_label_map(class_names: Sequence[str]) -> dict[int, int]:
    """Label swaps under a horizontal flip: a class named with 'left' becomes its
    'right' twin and back; other classes keep their label. Raises when a twin is
    missing, since flipping would then teach a wrong label."""
    lookup = {name: i for i, name in enumerate(class_names)}
    swaps = {}
    for name, i in lookup.items():
        lowered = name.lower()
        if "left" not in lowered and "right" not in lowered:
            continue
        twin = _swap_words(name)
        if twin not in lookup:
            raise ValueError(f"class {name!r} has no mirrored twin {twin!r}; turn horizontal flips off")
        swaps[i] = lookup[twin]
    return swaps


def _swap_words(name: str) -> str:
    out = name
    for a, b in (("left", "right"), ("Left", "Right"), ("LEFT", "RIGHT")):
        out = out.replace(a, "\0").replace(b, a).replace("\0", b)
    return out


def _check_args(batch_size, frames, size, sampling, on_bad_video, shard) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (height, width) >= 1, got {size}")
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
    if on_bad_video not in ON_BAD_VIDEO:
        raise ValueError(f"on_bad_video must be one of {ON_BAD_VIDEO}, got {on_bad_video!r}")
    if not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard}")
