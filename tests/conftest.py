"""Fixtures: small real encoded videos, made here with PyAV (no mocks of decord)."""

import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as the entrypoint does: the tests train what users train

import numpy as np
import pytest

from loader.demo import make_demo_dataset, render_clip, write_video

CODECS = {  # name -> (suffix, codec, pix_fmt)
    "h264_mp4": (".mp4", "libx264", "yuv420p"),
    "mpeg4_avi": (".avi", "mpeg4", "yuv420p"),
    "vp9_webm": (".webm", "libvpx-vp9", "yuv420p"),
    "mjpeg_avi": (".avi", "mjpeg", "yuvj420p"),
}


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A small demo dataset: 5 classes, 4 train and 2 val clips each."""
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "demo", train_per_class=4, val_per_class=2, seed=0)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """The demo classes with 2 train and 1 val clip each: the in-process job tests' data."""
    return make_demo_dataset(tmp_path_factory.mktemp("tiny") / "demo", train_per_class=2, val_per_class=1, seed=0)


@pytest.fixture
def info_logs(caplog):
    """The job's INFO lines in caplog (it logs to the 'vidtrain' logger)."""
    caplog.set_level(logging.INFO, logger="vidtrain")


@pytest.fixture
def make_video(tmp_path):
    """make_video(name, frames=None, codec='h264_mp4') -> path of a real encoded clip."""

    def make(name: str, frames: np.ndarray | None = None, codec: str = "h264_mp4", seed: int = 0):
        suffix, encoder, pix_fmt = CODECS[codec]
        if frames is None:
            frames = render_clip("swipe_right", np.random.default_rng(seed))
        path = tmp_path / f"{name}{suffix}"
        write_video(path, frames, codec=encoder, pix_fmt=pix_fmt)
        return path

    return make


def gradient_frames(t: int = 12, h: int = 48, w: int = 64) -> np.ndarray:
    """Frames whose brightness encodes the frame number: frame k is mostly 10 + 20k."""
    levels = (10 + 20 * np.arange(t)).clip(0, 255).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (t, h, w, 3)).copy()


def lying_clip(path, frames: int = 12):
    """Write an MP4 whose header (moov, written first) is whole and says `frames` frames, while the
    last tenth of its data is cut: the cheap probe takes it, decoding its frames fails."""
    import av

    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=15)
        stream.height, stream.width, stream.pix_fmt = 48, 64, "yuv420p"
        for frame in gradient_frames(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) * 9 // 10])
    return whole
