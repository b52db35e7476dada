"""The CPU image as a `docker run` user meets it, run for real with podman (`make image-test`)."""

import csv
import json
import time
import uuid

import pytest
from containers import (
    IMAGE,
    SMALL,
    env_args,
    exit_code,
    image,  # noqa: F401 (the fixture)
    logs,
    podman,
    shared_dir,
    unreadable_by_another_user,
)
from jobs import free_port, prometheus_server, sample, scrape, wait_for

from loader.demo import make_demo_dataset
from vidtrain.settings import Settings

pytestmark = [pytest.mark.image, pytest.mark.timeout(900), pytest.mark.usefixtures("image")]
GRACE_S = 120  # what k8s/job.yaml gives (terminationGracePeriodSeconds)


@pytest.fixture
def container():
    """A unique container name, removed afterwards whatever happened."""
    name = f"vidtrain-test-{uuid.uuid4().hex[:8]}"
    yield name
    podman("rm", "-f", "-t", "0", name, check=False)


def first_train_batch(port: int, timeout: float) -> bool:
    return bool(wait_for(lambda: sample(scrape(port) or "", "vidtrain_batches_total", split="train"), timeout))


def test_demo_run_scraped_stopped_and_resumed(tmp_path, container):
    """No settings at all: the demo set trains, Prometheus scrapes the published port during
    training, `podman stop` checkpoints and exits 143 within the grace period, and a rerun
    with the same output volume resumes and finishes."""
    port = free_port()
    with shared_dir("vidtrain-out-") as out, prometheus_server(tmp_path, f"127.0.0.1:{port}") as query:
        started = time.monotonic()
        podman("run", "-d", "--name", container, "-p", f"127.0.0.1:{port}:8000", "-v", f"{out}:/output", IMAGE)
        assert first_train_batch(port, timeout=300), logs(container)
        print(f"\ncold start to the first training batch (demo set generated first): "
              f"{time.monotonic() - started:.1f} s")
        assert wait_for(lambda: query('up{job="vidtrain"} == 1'), timeout=30), "Prometheus never saw /metrics"
        assert wait_for(lambda: query("vidtrain_epoch >= 1"), timeout=300), logs(container)
        assert query('vidtrain_batches_total{split="val"} > 0'), "validation batches were not counted"
        p95 = query("histogram_quantile(0.95, sum by (le) (vidtrain_batch_load_seconds_bucket))")
        assert p95 and 0 < float(p95[0]["value"][1]) < 60

        asked = time.monotonic()
        podman("stop", "-t", str(GRACE_S), container, timeout=GRACE_S + 30)
        stopped_s = time.monotonic() - asked
        assert exit_code(container, timeout=30) == 143, logs(container)
        print(f"podman stop -> exit 143 in {stopped_s:.1f} s")
        assert stopped_s < GRACE_S
        first = logs(container)
        assert "stopped; the next run with VIDTRAIN_OUTPUT_DIR=/output resumes" in first, first
        state = json.loads((out / "checkpoints" / "state.json").read_text())
        assert state["epoch"] >= 1, state

        rerun = podman("run", "--rm", "-v", f"{out}:/output", IMAGE, check=False, timeout=900)
        second = rerun.stdout + rerun.stderr
        assert rerun.returncode == 0, second
        assert f"resuming from /output/checkpoints/{state['model']}: epoch {state['epoch']}" in second, second
        history = json.loads((out / "history.json").read_text())
        assert len(history["loss"]) == Settings.model_fields["epochs"].default  # counted on, not restarted
        report = json.loads((out / "report.json").read_text())
        assert report["final"]["val_accuracy"] > 0.5
        assert (out / "model.keras").stat().st_size > 0
        assert unreadable_by_another_user(out) == []


def test_dataset_mounted_read_only(tmp_path, container):
    """A user's dataset at /data (read-only) and an output volume: trains, writes its outputs
    readable by other host users, leaves the dataset untouched."""
    data = make_demo_dataset(tmp_path / "data", 3, 1, 0)
    data.chmod(0o755)
    before = sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in data.rglob("*"))
    port = free_port()
    with shared_dir("vidtrain-out-") as out:
        started = time.monotonic()
        podman("run", "-d", "--name", container, "-p", f"127.0.0.1:{port}:8000", "-v", f"{data}:/data:ro",
               "-v", f"{out}:/output", *env_args({"VIDTRAIN_DATA_DIR": "/data", **SMALL}), IMAGE)
        assert first_train_batch(port, timeout=300), logs(container)
        print(f"\ncold start to the first training batch (mounted dataset): {time.monotonic() - started:.1f} s")
        assert exit_code(container, timeout=600) == 0, logs(container)
        report = json.loads((out / "report.json").read_text())
        assert report["dataset"]["train_clips"] == 15 and report["dataset"]["val_clips"] == 5, report["dataset"]
        assert len(json.loads((out / "history.json").read_text())["loss"]) == 2
        assert {"model.keras", "report.json", "history.json", "training_curves.png", "checkpoints"} <= {
            p.name for p in out.iterdir()}
        assert unreadable_by_another_user(out) == []
        # predict with the trained model, as the README shows it: new clips mounted read-only
        result = podman("run", "--rm", "-v", f"{out}:/output", "-v", f"{data / 'val'}:/clips:ro",
                        *env_args({"VIDTRAIN_MODE": "predict", "VIDTRAIN_PREDICT_INPUT": "/clips"}), IMAGE,
                        check=False, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        with open(out / "predictions.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 5 and all(r["predicted"] and not r["error"] for r in rows), rows
    assert sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in data.rglob("*")) == before


def test_invalid_setting_exits_2_naming_it():
    result = podman("run", "--rm", "-e", "VIDTRAIN_EPOCHS=-3", IMAGE, check=False, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "invalid configuration" in result.stderr and "VIDTRAIN_EPOCHS" in result.stderr, result.stderr
