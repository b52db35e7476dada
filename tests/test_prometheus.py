"""A real Prometheus server scrapes a real running job; promtool lints the exposition."""

import json
import shutil
import subprocess
import urllib.parse
import urllib.request

import pytest
from jobs import free_port, sample, scrape, start_job, wait_for

from loader.demo import make_demo_dataset

pytestmark = pytest.mark.slow


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found: `make test` installs Debian's prometheus package (see Makefile: tools)"
    return path


@pytest.fixture
def prometheus(tmp_path):
    """Prometheus scraping 127.0.0.1:<job port> every second; yields (job port, query function)."""
    job_port, web_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: vidtrain\n    static_configs: [{{targets: ['127.0.0.1:{job_port}']}}]\n"
    )
    server = subprocess.Popen(
        [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{web_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def query(promql: str) -> list:
        url = f"http://127.0.0.1:{web_port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return json.loads(r.read())["data"]["result"]
        except OSError:
            return []

    def ready():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{web_port}/-/ready", timeout=1).status == 200
        except OSError:
            return False

    assert wait_for(ready, timeout=60), "prometheus did not start"
    yield job_port, query
    server.terminate()
    server.wait(timeout=30)


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
