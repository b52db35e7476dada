"""The dataset index at any size: training starts from the lists while the probe runs in the
background; restarts read the index and neither list nor probe; the index follows the lists when
nothing pins it, and a resume keeps the clips it was trained on. Through the job, in-process."""

import json
import shutil
import threading

import pytest
from jobs import Recorder, job, settings

import loader.index
import vidtrain.data

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("info_logs")]


@pytest.fixture
def data(tiny_demo, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(tiny_demo, copy)
    return copy


def index_of(out):
    return json.loads((out / "index" / "index.json").read_text())


def test_training_starts_while_the_probe_still_runs(data, tmp_path, monkeypatch):
    """The probe is held until the first training step is done: had training waited for the index,
    neither would ever finish."""
    trained, count = threading.Event(), loader.index.count_frames

    def held(path, *args):
        assert trained.wait(120), "training waited for the probe"
        return count(path, *args)

    monkeypatch.setattr(loader.index, "count_frames", held)
    out = tmp_path / "out"
    listed = {}

    def first_step(_model):
        listed.update(index_of(out))
        trained.set()

    assert job(settings(data, out, epochs=1), Recorder(**{"step 0.1": first_step}))[0] == 0
    assert listed["complete"] is False and set(listed["train"]["frames"]) == {None}  # listed, nothing probed yet
    index = index_of(out)
    assert index["complete"] is True and None not in index["train"]["frames"]  # written again when probed
    assert len(index["train"]["paths"]) + len(index["val"]["paths"]) == 15


def test_a_restart_neither_lists_nor_probes(data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert job(settings(data, out, epochs=1))[0] == 0

    def forbidden(*args, **kwargs):
        raise AssertionError("a restart listed or probed the data")

    monkeypatch.setattr(vidtrain.data, "find_videos", forbidden)
    monkeypatch.setattr(vidtrain.data, "list_clips", forbidden)
    monkeypatch.setattr(loader.index, "count_frames", forbidden)
    assert job(settings(data, out, epochs=2))[0] == 0


def test_a_kinetics_restart_does_not_walk_the_video_tree(tmp_path, tiny_demo, monkeypatch):
    """Kinetics' reader finds each clip anywhere under the root: a walk of the whole tree, done once."""
    videos, rows = tmp_path / "kinetics" / "train", ["label,youtube_id,time_start,time_end,split"]
    for k, clip in enumerate(sorted((tiny_demo / "train").rglob("*.mp4"))):
        (videos / clip.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, videos / clip.parent.name / f"id{k:03d}_000000_000010.mp4")
        rows.append(f"{clip.parent.name},id{k:03d},0,10,train")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    s = settings(None, tmp_path / "out", train_manifest=tmp_path / "train.csv", video_root=videos, epochs=1,
                 val_fraction=0.3)
    assert job(s)[0] == 0
    walked = []
    monkeypatch.setattr(type(videos), "rglob", lambda self, *a: walked.append(self) or iter(()))
    assert job(s.model_copy(update={"epochs": 2}))[0] == 0
    assert walked == []


def test_changed_lists_are_listed_again_when_no_checkpoint_holds_the_old_ones(data, tmp_path, caplog):
    out = tmp_path / "out"
    assert job(settings(data, out, epochs=1))[0] == 0
    added = data / "train" / "stop" / "added.mp4"
    shutil.copy(next((data / "train" / "stop").iterdir()), added)
    shutil.rmtree(out / "checkpoints")  # starting over in the same folder
    assert job(settings(data, out, epochs=1))[0] == 0
    assert "the dataset lists changed since the index" in caplog.text and "15 clips listed then, 16 now" in caplog.text
    assert str(added) in index_of(out)["train"]["paths"]


def test_a_checkpoint_keeps_its_clips_and_says_how_to_train_on_the_new_lists(data, tmp_path, caplog):
    out = tmp_path / "out"
    assert job(settings(data, out, epochs=1))[0] == 0
    before = index_of(out)["train"]["paths"]
    shutil.copy(next((data / "train" / "stop").iterdir()), data / "train" / "stop" / "added.mp4")
    assert job(settings(data, out, epochs=2))[0] == 0  # resumes: the lists changed, the clips it trains on not
    assert index_of(out)["train"]["paths"] == before
    assert "resumes on them" in caplog.text and f"remove {out / 'checkpoints'}" in caplog.text


def test_reindex_under_a_checkpoint_names_the_real_choices(data, tmp_path, caplog):
    out = tmp_path / "out"
    assert job(settings(data, out, epochs=1))[0] == 0
    shutil.copy(next((data / "train" / "stop").iterdir()), data / "train" / "stop" / "added.mp4")
    assert job(settings(data, out, epochs=2, reindex=True))[0] == 2
    assert "VIDTRAIN_REINDEX=1 listed the data again, and it names other clips now" in caplog.text
    assert "without VIDTRAIN_REINDEX" in caplog.text and f"or remove {out / 'checkpoints'}" in caplog.text
    assert "VIDTRAIN_DATA_DIR / VIDTRAIN_TRAIN_MANIFEST" not in caplog.text
