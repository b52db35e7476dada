"""The job end to end, as a subprocess: train, outputs, SIGTERM + resume, evaluate, predict, exit codes."""

import base64
import csv
import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from jobs import free_port, run_job, sample, scrape, start_job, wait_for

from loader.demo import make_demo_dataset

pytestmark = pytest.mark.slow

TINY = dict(frames=8, height=32, width=32, batch_size=4, demo_clips_per_class=4, loader_workers=2)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A shared cache with the tiny demo set already written (the job reuses it)."""
    folder = tmp_path_factory.mktemp("cache")
    make_demo_dataset(folder / "demo", 4, 2, 0)
    return folder


class PushReceiver(BaseHTTPRequestHandler):
    received: list = []

    def do_PUT(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        PushReceiver.received.append((self.path, self.headers.get("Authorization"), body))
        self.send_response(202)
        self.end_headers()

    do_POST = do_PUT

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory):
    """One real training run (2 epochs) with a Pushgateway receiver; its output folder."""
    out = tmp_path_factory.mktemp("out")
    server = HTTPServer(("127.0.0.1", 0), PushReceiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    result = run_job(output_dir=out, cache_dir=cache, epochs=2, metrics_port=free_port(),
                     pushgateway_url=f"http://ci:s3cret@127.0.0.1:{server.server_port}", **TINY)
    server.shutdown()
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_training_writes_every_output(trained):
    out, result = trained
    for name in ("model.keras", "history.json", "report.json", "training_curves.png", "checkpoints/state.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((out / "history.json").read_text())
    assert {k: len(v) for k, v in history.items()} == {"accuracy": 2, "learning_rate": 2, "loss": 2, "val_accuracy": 2,
                                                       "val_loss": 2}
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["train_clips"] == 20 and report["dataset"]["val_clips"] == 10
    assert report["throughput"]["clips_trained"] == 40 and report["throughput"]["train_batches"] == 10
    assert 0 <= report["throughput"]["data_wait_share"] <= 1
    confusion = report["confusion_matrix"]
    assert len(confusion) == 5 and sum(map(sum, confusion)) == 10
    assert report["final"]["val_accuracy"] == pytest.approx(sum(confusion[i][i] for i in range(5)) / 10)
    assert report["settings"]["pushgateway_url"] == "**********" and report["skipped"] == []
    assert "s3cret" not in result.stderr and "outputs in" in result.stderr


def test_final_outcome_pushed_once_with_credentials(trained):
    assert len(PushReceiver.received) == 1
    path, auth, body = PushReceiver.received[0]
    assert path == "/metrics/job/vidtrain"
    assert auth == "Basic " + base64.b64encode(b"ci:s3cret").decode()
    assert "vidtrain_last_success_timestamp_seconds" in body and "vidtrain_final_val_accuracy" in body


def test_training_starts_from_local_pretrained_weights(trained, cache, tmp_path):
    out, _ = trained
    result = run_job(output_dir=tmp_path, cache_dir=cache, epochs=1, learning_rate="1e-9",
                     pretrained_weights=out / "model.keras", metrics_port=free_port(), **TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    import keras
    import numpy as np

    # At a learning rate of 1e-9 Adam moves each weight by ~1e-9 a step: the trainable weights are
    # still the pretrained ones (a fresh initialisation would differ everywhere).
    pretrained, started = (keras.models.load_model(p / "model.keras") for p in (out, tmp_path))
    for a, b in zip(pretrained.trainable_weights, started.trainable_weights, strict=True):
        assert np.allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_pretrained_weights_of_another_class_count_carry_every_layer_but_the_head(trained, cache, tmp_path):
    """A model trained on 5 classes, fine-tuned on 3: every layer starts from it but the classifier head,
    which starts afresh, and the log says so (it was exit 2: the weights did not fit)."""
    import keras
    import numpy as np

    out, _ = trained
    manifest = _manifest(tmp_path, cache, ["stop", "swipe_left", "swipe_right"])
    result = run_job(train_manifest=manifest, output_dir=tmp_path / "out", cache_dir=cache, epochs=1,
                     learning_rate="1e-9", pretrained_weights=out / "model.keras", metrics_port=free_port(), **TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    pretrained, tuned = (keras.models.load_model(p / "model.keras") for p in (out, tmp_path / "out"))
    n = sum(1 for layer in pretrained.layers if layer.weights)
    assert f"carried {n - 1} of {n} layers with weights; not carried: logits (5 classes there, 3 here)" in result.stderr
    for a, b in zip(pretrained.layers, tuned.layers, strict=True):
        if a.name != "logits":
            assert all(np.allclose(np.asarray(x), np.asarray(y), atol=1e-6)  # BatchNorm's statistics move
                       for x, y in zip(a.trainable_weights, b.trainable_weights))
    assert tuned.get_layer("logits").kernel.shape[-1] == 3


def test_pretrained_weights_of_other_classes_of_the_same_count_leave_the_head_afresh(trained, cache, tmp_path):
    """Five other classes (classes.json beside the model names them): the head's outputs would mean other
    classes, so it starts afresh; the rest is carried."""
    import keras
    import numpy as np

    out, _ = trained
    manifest = _manifest(tmp_path, cache, json.loads((out / "classes.json").read_text()))
    manifest.write_text("".join(f"{line}_renamed\n" for line in manifest.read_text().split()))
    result = run_job(train_manifest=manifest, output_dir=tmp_path / "out", cache_dir=cache, epochs=1,
                     learning_rate="1e-9", pretrained_weights=out / "model.keras", metrics_port=free_port(), **TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    n = sum(1 for layer in keras.models.load_model(out / "model.keras").layers if layer.weights)
    assert f"carried {n - 1} of {n} layers with weights; not carried: logits (other classes there" in result.stderr
    pretrained, tuned = (keras.models.load_model(p / "model.keras") for p in (out, tmp_path / "out"))
    assert not np.allclose(pretrained.get_layer("logits").kernel, tuned.get_layer("logits").kernel, atol=1e-3)
    first = next(layer.name for layer in pretrained.layers if layer.weights)
    assert np.allclose(pretrained.get_layer(first).weights[0], tuned.get_layer(first).weights[0], atol=1e-6)


def test_evaluate_mode_scores_the_saved_model(trained, cache):
    out, _ = trained
    result = run_job(output_dir=out, cache_dir=cache, mode="evaluate", metrics_port=free_port(), **TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "evaluation.json").read_text())
    assert report["mode"] == "evaluate" and sum(map(sum, report["confusion_matrix"])) == 10
    assert json.loads((out / "report.json").read_text())["mode"] == "train"


def test_predict_keeps_input_order_and_reports_bad_clips(trained, cache, tmp_path):
    out, _ = trained
    clips = sorted((cache / "demo" / "val").rglob("*.mp4"), reverse=True)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    inputs = [str(p) for p in clips[:4]] + [str(bad)] + [str(p) for p in clips[4:]]
    (tmp_path / "in.csv").write_text("".join(f"{p};unknown\n" for p in inputs))
    result = run_job(output_dir=out, cache_dir=cache, mode="predict", predict_input=tmp_path / "in.csv",
                     metrics_port=free_port(), **TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == inputs
    classes = json.loads((out / "classes.json").read_text())
    for row in rows:
        if row["path"] == str(bad):
            assert row["error"] and not row["predicted"]
        else:
            assert row["predicted"] in classes and not row["error"]
            assert sum(float(row[f"p_{c}"]) for c in classes) == pytest.approx(1, abs=1e-3)


def test_sigterm_mid_epoch_checkpoints_exits_143_and_resume_trains_each_batch_once(cache, tmp_path):
    """10 batches an epoch; stop in epoch 2, resume, and count every batch trained across both runs."""
    port, epochs = free_port(), 3
    settings = dict(output_dir=tmp_path, cache_dir=cache, epochs=epochs, **(TINY | dict(
        batch_size=2, frames=16, height=64, width=64)))
    job = start_job(metrics_port=port, **settings)
    try:
        assert wait_for(lambda: (sample(scrape(port) or "", "vidtrain_batches_total", split="train") or 0) >= 13,
                        timeout=120, interval=0.05), "training did not reach epoch 2"
        job.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        output, _ = job.communicate(timeout=60)
    finally:
        job.kill()
    assert job.returncode == 143, output[-3000:]
    assert time.monotonic() - signalled < 15
    state = json.loads((tmp_path / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 1 and 0 < state["step"] < 10, state  # stopped mid-epoch
    assert len(state["history"]["loss"]) == 1 and (tmp_path / "checkpoints" / state["model"]).exists()
    assert not (tmp_path / "model.keras").exists()

    result = run_job(metrics_port=free_port(), **settings)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    done_before = state["epoch"] * 10 + state["step"]
    assert report["resumed_from"] == {"epoch": state["epoch"], "step": state["step"], "clips": 2 * state["step"]}
    assert report["throughput"]["train_batches"] == epochs * 10 - done_before  # the rest, each once
    assert len(json.loads((tmp_path / "history.json").read_text())["loss"]) == epochs


def test_sigint_exits_130(cache, tmp_path):
    port = free_port()
    job = start_job(metrics_port=port, output_dir=tmp_path, cache_dir=cache, epochs=50, **TINY)
    try:
        assert wait_for(lambda: (sample(scrape(port) or "", "vidtrain_batches_total", split="train") or 0) >= 2,
                        timeout=120, interval=0.05)
        job.send_signal(signal.SIGINT)
        output, _ = job.communicate(timeout=60)
    finally:
        job.kill()
    assert job.returncode == 130, output[-3000:]
    assert (tmp_path / "checkpoints" / "state.json").exists()


def _write_class(root, name, files):
    (root / "train" / name).mkdir(parents=True)
    for fname, data in files.items():
        (root / "train" / name / fname).write_bytes(data)


def test_no_usable_data_exits_3(tmp_path):
    _write_class(tmp_path / "d", "a", {"x.mp4": b"junk"})
    _write_class(tmp_path / "d", "b", {"y.mp4": b""})
    result = run_job(data_dir=tmp_path / "d", output_dir=tmp_path / "out", cache_dir=tmp_path / "c",
                     metrics_port=free_port(), timeout=120)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "no usable" in result.stderr


@pytest.mark.parametrize("policy, code", [("fail", 3), ("skip", 0)])
def test_bad_video_fails_or_is_skipped_and_reported(cache, tmp_path, policy, code):
    clips = sorted((cache / "demo" / "train").rglob("*.mp4"))
    (tmp_path / "bad.mp4").write_bytes(b"junk")
    rows = [f"{p};{p.parent.name}" for p in clips] + [f"bad.mp4;{clips[0].parent.name}"]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    result = run_job(train_manifest=tmp_path / "train.csv", output_dir=tmp_path / "out", cache_dir=tmp_path / "c",
                     on_bad_video=policy, epochs=1, metrics_port=free_port(), **TINY)
    assert result.returncode == code and "bad.mp4" in result.stderr, result.stderr[-2000:]
    if policy == "skip":
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert [(s["path"], s["kind"]) for s in report["skipped"]] == [(str(tmp_path / "bad.mp4"), "unreadable")]
        # Listed (and trained over: its slot is filled by another clip), reported as left out.
        assert report["dataset"]["train_clips"] + report["dataset"]["val_clips"] == len(clips) + 1
        assert report["dataset"]["skipped_clips"] == 1


def test_gpu_decode_without_a_cuda_decord_stops_at_start_with_exit_2(cache, tmp_path):
    from loader.decode import check_decode_device

    try:
        check_decode_device("gpu", next((cache / "demo" / "train").rglob("*.mp4")))
        pytest.skip("decord here decodes on a GPU (a CUDA build): nothing to refuse")
    except RuntimeError:
        pass
    result = run_job(decode_device="gpu", output_dir=tmp_path, cache_dir=cache, metrics_port=free_port(), **TINY)
    assert result.returncode == 2 and "VIDTRAIN_DECODE_DEVICE=gpu" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "checkpoints").exists()  # stopped before any training


def _manifest(tmp_path, cache, classes, extra=""):
    rows = [f"{p};{p.parent.name}" for name in classes for p in sorted((cache / "demo" / "train" / name).glob("*"))]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n" + extra)
    return tmp_path / "m.csv"


def test_flip_without_mirrored_twins_exits_2(cache, tmp_path):
    result = run_job(train_manifest=_manifest(tmp_path, cache, ["swipe_left", "stop"]), augment_flip="true",
                     output_dir=tmp_path / "out", cache_dir=cache, metrics_port=free_port(), **TINY)
    assert result.returncode == 2 and "VIDTRAIN_AUGMENT_FLIP=true" in result.stderr, result.stderr[-2000:]
    assert "no mirrored twin 'swipe_right'" in result.stderr and "Traceback" not in result.stderr


def test_malformed_manifest_exits_3_naming_the_line(cache, tmp_path):
    manifest = _manifest(tmp_path, cache, ["stop", "move_up"], extra="just-a-path.mp4\n")
    result = run_job(train_manifest=manifest, output_dir=tmp_path / "out", cache_dir=cache,
                     metrics_port=free_port(), **TINY)
    assert result.returncode == 3 and "line 9" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_metrics_port_in_use_exits_2_before_tensorflow_loads(tmp_path):
    import socket
    import subprocess
    import sys

    from jobs import ROOT, job_env

    code = "import entrypoint, sys; code = entrypoint.main([]); print(code, 'tensorflow' in sys.modules)"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                                env=job_env(metrics_port=port, metrics_addr="127.0.0.1", output_dir=tmp_path))
    assert result.stdout.split() == ["2", "False"], result.stderr[-2000:]
    assert result.stderr.startswith("vidtrain: invalid configuration:\n  VIDTRAIN_METRICS_PORT=")
    assert "Address already in use" in result.stderr


def test_weights_that_do_not_fit_the_model_exit_2_as_invalid_configuration(trained, cache, tmp_path):
    out, _ = trained
    result = run_job(output_dir=tmp_path, cache_dir=cache, epochs=1, pretrained_weights=out / "model.keras",
                     metrics_port=free_port(), **(TINY | {"model": "cnn_rnn"}))  # conv3d's weights
    assert result.returncode == 2, result.stderr[-2000:]
    assert "ERROR invalid configuration: VIDTRAIN_PRETRAINED_WEIGHTS=" in result.stderr
    assert "do not fit the cnn_rnn model" in result.stderr and "Traceback" not in result.stderr


def test_a_healthy_cpu_run_says_what_it_runs_on_and_prints_nothing_that_looks_like_an_error(trained):
    _, result = trained
    lines = result.stderr.splitlines()
    assert " INFO vidtrain on CPU: " in lines[0] and "cores" in lines[0] and "TensorFlow 2." in lines[0]
    for marker in ("E0000", "W0000", "I0000", "absl::InitializeLog", "cuda", "cuInit", "oneDNN custom operations",
                   " ERROR ", " WARNING ", "Traceback", "retracing"):
        assert not [line for line in lines if marker in line], marker


def test_metrics_port_0_serves_on_a_free_port_and_logs_it(cache, tmp_path):
    import re

    job = start_job(metrics_port=0, output_dir=tmp_path, cache_dir=cache, epochs=50, **TINY)
    try:
        port = None
        for line in job.stdout:
            if found := re.search(r"metrics on http://0\.0\.0\.0:(\d+)/metrics", line):
                port = int(found[1])
                break
        assert port and port != 0
        assert wait_for(lambda: scrape(port), timeout=60, interval=0.05)
    finally:
        job.kill()
        job.communicate()
