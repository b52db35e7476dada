"""A real Prometheus server scrapes a real running job; promtool lints the exposition."""

import json
import math
import subprocess
from pathlib import Path

import pytest
from jobs import free_port, prometheus_server, sample, scrape, start_job, tool, wait_for

from loader.demo import make_demo_dataset

pytestmark = pytest.mark.slow


@pytest.fixture
def prometheus(tmp_path):
    """Prometheus scraping 127.0.0.1:<job port> every second; yields (job port, query function)."""
    job_port = free_port()
    with prometheus_server(tmp_path, f"127.0.0.1:{job_port}") as query:
        yield job_port, query


def test_prometheus_scrapes_the_running_job(prometheus, tmp_path):
    job_port, query = prometheus
    demo = make_demo_dataset(tmp_path / "cache" / "demo", 4, 2, 0)
    (demo / "train" / "stop" / "junk.mp4").write_bytes(b"not a video")  # a skip for the dashboard to show
    job = start_job(metrics_port=job_port, metrics_addr="127.0.0.1", output_dir=tmp_path / "out",
                    cache_dir=tmp_path / "cache", epochs=30, frames=8, height=32, width=32, batch_size=4,
                    demo_clips_per_class=4)
    try:
        up = wait_for(lambda: query('up{job="vidtrain"} == 1'), timeout=90)
        assert up, "Prometheus never saw the job's /metrics up"
        loaded = wait_for(lambda: query("sum(vidtrain_batch_load_seconds_count) > 0"), timeout=120)
        assert loaded and float(loaded[0]["value"][1]) > 0
        p95 = wait_for(lambda: query("histogram_quantile(0.95, sum by (le) (vidtrain_batch_load_seconds_bucket))"),
                       timeout=30)
        assert p95 and 0 < float(p95[0]["value"][1]) < 60
        assert wait_for(lambda: query('vidtrain_batches_total{split="train"} > 0'), timeout=60)
        assert wait_for(lambda: query("vidtrain_epoch >= 1"), timeout=120)

        text = scrape(job_port)
        for name in ("vidtrain_data_wait_seconds_count", "vidtrain_train_step_seconds_count",
                     "vidtrain_prefetch_queue_depth", "vidtrain_last_success_timestamp_seconds"):
            assert sample(text, name) is not None, name
        assert sample(text, "vidtrain_loss", split="val") is not None
        lint = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
        assert lint.returncode == 0 and lint.stdout.strip() == "" and lint.stderr.strip() == "", lint

        # Every query of the Grafana dashboard returns data for this job (from the second epoch on:
        # the frame cache then has hits), with Grafana's variables as "all" and a 30 s rate window.
        assert wait_for(lambda: query("vidtrain_epoch >= 2"), timeout=180)
        for title, expr in dashboard_queries():
            expr = expr.replace("$__rate_interval", "30s").replace("$namespace", ".*").replace("$pod", ".*")
            result = wait_for(lambda expr=expr: query(expr), timeout=30)
            assert result and all(math.isfinite(float(r["value"][1])) for r in result), (title, expr)
    finally:
        job.terminate()
        job.communicate(timeout=60)
    assert job.returncode == 143


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads((Path(__file__).resolve().parent.parent / "k8s" / "monitoring" / "dashboard.json").read_text())
    queries = [(panel["title"], target["expr"]) for panel in board["panels"] for target in panel["targets"]]
    assert len(queries) >= 12
    return queries
