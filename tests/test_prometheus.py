"""A real Prometheus server scrapes a real running job; promtool lints the exposition."""

import subprocess

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
    make_demo_dataset(tmp_path / "cache" / "demo", 4, 2, 0)
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
    finally:
        job.terminate()
        job.communicate(timeout=60)
    assert job.returncode == 143
