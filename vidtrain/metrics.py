"""Prometheus metrics of one job, on a registry passed in (tests use a fresh one).

`JobMetrics` also implements the loader's instrumentation hooks
(observe_batch_load, observe_data_wait, set_queue_depth, count_skip), so the
loader reports into it without knowing Prometheus.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, push_to_gateway, start_http_server
from prometheus_client.exposition import basic_auth_handler, default_handler

log = logging.getLogger("vidtrain")

# Video batches take from milliseconds (small clips, warm cache) to tens of seconds (4K, cold storage).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SPLITS = ("train", "val")


class JobMetrics:
    """Every metric in DESIGN.md, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.batch_load = Histogram("vidtrain_batch_load_seconds", "Time to decode and assemble one batch.",
                                    buckets=LATENCY_BUCKETS, registry=registry)
        self.data_wait = Histogram("vidtrain_data_wait_seconds", "Time the training loop waited for a batch.",
                                   buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_depth = Gauge("vidtrain_prefetch_queue_depth", "Batches decoded ahead and waiting.",
                                 registry=registry)
        self.skipped = Counter("vidtrain_videos_skipped", "Clips left out, by reason.", ["reason"],
                               registry=registry)
        self.batches = Counter("vidtrain_batches", "Batches consumed, by split.", ["split"], registry=registry)
        self.train_step = Histogram("vidtrain_train_step_seconds", "Wall time of one training step.",
                                    buckets=LATENCY_BUCKETS, registry=registry)
        self.epoch = Gauge("vidtrain_epoch", "Epochs completed.", registry=registry)
        self.loss = Gauge("vidtrain_loss", "Loss at the end of the last epoch.", ["split"], registry=registry)
        self.accuracy = Gauge("vidtrain_accuracy", "Accuracy at the end of the last epoch.", ["split"],
                              registry=registry)
        self.last_success = Gauge("vidtrain_last_success_timestamp_seconds",
                                  "Unix time the job last finished successfully.", registry=registry)
        for split in SPLITS:  # export zeros from the start, so queries see the series before the first batch
            self.batches.labels(split)

    # -- loader hooks (called from loader threads; prometheus_client is thread-safe) --------
    def observe_batch_load(self, seconds: float) -> None:
        self.batch_load.observe(seconds)

    def observe_data_wait(self, seconds: float) -> None:
        self.data_wait.observe(seconds)

    def set_queue_depth(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def count_skip(self, reason: str) -> None:
        self.skipped.labels(reason).inc()

    # -- readings for the report ----------------------------------------------------------
    def total(self, sample: str, **labels) -> float:
        return self.registry.get_sample_value(sample, labels) or 0.0


def serve(registry: CollectorRegistry, addr: str, port: int):
    """Start /metrics in a daemon thread; returns the server (call .shutdown() to stop)."""
    server, _thread = start_http_server(port, addr, registry)
    return server


def push_outcome(url: str, job: str, final: dict[str, float]) -> None:
    """Push the final outcome once, on a registry of its own. Credentials may sit in the URL."""
    registry = CollectorRegistry()
    Gauge("vidtrain_last_success_timestamp_seconds", "Unix time the job last finished successfully.",
          registry=registry).set(time.time())
    for name, value in final.items():
        Gauge(f"vidtrain_final_{name}", f"Final {name.replace('_', ' ')}.", registry=registry).set(value)
    parts = urlsplit(url)
    bare = urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))
    handler = default_handler
    if parts.username:
        def handler(url, method, timeout, headers, data):
            return basic_auth_handler(url, method, timeout, headers, data, parts.username, parts.password)
    try:
        push_to_gateway(bare, job=job, registry=registry, handler=handler)
    except OSError as exc:  # the outcome is in report.json either way; a push failure must not fail the job
        log.warning("could not push to the Pushgateway at %s: %s", bare, exc)
