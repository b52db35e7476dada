"""Helpers to run the real job as a subprocess, as docker/Kubernetes would."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

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
