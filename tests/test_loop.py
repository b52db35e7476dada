"""The one training loop, run in-process: exact resume, stops at awkward moments, divergence,
refused resumes, and what each metric means. Faults are injected through LoopEvents, never timed."""

import json
import shutil
import time

import numpy as np
import pytest
from jobs import Recorder, job, settings, sigterm

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("info_logs")]
# 10 train clips at batch 4: 3 steps an epoch (the last of 2 clips); 5 val clips: 2 val batches.
STEPS, VAL_BATCHES, EPOCHS = 3, 2, 2
KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


@pytest.fixture(scope="module")
def data(tiny_demo):
    return tiny_demo


def outputs(out):
    import keras

    history = json.loads((out / "history.json").read_text())
    return history, [np.asarray(w) for w in keras.models.load_model(out / "model.keras").weights]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted run: its history, weights and per-step losses."""
    out = tmp_path_factory.mktemp("ref") / "out"
    events = Recorder()
    code, registry = job(settings(data, out), events)
    assert code == 0
    return (*outputs(out), events.steps, registry)


def assert_same_run(out, reference):
    history, weights = outputs(out)
    assert history.keys() == reference[0].keys()
    for key in KEYS:
        assert len(history[key]) == EPOCHS and history[key] == pytest.approx(reference[0][key], rel=1e-4, abs=1e-5)
    for a, b in zip(weights, reference[1], strict=True):
        assert np.allclose(a, b, rtol=1e-4, atol=1e-5)


def state(out) -> dict:
    return json.loads((out / "checkpoints" / "state.json").read_text())


def test_history_has_one_value_per_epoch_and_the_epoch_loss_is_the_clip_mean(reference):
    history, _, steps, _ = reference
    assert {k: len(v) for k, v in history.items()} == dict.fromkeys(KEYS, EPOCHS)
    for epoch in range(EPOCHS):
        mine = [(loss, clips) for e, _, loss, clips in steps if e == epoch]
        assert [c for _, c in mine] == [4, 4, 2]
        assert history["loss"][epoch] == pytest.approx(sum(loss * c for loss, c in mine) / 10, rel=1e-5)


def test_the_frame_cache_is_filled_in_the_first_epoch_and_read_in_the_second(reference):
    registry = reference[3]
    clips = 10 + 5  # train and val
    assert registry.get_sample_value("vidtrain_frame_cache_misses_total") == clips
    assert registry.get_sample_value("vidtrain_frame_cache_hits_total") == clips
    assert registry.get_sample_value("vidtrain_frame_cache_bytes") > 0


def test_interrupted_mid_epoch_and_resumed_equals_the_uninterrupted_run(data, tmp_path, reference):
    """Weights, optimizer, dropout's random state and the partial epoch's sums all carry over."""
    out = tmp_path / "out"
    first = Recorder(**{"step 1.1": sigterm})
    assert job(settings(data, out), first)[0] == 143
    assert (state(out)["epoch"], state(out)["step"], state(out)["clips"]) == (1, 2, 8)  # the signalled step's next
    second = Recorder()
    code, registry = job(settings(data, out), second)
    assert code == 0
    assert registry.get_sample_value("vidtrain_batches_total", {"split": "train"}) == STEPS - 2  # the rest, once
    assert_same_run(out, reference)
    # The resumed epoch's loss is the mean over all of its steps, run before and after the restart.
    epoch1 = [(loss, clips) for e, _, loss, clips in first.steps + second.steps if e == 1]
    assert len(epoch1) == STEPS
    history = json.loads((out / "history.json").read_text())
    assert history["loss"][1] == pytest.approx(sum(loss * c for loss, c in epoch1) / 10, rel=1e-5)
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_from"] == {"epoch": 1, "step": 2, "clips": 8}
    assert report["throughput"]["clips_trained"] == 2  # the interrupted epoch's last step only


@pytest.mark.parametrize("where", ["step 0.2", "val 0.1"], ids=["at the last step", "during validation"])
def test_sigterm_at_the_last_step_or_during_validation_leaves_the_epoch_open(data, tmp_path, reference, where):
    out = tmp_path / "out"
    code, registry = job(settings(data, out), Recorder(**{where: sigterm}))
    assert code == 143
    saved = state(out)
    assert (saved["epoch"], saved["step"], saved["history"]) == (0, STEPS, {})  # trained, not validated
    assert not (out / "history.json").exists() and not (out / "model.keras").exists()
    code, registry = job(settings(data, out))
    assert code == 0
    assert registry.get_sample_value("vidtrain_batches_total", {"split": "train"}) == STEPS  # epoch 1 only
    assert_same_run(out, reference)


def poison(model):
    model.trainable_variables[0].assign(np.full(model.trainable_variables[0].shape, np.nan, np.float32))


def test_a_non_finite_loss_exits_4_and_records_no_partial_epoch(data, tmp_path, caplog):
    out = tmp_path / "out"
    code, _ = job(settings(data, out), Recorder(**{"step 1.1": poison}))
    assert code == 4
    assert "training diverged" in caplog.text and "epoch 2, step 2" in caplog.text
    assert not (out / "model.keras").exists()
    assert {k: len(v) for k, v in json.loads((out / "history.json").read_text()).items()} == dict.fromkeys(KEYS, 1)
    assert (state(out)["epoch"], state(out)["step"]) == (1, 0)  # the last good checkpoint, untouched


@pytest.fixture(scope="module")
def stopped(data, tmp_path_factory):
    """An output folder whose job was stopped in its first epoch."""
    out = tmp_path_factory.mktemp("stopped") / "out"
    assert job(settings(data, out), Recorder(**{"step 0.1": sigterm}))[0] == 143
    return out


@pytest.mark.parametrize("change, variable", [
    ({"batch_size": 2}, "VIDTRAIN_BATCH_SIZE"), ({"seed": 1}, "VIDTRAIN_SEED"), ({"frames": 6}, "VIDTRAIN_FRAMES"),
    ({"height": 48}, "VIDTRAIN_HEIGHT"), ({"model": "cnn_rnn"}, "VIDTRAIN_MODEL"),
    ({"sampling": "uniform"}, "VIDTRAIN_SAMPLING"), ({"val_fraction": 0.5}, "VIDTRAIN_VAL_FRACTION"),
])
def test_resume_with_an_order_fixing_change_is_refused_naming_it(data, stopped, tmp_path, caplog, change, variable):
    if "val_fraction" in change:  # manifests without a val split: the fraction decides the training clips
        rows = [f"{p};{p.parent.name}" for p in sorted(data.rglob("*.mp4"))]  # 3 a class: 0.5 holds out 2
        (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
        out = tmp_path / "out"
        assert job(settings(None, out, train_manifest=tmp_path / "m.csv"), Recorder(**{"step 0.1": sigterm}))[0] == 143
        change = change | {"train_manifest": tmp_path / "m.csv", "data_dir": None}
    else:
        out = stopped
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _ = job(settings(data, out, **change))
    assert code == 2
    assert variable in caplog.text and "another VIDTRAIN_OUTPUT_DIR" in caplog.text
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing touched


def test_resume_with_other_classes_is_refused(data, stopped, tmp_path, caplog):
    renamed = tmp_path / "data"
    shutil.copytree(data, renamed)
    for split in ("train", "val"):
        (renamed / split / "stop").rename(renamed / split / "halt")
    assert job(settings(renamed, stopped))[0] == 2
    assert "the training classes differ" in caplog.text and "'halt'" in caplog.text


def test_a_finished_job_rerun_changes_nothing_and_more_epochs_continue(data, tmp_path, caplog):
    out = tmp_path / "out"
    assert job(settings(data, out, epochs=1))[0] == 0
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    code, registry = job(settings(data, out, epochs=1))
    assert code == 0 and "training is complete" in caplog.text
    assert registry.get_sample_value("vidtrain_batches_total", {"split": "train"}) == 0
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()} == before
    assert job(settings(data, out, epochs=2, loader_workers=2))[0] == 0
    assert "VIDTRAIN_EPOCHS changed: 1 -> 2" in caplog.text
    assert len(json.loads((out / "history.json").read_text())["loss"]) == 2


def test_each_metric_has_one_meaning(data, tmp_path, monkeypatch):
    """A slow disk (a fake: 50 ms more per clip) makes the data wait large; the step histogram must
    not contain it, and waits and batches are counted per split, train and val alike."""
    import loader.sequence

    decode = loader.sequence.decode_clip

    def slow_decode(*args, **kwargs):
        time.sleep(0.05)
        return decode(*args, **kwargs)

    monkeypatch.setattr(loader.sequence, "decode_clip", slow_decode)
    started = time.perf_counter()
    code, registry = job(settings(data, tmp_path / "out", epochs=1, prefetch_batches=1, frame_cache_gb=0))
    wall = time.perf_counter() - started
    assert code == 0

    def value(name, **labels):
        return registry.get_sample_value(name, labels)

    for split, batches in (("train", STEPS), ("val", VAL_BATCHES)):
        assert value("vidtrain_batches_total", split=split) == batches
        assert value("vidtrain_data_wait_seconds_count", split=split) == batches
    assert value("vidtrain_train_step_seconds_count") == STEPS
    assert value("vidtrain_frame_cache_misses_total") == 0 and not (tmp_path / "cache" / "frames").exists()
    waited = value("vidtrain_data_wait_seconds_sum", split="train") + value("vidtrain_data_wait_seconds_sum",
                                                                            split="val")
    assert waited > 0.3  # the slow disk was felt (15 clips x 50 ms on one loader thread)
    assert value("vidtrain_train_step_seconds_sum") + waited < wall  # disjoint: no wait inside a step
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["throughput"]["data_wait_share"] == pytest.approx(
        waited / report["throughput"]["train_seconds"], abs=0.01)
