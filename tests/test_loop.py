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
KEYS = ("loss", "accuracy", "learning_rate", "val_loss", "val_accuracy")


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


# -- what a resume takes from today's settings, and what it keeps --------------------------------------
def board_scalars(folder):
    """{tag: [(step, value)]} of the TensorBoard event files in `folder`."""
    import tensorflow as tf

    values = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for v in event.summary.value:
                values.setdefault(v.tag, []).append((event.step, float(tf.make_ndarray(v.tensor))))
    return values


def test_a_new_learning_rate_on_resume_is_the_rate_the_resumed_steps_train_with(data, tmp_path, reference, caplog):
    out = tmp_path / "out"
    assert job(settings(data, out), Recorder(**{"step 1.1": sigterm}))[0] == 143
    rates = []

    class Rates(Recorder):
        def after_step(self, epoch, step, model, logs):
            rates.append(float(model.optimizer.learning_rate.numpy()))

    from vidtrain.recipe import learning_rate

    before, after = settings(data, out), settings(data, out, learning_rate=1e-4)
    assert job(after, Rates())[0] == 0
    assert rates == pytest.approx([learning_rate(after, 1, step, STEPS) for step in range(2, STEPS)])  # today's
    assert "VIDTRAIN_LEARNING_RATE changed: 0.001 -> 0.0001" in caplog.text
    history, weights = outputs(out)
    expected = [learning_rate(before, 0, STEPS - 1, STEPS), learning_rate(after, 1, STEPS - 1, STEPS)]
    assert history["learning_rate"] == pytest.approx(expected) and expected[1] < 1e-4  # the cosine's end
    assert [v for _, v in board_scalars(out / "tensorboard" / "train")["learning_rate"]] == pytest.approx(expected)
    assert history["loss"][0] == pytest.approx(reference[0]["loss"][0], rel=1e-5)  # epoch 1 as before the stop
    assert not all(np.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(weights, reference[1]))  # then not


def test_more_epochs_after_the_end_begin_a_new_schedule_with_a_warm_up(data, tmp_path, caplog):
    """"Raise EPOCHS to train on": the cosine had reached about 0; the added epochs warm up again from a
    tenth of the rate and decay to 0 at the new end, where stretching the old curve jumped to 3/4 of
    the peak with no warm-up."""
    from vidtrain.recipe import WARMUP_START, learning_rate

    out, rates = tmp_path / "out", []

    class Rates(Recorder):
        def after_step(self, epoch, step, model, logs):
            rates.append(float(model.optimizer.learning_rate.numpy()))

    assert job(settings(data, out, epochs=2))[0] == 0
    more = settings(data, out, epochs=4)
    assert job(more, Rates())[0] == 0
    assert rates == pytest.approx([learning_rate(more, e, s, STEPS, start=2) for e in (2, 3) for s in range(STEPS)])
    assert rates[0] == pytest.approx(WARMUP_START * more.learning_rate, rel=1e-6)  # the warm-up's start
    assert rates[STEPS] == pytest.approx(more.learning_rate, rel=1e-6) and rates[-1] < rates[STEPS] / 2
    assert "a new one begins there" in caplog.text
    assert json.loads((out / "checkpoints" / "state.json").read_text())["schedule_start"] == 2


def test_the_best_epochs_model_is_kept_when_asked_and_across_a_resume(data, tmp_path):
    """FINAL_MODEL=best: model.keras holds the weights of the first epoch with the highest validation
    accuracy, the report says which, and a run stopped after that epoch keeps the same ones. The last
    epoch is made to predict one class for every clip (a fifth right), so it is not the best."""
    import keras

    seen = {}

    def snapshot(epoch):
        return lambda model: seen.setdefault(epoch, [np.asarray(w).copy() for w in model.weights])

    def one_class(model):
        logits = model.get_layer("logits")
        logits.kernel.assign(np.zeros(logits.kernel.shape, np.float32))
        logits.bias.assign(np.eye(logits.bias.shape[0], dtype=np.float32)[0] * 100)

    events = {f"step {e}.{STEPS}": snapshot(e + 1) for e in range(2)} | {f"step 2.{STEPS}": one_class}
    whole = tmp_path / "whole"
    assert job(settings(data, whole, epochs=3, final_model="best"), Recorder(**events))[0] == 0
    history = json.loads((whole / "history.json").read_text())["val_accuracy"]
    kept = json.loads((whole / "report.json").read_text())["final_model"]
    best = int(np.argmax(history)) + 1  # the first of the highest
    assert kept == {"kept": "best", "epoch": best, "val_accuracy": pytest.approx(history[best - 1])}
    assert history[2] == pytest.approx(0.2) and (best < 3 or max(history[:2]) < 0.2)
    weights = [np.asarray(w) for w in keras.models.load_model(whole / "model.keras").weights]
    if best < 3:
        assert all(np.array_equal(a, b) for a, b in zip(weights, seen[best], strict=True))
    resumed = settings(data, tmp_path / "resumed", epochs=3, final_model="best")
    assert job(resumed, Recorder(**{"step 2.1": sigterm}))[0] == 143
    assert job(resumed, Recorder(**{f"step 2.{STEPS}": one_class}))[0] == 0
    resumed = resumed.output_dir
    assert json.loads((resumed / "report.json").read_text())["final_model"] == kept
    again = [np.asarray(w) for w in keras.models.load_model(resumed / "model.keras").weights]
    assert all(np.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(weights, again, strict=True))


def test_the_epochs_training_is_checkpointed_before_validation(data, tmp_path):
    """A worker killed (SIGKILL, out of memory) while the chief validates loses no training: the
    checkpoint says "trained, validation pending" before the first validation batch."""
    out, seen = tmp_path / "out", []

    def look(_):
        seen.append((state(out)["epoch"], state(out)["step"], state(out)["history"]))

    assert job(settings(data, out, epochs=1), Recorder(**{"val 0.1": look}))[0] == 0
    assert seen == [(0, STEPS, {})]


def test_a_model_file_whose_record_a_kill_prevented_is_not_a_failure(data, stopped, tmp_path, caplog):
    """A kill between renaming a model file into place and writing its record: the next start
    resumes from the last complete checkpoint, or starts from scratch when there is none; never
    exit 2 (which a Job's podFailurePolicy makes final)."""
    out = tmp_path / "out"
    shutil.copytree(stopped, out)
    folder = out / "checkpoints"
    model = stopped / "checkpoints" / "ckpt-e0000-s000002.keras"  # where the stop left it
    shutil.copy(model, folder / "ckpt-e0000-s000003.keras")  # the next model, its record never written
    code, _ = job(settings(data, out))
    assert code == 0 and "resuming from" in caplog.text and "epoch 0, step 2" in caplog.text
    assert "removing" in caplog.text and "its record was never written" in caplog.text

    first = tmp_path / "first"
    (first / "checkpoints").mkdir(parents=True)
    shutil.copy(model, first / "checkpoints" / model.name)  # the very first checkpoint's model, no record at all
    caplog.clear()
    assert job(settings(data, first))[0] == 0
    assert "starting from scratch" in caplog.text and "resuming from" not in caplog.text
    assert len(json.loads((first / "history.json").read_text())["loss"]) == EPOCHS


@pytest.fixture(scope="module")
def flaky(data, tmp_path_factory):
    """The tiny set with one training clip whose header is whole and whose frames are cut: it passes
    the index's probe and fails when decoded. Returns (folder, that clip, its good bytes)."""
    from conftest import lying_clip

    from loader import VideoSequence

    root = tmp_path_factory.mktemp("flaky") / "data"
    shutil.copytree(data, root)
    clips = sorted((root / "train").rglob("*.mp4"))
    order = VideoSequence([(str(p), 0) for p in clips], 4, 2, shuffle=True, seed=0).order(0)
    clip = clips[order[8]]  # in the third batch of the first epoch (seed 0)
    good = clip.read_bytes()
    lying_clip(clip)
    return root, clip, good


def test_resume_is_exact_when_a_clip_failed_before_the_stop(flaky, tmp_path, monkeypatch):
    """A flaky file server: the clip fails once, in the batch after the stop's step (the prefetcher built
    it already), and reads again from then on. The resumed run leaves it out of the rest of that epoch
    and trains on it in the next, as the uninterrupted run does, with the same random numbers: history
    and weights end equal."""
    import threading

    from loader import VideoSequence

    root, clip, good = flaky
    broken = clip.read_bytes()
    failed = threading.Event()
    record = VideoSequence._record_failure

    def fails_once(self, exc):
        record(self, exc)
        clip.write_bytes(good)  # the file reads again from now on
        failed.set()

    monkeypatch.setattr(VideoSequence, "_record_failure", fails_once)

    def stop_once_it_failed(_):
        assert failed.wait(60)
        sigterm()

    ref, out = tmp_path / "ref", tmp_path / "out"
    try:
        assert job(settings(root, ref, sampling="random"))[0] == 0
        clip.write_bytes(broken)
        failed.clear()
        assert job(settings(root, out, sampling="random"), Recorder(**{"step 0.1": stop_once_it_failed}))[0] == 143
        assert (out / "checkpoints" / "failed-e0000-s000002-w0.json").exists()  # stopped before its batch trained
        assert job(settings(root, out, sampling="random"))[0] == 0
    finally:
        clip.write_bytes(broken)
    reference, (history, weights) = outputs(ref), outputs(out)
    for key in KEYS:
        assert history[key] == pytest.approx(reference[0][key], rel=1e-4, abs=1e-5)
    for a, b in zip(weights, reference[1], strict=True):
        assert np.allclose(a, b, rtol=1e-4, atol=1e-5)
    for folder in (ref, out):
        report = json.loads((folder / "report.json").read_text())
        assert [(s["path"], s["kind"]) for s in report["skipped"]] == [(str(clip), "decode_failed")]


def test_a_padding_step_leaves_batchnorm_statistics_alone():
    """A worker whose shard ran out takes a zero-weight step to keep the collectives in lockstep; it
    must not move BatchNorm's moving statistics with the padding clips (a real step does)."""
    import keras

    from vidtrain.train import World, _Ops, new_model

    s = settings(None, __import__("pathlib").Path("/tmp/vidtrain-pad"), model="conv3d")
    model = new_model(s, 3)
    ops = _Ops(World(__import__("tensorflow").distribute.get_strategy()), model, 3, 0.0)
    x = np.random.default_rng(0).integers(0, 255, (2, 4, 32, 32, 3), dtype=np.uint8)
    y = np.array([0, 1], np.int32)
    before = [keras.ops.convert_to_numpy(v).copy() for v in ops.statistics]
    ops.pad_step(x, y, np.float32([0, 0]))
    assert all(np.array_equal(a, keras.ops.convert_to_numpy(b)) for a, b in zip(before, ops.statistics))
    ops.step(x, y, np.ones(2, np.float32), np.float32([0, 0]))
    assert not all(np.array_equal(a, keras.ops.convert_to_numpy(b)) for a, b in zip(before, ops.statistics))


class Crash(Exception):
    """An abrupt end (out of memory, a lost node): nothing after it runs, no stop checkpoint."""


def crash(_model):
    raise Crash()


def test_checkpoints_by_time_mid_epoch_and_a_crash_resumes_exactly_from_the_last(data, tmp_path, reference):
    out = tmp_path / "out"
    with pytest.raises(Crash):  # a checkpoint is due after every step at this setting
        job(settings(data, out, checkpoint_every_s=1e-6), Recorder(**{"step 1.2": crash}))
    assert (state(out)["epoch"], state(out)["step"], state(out)["clips"]) == (1, 1, 4)  # written after step 1
    second = Recorder()
    assert job(settings(data, out, checkpoint_every_s=1e-6), second)[0] == 0
    assert [(e, s) for e, s, _, _ in second.steps] == [(1, 2), (1, 3)]  # step 2 again: it was never saved
    assert_same_run(out, reference)


def test_no_checkpoint_by_time_when_turned_off(data, tmp_path):
    out, seen = tmp_path / "out", []
    job(settings(data, out, epochs=1, checkpoint_every_s=0),
        Recorder(**{"step 0.2": lambda _: seen.append(sorted(p.name for p in (out / "checkpoints").glob("*.json")))}))
    assert seen == [[]]  # nothing mid-epoch: the first checkpoint comes at the epoch's end
