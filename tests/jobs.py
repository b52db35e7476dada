"""Helpers to run the real job: as a subprocess, as docker/Kubernetes would, or in-process
(`settings`, `job`), with faults injected through LoopEvents (`Recorder`)."""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from vidtrain.control import LoopEvents

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_env(**settings) -> dict:
    """The current environment without any VIDTRAIN_* (or worker identity) of its own, plus
    `settings` as VIDTRAIN_*."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("VIDTRAIN_") and k not in ("TF_CONFIG", "JOB_COMPLETION_INDEX")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.update({f"VIDTRAIN_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def run_job(args=(), timeout=300, **settings) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "entrypoint.py"), *args], env=job_env(**settings),
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def start_job(args=(), **settings) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "entrypoint.py"), *args], env=job_env(**settings),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return r.read().decode()
    except OSError:
        return None


def sample(text: str, name: str, **labels) -> float | None:
    """Value of one sample in exposition text (prometheus_client's own parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def wait_for(predicate, timeout: float, interval: float = 0.2):
    """Poll until predicate() is truthy; returns its value, or None after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


KUBECTL = str(Path(sys.executable).parent / "kubectl")  # requirements-dev.txt's, whatever the machine has


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found: `make test` installs Debian's prometheus package (see Makefile: tools)"
    return path


@contextlib.contextmanager
def prometheus_server(tmp_path: Path, target: str):
    """A real Prometheus scraping `target` (host:port) every second; yields a PromQL query function."""
    web_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: vidtrain\n    static_configs: [{{targets: ['{target}']}}]\n"
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

    try:
        assert wait_for(ready, timeout=60), "prometheus did not start"
        yield query
    finally:
        server.terminate()
        server.wait(timeout=30)


# -- in-process ----------------------------------------------------------------------------------
def settings(data, out, **changes):
    """Tiny-job Settings: 4 frames at 32x32, batch 4, one loader thread, 2 epochs."""
    from vidtrain.settings import Settings

    values = dict(data_dir=data, output_dir=out, cache_dir=out.parent / "cache", epochs=2, frames=4, height=32,
                  width=32, batch_size=4, loader_workers=1, prefetch_batches=2, metrics_addr="127.0.0.1",
                  metrics_port=free_port())
    return Settings(**(values | changes))


def job(s, events=None, progress=False):
    """Run the job in this process: (exit code, its metrics registry)."""
    from prometheus_client import CollectorRegistry

    from vidtrain.job import run

    registry = CollectorRegistry()
    return run(s, progress=progress, registry=registry, events=events), registry


def sigterm(_model=None):
    os.kill(os.getpid(), signal.SIGTERM)  # a real signal, to the real handler the job installed


class Recorder(LoopEvents):
    """Records every step's loss and clips; `at` maps an event ("step E.S", "val E.B") to an
    action (a fault to inject), called with the model (None for validation)."""

    def __init__(self, **at):
        self.at, self.steps = at, []

    def after_step(self, epoch, step, model, logs):
        self.steps.append((epoch, step, logs["loss"], logs["clips"]))
        if (action := self.at.get(f"step {epoch}.{step}")) is not None:
            action(model)

    def after_val_batch(self, epoch, batch):
        if (action := self.at.get(f"val {epoch}.{batch}")) is not None:
            action(None)


def kubelet_env(pod_meta: dict, container: dict) -> dict:
    """The container's environment as the kubelet makes it: a label's value for a fieldRef to it, and
    $(NAME) replaced by an earlier variable's value (the Job controller's JOB_COMPLETION_INDEX aside)."""
    env = {}
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), variable["value"])
        elif "fieldRef" in variable.get("valueFrom", {}):
            kind, key = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]",
                                     variable["valueFrom"]["fieldRef"]["fieldPath"]).groups()
            env[variable["name"]] = pod_meta.get(kind, {})[key]
    return env
