"""VIDTRAIN_MODE=prepare: a training copy of every listed clip (every frame, smaller, a keyframe every
16 frames) and the lists a training run reads; made once, resumed, bad clips reported."""

import json
import os
import shutil

import av
import numpy as np
import pytest
from conftest import gradient_frames
from jobs import job, settings
from PIL import Image

from loader.decode import decode_frames, frame_size
from loader.demo import write_video
from loader.prepare import KEYFRAME_INTERVAL, copy_size, prepare_clip


@pytest.mark.parametrize("size, short, expected", [
    ((1080, 1920), 256, (256, 456)), ((1920, 1080), 256, (456, 256)), ((240, 320), 256, (240, 320)),
    ((720, 1280), 320, (320, 568)), ((97, 131), 64, (64, 86)), ((101, 101), 256, (100, 100)),
])
def test_the_copy_keeps_the_aspect_never_enlarges_and_has_even_sides(size, short, expected):
    assert copy_size(*size, short) == expected


def test_a_copy_has_every_frame_in_order_and_a_keyframe_every_16(tmp_path):
    """40 frames at 640x360 whose brightness encodes the frame number; the copy at short side 96."""
    source, copy = tmp_path / "source.mp4", tmp_path / "copy.mp4"
    write_video(source, np.repeat(gradient_frames(40, 360, 640) // 2, 1, axis=0), codec="libx264", pix_fmt="yuv420p")
    assert prepare_clip(source, copy, 96) == 40
    assert frame_size(copy) == (96, 170)
    with av.open(str(copy)) as container:
        keyframes = [k for k, packet in enumerate(container.demux(video=0)) if packet.is_keyframe]
    assert keyframes[0] == 0 and max(np.diff(keyframes)) <= KEYFRAME_INTERVAL
    every = np.arange(40)
    original = decode_frames(source, every, (96, 170)).astype(float)
    copied = decode_frames(copy, every, (96, 170)).astype(float)
    assert np.abs(copied - original).mean() < 2  # the same frames, in the same order


def test_a_frame_folder_becomes_a_video_of_its_frames(tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    for k, frame in enumerate(gradient_frames(12, 120, 160)):
        Image.fromarray(frame).save(folder / f"{k + 1}.png")
    assert prepare_clip(folder, tmp_path / "copy.mp4", 64) == 12
    copied = decode_frames(tmp_path / "copy.mp4", np.arange(12), (64, 84)).mean(axis=(1, 2, 3))
    assert np.all(np.diff(copied) > 0)  # brighter with every frame: in order


@pytest.fixture
def data(tiny_demo, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(tiny_demo, copy)
    (copy / "train" / "stop" / "broken.mp4").write_bytes(b"not a video")
    return copy


def files(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*.mp4")}


@pytest.mark.slow
def test_prepare_copies_every_listed_clip_reports_the_bad_one_and_training_reads_the_lists(data, tmp_path):
    out, prepared = tmp_path / "out", tmp_path / "prepared"
    assert job(settings(data, out, mode="prepare", prepare_dir=prepared, prepare_short_side=32))[0] == 0
    report = json.loads((prepared / "prepare_report.json").read_text())
    assert (report["clips"], report["copied"], report["copied_before"]) == (16, 15, 0)
    assert [(s["path"], s["kind"]) for s in report["skipped"]] == [(str(data / "train/stop/broken.mp4"),
                                                                    "unreadable")]
    rows = {split: [line.split(";") for line in (prepared / f"{split}.csv").read_text().splitlines()]
            for split in ("train", "val")}
    assert (len(rows["train"]), len(rows["val"])) == (10, 5)
    assert rows["train"][0] == ["train/move_down/move_down_000.mp4", "move_down", "0"]
    assert all(min(frame_size(prepared / path)) == 32 for path, *_ in rows["train"] + rows["val"])
    before = files(prepared)
    assert job(settings(data, out, mode="prepare", prepare_dir=prepared, prepare_short_side=32))[0] == 0
    assert files(prepared) == before  # a rerun copies nothing again
    assert json.loads((prepared / "prepare_report.json").read_text())["copied_before"] == 15
    s = settings(None, tmp_path / "trained", train_manifest=prepared / "train.csv",
                 val_manifest=prepared / "val.csv", epochs=1)
    assert job(s)[0] == 0
    trained = json.loads((tmp_path / "trained" / "report.json").read_text())
    assert trained["class_names"] == ["move_down", "move_up", "stop", "swipe_left", "swipe_right"]
    assert (trained["dataset"]["train_clips"], trained["dataset"]["val_clips"]) == (10, 5)


@pytest.mark.slow
def test_a_prepare_that_failed_part_way_resumes_with_what_is_left(data, tmp_path, monkeypatch):
    """The first run cannot copy one clip (a transient fault); the second copies that clip alone."""
    import vidtrain.prepare

    flaky, copied, failed = str(data / "train" / "move_up" / "move_up_001.mp4"), [], []
    real = vidtrain.prepare.prepare_clip

    def once_failing(source, target, *args):
        copied.append(source)
        if source == flaky and not failed:
            failed.append(source)
            raise OSError("the file server hiccuped")
        return real(source, target, *args)

    monkeypatch.setattr(vidtrain.prepare, "prepare_clip", once_failing)
    prepared = tmp_path / "prepared"
    s = settings(data, tmp_path / "out", mode="prepare", prepare_dir=prepared, prepare_short_side=32)
    assert job(s)[0] == 0
    assert "move_up/move_up_001.mp4" not in (prepared / "train.csv").read_text()
    copied.clear()
    assert job(s)[0] == 0
    assert sorted(copied) == sorted([flaky, str(data / "train" / "stop" / "broken.mp4")])  # what is left
    assert "move_up/move_up_001.mp4" in (prepared / "train.csv").read_text()
    assert not [p for p in prepared.rglob("*") if p.name.startswith(".tmp-")]
    assert os.path.getsize(prepared / "train.csv") > 0
