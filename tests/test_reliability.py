"""Careless input and unlucky faults: each gets a clear answer and nothing is lost (issue 11).

In-process where the job's return code and log say it all; faults are real (bad files, a full
filesystem, a signal) or injected through LoopEvents and a blocking decoder, never timed."""

import csv
import json
import logging
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from jobs import ROOT, Recorder, free_port, job, job_env, settings, sigterm
from PIL import Image

from loader import PrefetchGenerator, VideoSequence, find_videos, probe
from loader.demo import render_clip

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("info_logs")]
KEYS = ("loss", "accuracy", "learning_rate", "val_loss", "val_accuracy")


@pytest.fixture(scope="module")
def data(tiny_demo):
    return tiny_demo


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "out"
    assert job(settings(data, out, epochs=1))[0] == 0
    return out


def files(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# 1 -------------------------------------------------------------------------------------------
def test_evaluate_and_predict_write_their_own_reports_and_leave_training_outputs_alone(data, trained, tmp_path):
    before = files(trained)
    assert job(settings(data, trained, mode="evaluate"))[0] == 0
    clips = sorted(str(p) for p in (data / "val").rglob("*.mp4"))
    (tmp_path / "in.csv").write_text("".join(f"{p}\n" for p in clips))
    assert job(settings(data, trained, mode="predict", predict_input=tmp_path / "in.csv"))[0] == 0
    after = files(trained)
    assert {p: after[p] for p in before} == before  # report.json, history, model: untouched
    evaluation = json.loads((trained / "evaluation.json").read_text())
    assert evaluation["mode"] == "evaluate" and sum(map(sum, evaluation["confusion_matrix"])) == 5
    assert json.loads((trained / "predict_report.json").read_text())["predicted"] == 5


# 2 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["train", "val"])
def test_a_class_whose_clips_are_all_unusable_stops_the_job_naming_it(data, tmp_path, caplog, split):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    for clip in (copy / split / "stop").iterdir():
        clip.write_bytes(b"not a video")
    code, _ = job(settings(copy, tmp_path / "out"))
    assert code == 3
    kind = "training" if split == "train" else "validation"
    assert f"class 'stop' has no usable {kind} clip" in caplog.text and "not a readable video" in caplog.text


# 5 -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def frame_data(tmp_path_factory):
    """Clips as frame folders, two classes x 3; one clip has a frame whose data is truncated
    (its header reads, so only decoding finds it)."""
    root = tmp_path_factory.mktemp("frames")
    rows = []
    for c, name in enumerate(("swipe_left", "swipe_right")):
        for k in range(3):
            folder = root / f"{name}_{k}"
            folder.mkdir()
            for t, frame in enumerate(render_clip(name, np.random.default_rng(10 * c + k))[:8]):
                Image.fromarray(frame).save(folder / f"{t}.png")
            rows.append(f"{folder};{name}")
    bad = root / "swipe_left_1" / "4.png"
    bad.write_bytes(bad.read_bytes()[:200])
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("policy, code", [("fail", 3), ("skip", 0)])
def test_a_bad_frame_mid_clip_exits_3_naming_the_clip_or_is_skipped(frame_data, tmp_path, caplog, policy, code):
    s = settings(None, tmp_path / "out", train_manifest=frame_data / "m.csv", val_fraction=0.4, epochs=1,
                 on_bad_video=policy, batch_size=2, frames=8)  # every frame: the bad one too
    assert job(s)[0] == code
    clip = str(frame_data / "swipe_left_1")
    assert f"{clip}: frame 4.png" in caplog.text and "Traceback" not in caplog.text
    if policy == "skip":
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert [(s["path"], s["kind"]) for s in report["skipped"]] == [(clip, "decode_failed")]


# 6 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["data dir", "demo set"])
def test_a_cache_dir_that_cannot_be_written_costs_warnings_not_the_job(data, tmp_path, caplog, source):
    (tmp_path / "file").write_text("a file where the cache folder should be")
    unwritable = tmp_path / "file" / "cache"
    s = settings(data if source == "data dir" else None, tmp_path / "out", cache_dir=unwritable, epochs=1,
                 demo_clips_per_class=2)
    assert job(s)[0] == 0
    assert "frame cache" in caplog.text and "cannot be written" in caplog.text
    assert (tmp_path / "out" / "index" / "index.json").exists()  # the index lives on the output volume
    if source == "demo set":
        assert "cannot write the demo dataset" in caplog.text


# 7 -------------------------------------------------------------------------------------------
@pytest.fixture
def two_checkpoints(data, tmp_path):
    """An output folder stopped in epoch 2: checkpoints after epoch 1 and mid-epoch 2."""
    out = tmp_path / "out"
    assert job(settings(data, out, epochs=3), Recorder(**{"step 1.1": sigterm}))[0] == 143
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert (state["epoch"], state["step"]) == (1, 2)
    return out


@pytest.mark.parametrize("damage", ["corrupt state.json", "truncated model file"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(data, two_checkpoints, caplog, damage):
    folder = two_checkpoints / "checkpoints"
    if damage == "corrupt state.json":
        (folder / "state.json").write_text('{"epoch": 1, "st')
    else:
        model = folder / "ckpt-e0001-s000002.keras"
        model.write_bytes(model.read_bytes()[:1000])
    (folder / ".tmp-ckpt-e0001-s000003-abc.keras").write_bytes(b"left by a kill during a write")
    code, registry = job(settings(data, two_checkpoints, epochs=3))
    assert code == 0 and "resuming from" in caplog.text and "instead" in caplog.text
    if damage == "truncated model file":
        assert "ckpt-e0001-s000000.json" in caplog.text  # the state's model is damaged: the epoch-1 one
    assert not list(folder.glob(".tmp-*"))  # the stale temporary file is gone
    history = json.loads((two_checkpoints / "history.json").read_text())
    assert {k: len(v) for k, v in history.items()} == dict.fromkeys(KEYS, 3)


def test_no_usable_checkpoint_exits_2_naming_the_folder_and_how_to_start_fresh(data, two_checkpoints, caplog):
    folder = two_checkpoints / "checkpoints"
    for model in folder.glob("ckpt-*.keras"):
        model.write_bytes(b"")
    assert job(settings(data, two_checkpoints, epochs=3))[0] == 2
    assert f"no usable checkpoint in {folder}" in caplog.text and "another VIDTRAIN_OUTPUT_DIR" in caplog.text


# 8 -------------------------------------------------------------------------------------------
def test_predict_takes_bare_paths_repeats_errors_and_the_models_clip_shape(data, trained, tmp_path, caplog):
    clips = sorted(str(p) for p in (data / "val").rglob("*.mp4"))
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"junk")
    inputs = [str(bad), clips[0], str(bad), *clips[1:]]
    (tmp_path / "in.csv").write_text("path\n" + "".join(f"{p}\n" for p in inputs))  # no label column
    assert job(settings(data, trained, mode="predict", predict_input=tmp_path / "in.csv", frames=9, height=48))[0] == 0
    assert "VIDTRAIN_FRAMES=9 ignored: the model" in caplog.text
    with open(trained / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == inputs
    assert [bool(r["error"]) for r in rows] == [True, False, True] + [False] * (len(clips) - 1)
    (tmp_path / "empty.csv").write_text("path\n")
    assert job(settings(data, trained, mode="predict", predict_input=tmp_path / "empty.csv"))[0] == 3


# 9 -------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_while_checkpointing_says_which_file_and_keeps_the_last_checkpoint(data, tmp_path, small_disk,
                                                                                        caplog):
    def fill(_model):  # after epoch 1's checkpoint: leave 4 KiB free
        free = shutil.disk_usage(small_disk).free
        (small_disk / "filler").write_bytes(b"\0" * (free - 4096))

    out = small_disk / "out"
    s = settings(data, out, cache_dir=tmp_path / "cache", epochs=2)
    code, _ = job(s, Recorder(**{"step 1.1": fill}))
    assert code == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "no space left" in errors[0].message and "MiB free in" in errors[0].message
    assert "checkpoints/ckpt-e0001-s000003" in errors[0].message and "Traceback" not in caplog.text  # trained
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert (state["epoch"], state["step"]) == (1, 0)
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # no partial file
    (small_disk / "filler").unlink()
    assert job(settings(data, out, cache_dir=tmp_path / "cache", epochs=2))[0] == 0  # Kubernetes' retry


# 10 ------------------------------------------------------------------------------------------
def test_a_hung_decoder_becomes_a_skipped_clip_and_no_batch_is_lost_or_doubled(data, monkeypatch):
    import loader.sequence

    items, _ = find_videos(data / "train")
    hung, release = items[3][0], threading.Event()
    decode = loader.sequence.decode_clip

    def sometimes_hangs(path, *args):
        if path == hung:
            release.wait()  # as decord does on some files: never returns by itself
        return decode(path, *args)

    monkeypatch.setattr(loader.sequence, "decode_clip", sometimes_hangs)
    skips = []

    class Hooks:
        def count_skip(self, reason):
            skips.append(reason)

    try:
        seq = VideoSequence(items, 3, 4, (32, 32), decode_timeout=0.5, metrics=Hooks())
        with PrefetchGenerator(seq, workers=2, depth=2) as batches:
            labels = np.concatenate([y for _, y in batches])
    finally:
        release.set()
    assert len(labels) == len(items)  # every slot filled: the hung clip replaced by the first one drawn
    stand_in = items[seq.candidates(3)[1]][1]
    assert labels.tolist() == [label for _, label in items[:3]] + [stand_in] + [label for _, label in items[4:]]
    assert skips == ["timeout"] and seq.skipped[0].kind == "timeout" and seq.skipped[0].path == hung
    seq.on_epoch_end()
    assert [s.path for s in seq.failed] == [hung]  # not tried again: each try would leave a thread hanging


def test_probing_a_hung_clip_times_out_and_a_stop_ends_probing_at_once(data, monkeypatch):
    import loader.index

    items, _ = find_videos(data / "train")
    release, hanging, stop = threading.Event(), threading.Event(), threading.Event()
    count = loader.index.count_frames

    def hangs_on_the_first(path, check_last=True, template=None):
        if path == items[0][0]:
            hanging.set()
            release.wait()
        return count(path, check_last, template)

    monkeypatch.setattr(loader.index, "count_frames", hangs_on_the_first)
    try:
        usable, skipped, _ = probe(items, workers=2, progress=False, timeout=0.5)
        assert [(s.path, s.kind) for s in skipped] == [(items[0][0], "timeout")] and len(usable) == len(items) - 1

        def stop_once_hanging():  # the stop request arrives while a probe hangs
            if hanging.is_set():
                stop.set()
            return stop.is_set()

        hanging.clear()
        started = time.monotonic()
        with pytest.raises(loader.index.ProbeInterrupted):
            probe(items, workers=2, progress=False, stop_when=stop_once_hanging)
        assert time.monotonic() - started < 2 and stop.is_set()
    finally:
        release.set()


# 11 ------------------------------------------------------------------------------------------
def test_a_clip_in_both_training_and_validation_manifests_is_kept_for_training_only(data, tmp_path, caplog):
    clips = sorted((data / "train").rglob("*.mp4"))
    (tmp_path / "train.csv").write_text("".join(f"{p};{p.parent.name}\n" for p in clips))
    val = sorted((data / "val").rglob("*.mp4"))
    (tmp_path / "val.csv").write_text("".join(f"{p};{p.parent.name}\n" for p in val + clips[:1]))
    s = settings(None, tmp_path / "out", train_manifest=tmp_path / "train.csv", val_manifest=tmp_path / "val.csv",
                 epochs=1)
    assert job(s)[0] == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["dataset"]["val_clips"] == len(val) and "in both training and validation" in caplog.text


def test_an_oversized_batch_is_refused_at_start_with_the_estimate(data, tmp_path, caplog):
    s = settings(data, tmp_path / "out", frames=512, height=1024, width=1024, batch_size=256)
    assert job(s)[0] == 2
    assert "the loader would need about" in caplog.text and "GiB available" in caplog.text
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_decords_own_error_lines_do_not_reach_the_log(tmp_path, capfd):
    (tmp_path / "junk.mp4").write_bytes(b"junk")
    _, skipped, _ = probe([(str(tmp_path / "junk.mp4"), 0)], progress=False)
    assert skipped[0].reason.startswith("not a readable video")
    assert "ERROR opening" not in capfd.readouterr().err  # decord's C++ logger writes to fd 2


def test_a_stopped_epochs_progress_line_shows_where_it_stopped(data, tmp_path, capsys):
    assert job(settings(data, tmp_path / "out"), Recorder(**{"step 0.1": sigterm}), progress=True)[0] == 143
    shown = capsys.readouterr().out
    assert "2/3" in shown and "3/3" not in shown


def test_sigterm_while_setting_up_stops_within_2_seconds(tmp_path):
    """During the demo set's generation (the longest set-up phase) a stop takes effect at once."""
    env = job_env(output_dir=tmp_path / "out", cache_dir=tmp_path / "cache", demo_clips_per_class=300,
                  metrics_port=free_port())
    proc = subprocess.Popen([sys.executable, str(ROOT / "entrypoint.py")], env=env, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for line in proc.stdout:  # synchronised on the job's own log line, not on time
            if "using the built-in demo dataset" in line:
                break
        signalled = time.monotonic()
        proc.terminate()
        rest, _ = proc.communicate(timeout=30)
        took = time.monotonic() - signalled
    finally:
        proc.kill()
    assert proc.returncode == 143, rest[-2000:]
    assert took < 2, f"took {took:.1f} s"
    assert "Traceback" not in rest
