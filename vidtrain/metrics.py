"""Prometheus metrics of one job, on a registry passed in (tests use a fresh one).

One meaning per metric, whatever the mode or worker count:
- `vidtrain_data_wait_seconds{split}`: the loop blocked on the loader for one
  batch; observed once per batch consumed, together with
  `vidtrain_batches_total{split}` and `vidtrain_clips_total{split}` (the clips in
  it; split: train, val, predict; the zero-weight padding of an uneven shard
  is not a batch consumed);
- `vidtrain_train_step_seconds`: one training step's compute (forward,
  backward, update, results back on the host), never including data wait;
- `vidtrain_batch_load_seconds`: one batch decoded and assembled by a loader thread.
`JobMetrics.loader(split)` gives the loader its instrumentation hooks
(loader.hooks.LoaderHooks) bound to a split, so the loader reports without
knowing Prometheus.
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
SPLITS = ("train", "val", "predict")


class JobMetrics:
    """Every metric of docs/design.md, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.batch_load = Histogram("vidtrain_batch_load_seconds", "Time to decode and assemble one batch.",
                                    buckets=LATENCY_BUCKETS, registry=registry)
        self.data_wait = Histogram("vidtrain_data_wait_seconds", "Time the loop waited for a batch, by split.",
                                   ["split"], buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_depth = Gauge("vidtrain_prefetch_queue_depth", "Batches decoded ahead and waiting.",
                                 registry=registry)
        self.skipped = Counter("vidtrain_videos_skipped", "Clips left out, by reason and stage: by the dataset "
                               "index's probe (index, once each), when loaded (load, each epoch a clip fails that the "
                               "index did not leave out) or copied (prepare).", ["reason", "stage"], registry=registry)
        self.batches = Counter("vidtrain_batches", "Batches consumed, by split.", ["split"], registry=registry)
        self.clips = Counter("vidtrain_clips", "Clips in the batches consumed, by split.", ["split"], registry=registry)
        self.train_step = Histogram("vidtrain_train_step_seconds", "Compute of one training step, no data wait.",
                                    buckets=LATENCY_BUCKETS, registry=registry)
        self.cache_hits = Counter("vidtrain_frame_cache_hits", "Clips read from the frame cache.", registry=registry)
        self.cache_misses = Counter("vidtrain_frame_cache_misses", "Clips decoded because the frame cache lacked them.",
                                    registry=registry)
        self.cache_bytes = Gauge("vidtrain_frame_cache_bytes", "Bytes in the frame cache.", registry=registry)
        self.cache_max_bytes = Gauge("vidtrain_frame_cache_max_bytes", "The frame cache's bound in bytes.",
                                     registry=registry)
        self.index_clips = Gauge("vidtrain_index_clips", "Dataset indexing: clips probed (done) of those to probe "
                                 "(total).", ["state"], registry=registry)
        self.prepare_clips = Gauge("vidtrain_prepare_clips", "Training copy (MODE=prepare): clips done (done) of "
                                   "those listed (total).", ["state"], registry=registry)
        self.epoch = Gauge("vidtrain_epoch", "Epochs completed.", registry=registry)
        self.loss = Gauge("vidtrain_loss", "Loss at the end of the last epoch.", ["split"], registry=registry)
        self.accuracy = Gauge("vidtrain_accuracy", "Accuracy at the end of the last epoch.", ["split"],
                              registry=registry)
        self.last_success = Gauge("vidtrain_last_success_timestamp_seconds",
                                  "Unix time the job last finished successfully.", registry=registry)
        for split in SPLITS:  # export zeros from the start, so queries see the series before the first batch
            self.batches.labels(split)
            self.clips.labels(split)
            self.data_wait.labels(split)

    def loader(self, split: str) -> LoaderHooks:
        """The loader's hooks for batches of `split` (train, val, predict)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return LoaderHooks(self, split)

    def count_skip(self, reason: str, stage: str = "load") -> None:
        self.skipped.labels(reason, stage).inc()

    # -- loader.hooks.CacheHooks (called from loader threads) --------------------------------
    def count_cache(self, hit: bool) -> None:
        (self.cache_hits if hit else self.cache_misses).inc()

    def set_cache_bytes(self, total: int, bound: int) -> None:
        self.cache_bytes.set(total)
        self.cache_max_bytes.set(bound)

    # -- loader.hooks.IndexHooks (called from the indexing thread) ---------------------------
    def set_index_progress(self, done: int, total: int) -> None:
        self.index_clips.labels("done").set(done)
        self.index_clips.labels("total").set(total)

    def set_prepare_progress(self, done: int, total: int) -> None:
        self.prepare_clips.labels("done").set(done)
        self.prepare_clips.labels("total").set(total)

    # -- readings for the report ----------------------------------------------------------
    def total(self, sample: str, **labels) -> float:
        """The sum of every sample named `sample` whose labels include `labels`."""
        return sum(s.value for family in self.registry.collect() for s in family.samples
                   if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


class LoaderHooks:
    """loader.hooks.LoaderHooks into JobMetrics for one split. Called from loader threads and the
    consuming loop; prometheus_client's metrics are thread-safe."""

    def __init__(self, metrics: JobMetrics, split: str):
        self._metrics = metrics
        self._wait, self._batches = metrics.data_wait.labels(split), metrics.batches.labels(split)
        self._clips = metrics.clips.labels(split)

    def observe_batch_load(self, seconds: float) -> None:
        self._metrics.batch_load.observe(seconds)

    def observe_data_wait(self, seconds: float, clips: int) -> None:
        self._wait.observe(seconds)
        self._batches.inc()
        self._clips.inc(clips)

    def set_queue_depth(self, depth: int) -> None:
        self._metrics.queue_depth.set(depth)

    def count_skip(self, reason: str) -> None:
        self._metrics.count_skip(reason)


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
