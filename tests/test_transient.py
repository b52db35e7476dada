"""No transient fault becomes final: what changes on the data volume after indexing (a clip deleted,
a class folder that blips, the whole mount gone) is skipped and reported, or ends the job with exit 1
(retried), never with a final exit code. Through the job, in-process."""

import json
import shutil

import pytest
from jobs import job, settings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("info_logs")]


@pytest.fixture
def indexed(tiny_demo, tmp_path):
    """The tiny set with 10 training clips per class (copies under other names: a class folder holds
    more clips than a clip has replacements), indexed and trained for one epoch (its frames cached)."""
    data, out = tmp_path / "data", tmp_path / "out"
    shutil.copytree(tiny_demo, data)
    for clip in sorted((data / "train").rglob("*.mp4")):
        for k in range(4):
            shutil.copy(clip, clip.with_name(f"{clip.stem}_copy{k}{clip.suffix}"))
    assert job(settings(data, out, epochs=1))[0] == 0
    return data, out


def skipped(out):
    return sorted((s["path"], s["kind"]) for s in json.loads((out / "report.json").read_text())["skipped"])


def test_a_clip_deleted_after_indexing_is_skipped_with_the_cache_on(indexed):
    data, out = indexed
    gone = sorted((data / "train" / "stop").iterdir())[0]
    gone.unlink()
    assert job(settings(data, out, epochs=2))[0] == 0
    assert skipped(out) == [(str(gone), "missing")]


def test_a_class_folder_that_blips_is_skipped_and_tried_again(indexed, caplog):
    """Every clip of one class unreadable: other classes' clips stand in (the next clips in list order
    were the class's own, and a class of more than 9 clips ended the job with exit 3, for good)."""
    data, out = indexed
    clips = sorted((data / "train" / "stop").iterdir())
    for clip in clips:
        clip.write_bytes(b"a sub-mount that hiccups")
    assert job(settings(data, out, epochs=2, frame_cache_gb=0))[0] == 0
    assert skipped(out) == [(str(clip), "decode_failed") for clip in clips]
    assert "tried again next epoch" in caplog.text


def test_the_whole_mount_gone_exits_1_to_be_retried(indexed, caplog):
    data, out = indexed
    for clip in (data / "train").rglob("*.mp4"):
        clip.unlink()
    assert job(settings(data, out, epochs=2))[0] == 1
    assert "all failed to decode" in caplog.text and "restarts and resumes from the last checkpoint" in caplog.text


def test_a_job_that_starts_before_its_data_waits_for_it(tiny_demo, tmp_path):
    """A training pod scheduled while the data claim is still being filled (an empty /data): it waits,
    and trains once train/ appears (moved into place whole, as k8s/data's Job does)."""
    import logging
    import threading

    data = tmp_path / "data"
    data.mkdir()
    waiting, filled = threading.Event(), threading.Event()

    class Waiting(logging.Handler):
        def emit(self, record):
            if "waiting for the data" in record.getMessage():
                waiting.set()

    def fill():
        if waiting.wait(120):
            shutil.copytree(tiny_demo / "val", data / "val")
            shutil.copytree(tiny_demo / "train", data / ".incoming")
            (data / ".incoming").rename(data / "train")
            filled.set()

    handler = Waiting()
    logging.getLogger("vidtrain").addHandler(handler)
    thread = threading.Thread(target=fill)
    thread.start()
    try:
        assert job(settings(data, tmp_path / "out", epochs=1, data_wait_s=120))[0] == 0
    finally:
        waiting.set()
        thread.join()
        logging.getLogger("vidtrain").removeHandler(handler)
    assert filled.is_set() and json.loads((tmp_path / "out" / "report.json").read_text())["dataset"]["val_clips"] == 5


def test_data_that_never_comes_exits_1_to_be_retried(tmp_path, caplog):
    (tmp_path / "data").mkdir()
    assert job(settings(tmp_path / "data", tmp_path / "out", data_wait_s=0.5))[0] == 1
    assert "the data is not there after VIDTRAIN_DATA_WAIT_S=0.5 s" in caplog.text
    assert "has no train/ folder" in caplog.text
