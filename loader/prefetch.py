"""Prefetch: worker threads build batches ahead of the training loop; calls with a time limit; a
bounded parallel map (the index's probe); and a call in the background (the probe, while training).

The loader's concurrency lives here (the frame cache keeps one lock for its byte count). In the
PrefetchGenerator one condition variable guards all shared state; workers hold it only to claim a
batch number or to hand in a result, never while building a batch.

Guarantees: batches come in index order, each exactly once per epoch; no
more than `depth` batches are built-or-waiting at any time; a worker's
exception is raised in the consumer at that batch's place in the order, with
its original traceback; `close()` (or leaving a `with` block) stops and joins
every thread, also when the consumer stops early.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from loader.hooks import NullLoaderMetrics

_END = object()  # no more batches: the epoch is over or the generator closed


def call_with_timeout(fn, seconds: float | None, *args):
    """fn(*args), waiting at most `seconds` (None: no limit); TimeoutError after that.

    The call runs in a daemon thread of its own. A call that never returns (a decoder hung
    inside FFmpeg, as decord #373 and #294 report) cannot be stopped from Python: its thread
    is abandoned and the caller goes on."""
    if seconds is None:
        return fn(*args)
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name="vidtrain-timed-call", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no result after {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


class Background:
    """fn() in a daemon thread of its own, named `name`: `done()`, `wait(timeout)` (whether it ended),
    `result()` (its value, or its exception raised in the caller, once it ended)."""

    def __init__(self, fn: Callable, name: str):
        self._fn, self._ended = fn, threading.Event()
        self._value, self._error = None, None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Background:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:  # noqa: BLE001 - raised in the caller by result()
            self._error = exc
        finally:
            self._ended.set()

    def done(self) -> bool:
        return self._ended.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._ended.wait(timeout)

    def result(self):
        self._ended.wait()
        if self._error is not None:
            raise self._error
        return self._value


class Interrupted(RuntimeError):
    """`map_bounded` stopped early because its `stop_when()` became true."""


def map_bounded(fn: Callable, items: Iterable, workers: int, timeout: float | None = None,
                stop_when: Callable[[], bool] | None = None, poll: float = 0.5) -> Iterator[tuple]:
    """Yield (item, result, error) for fn(item) over `items`, in order of completion, from `workers`
    threads with at most 2 x workers items taken from `items` at a time (memory and look-up cost
    stay flat however many items there are). `error` is the exception fn raised (then result is
    None), or a TimeoutError for a call still running after `timeout` seconds: its thread is
    abandoned (a call hung inside FFmpeg cannot be stopped) and a new one takes its place.
    `stop_when()` is checked every `poll` seconds at least; once true, Interrupted is raised.
    Called from one thread; leaving early (an exception, or closing the generator) lets every
    worker finish its current call and exit."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    jobs: queue.SimpleQueue = queue.SimpleQueue()  # (token, item); None: exit
    results: queue.SimpleQueue = queue.SimpleQueue()  # (token, item, result, error)
    lock = threading.Lock()
    running: dict[int, tuple[object, float]] = {}  # token -> (item, started); guarded by lock
    abandoned: set[int] = set()  # tokens whose caller was told TimeoutError; guarded by lock

    def work() -> None:
        while (job := jobs.get()) is not None:
            token, item = job
            with lock:
                running[token] = (item, time.monotonic())
            try:
                outcome = (fn(item), None)
            except Exception as exc:  # noqa: BLE001 - it travels to the caller
                outcome = (None, exc)
            with lock:
                running.pop(token, None)
                late = token in abandoned
            if late:
                return  # a replacement thread took this one's place
            results.put((token, item, *outcome))

    def start_worker() -> None:
        threading.Thread(target=work, name="vidtrain-map", daemon=True).start()

    source, tokens, in_flight = iter(items), itertools.count(), 0
    threads = workers
    for _ in range(workers):
        start_worker()
    try:
        for item in itertools.islice(source, 2 * workers):
            jobs.put((next(tokens), item))
            in_flight += 1
        checked = time.monotonic()
        while in_flight:
            if stop_when is not None and stop_when():
                raise Interrupted(f"stopped with {in_flight} calls in flight")
            try:
                token, item, result, error = results.get(timeout=poll)
                done = [(item, result, error)]
            except queue.Empty:
                done = []
            now = time.monotonic()
            if timeout is not None and now - checked >= min(poll, timeout / 4):
                checked = now
                with lock:
                    expired = [(t, it) for t, (it, began) in running.items() if now - began > timeout]
                    for t, _ in expired:
                        del running[t]
                        abandoned.add(t)
                for _, it in expired:
                    done.append((it, None, TimeoutError(f"no result after {timeout:g} s")))
                    start_worker()
                    threads += 1
            for outcome in done:
                in_flight -= 1
                item = next(source, _END)
                if item is not _END:
                    jobs.put((next(tokens), item))
                    in_flight += 1
                yield outcome
    finally:
        for _ in range(threads):
            jobs.put(None)


def _clips(batch) -> int:
    """Clips in a batch: len(y) of an (x, y) batch (VideoSequence's); 1 for anything else."""
    if isinstance(batch, tuple) and len(batch) == 2 and hasattr(batch[1], "__len__"):
        return len(batch[1])
    return 1


@dataclass
class _Failure:
    """A worker's exception, travelling in the batch's place."""

    error: BaseException


class PrefetchGenerator:
    """An iterator of `sequence[i]` for i in epoch order, built by `workers` threads.

    `sequence` needs `__len__`, `__getitem__` and (for `infinite`)
    `on_epoch_end`. With `infinite=False` one epoch is yielded, from batch
    `start`; with `infinite=True` epochs repeat (for
    `fit(steps_per_epoch=len(sequence))`) and `on_epoch_end` is called exactly
    once between two epochs, by a worker thread, while no batch is being
    built; `count` then stops them after that many batches (nothing is built
    past the last one a training loop will take). `next()` may be called from
    several threads at once.
    """

    def __init__(self, sequence, workers: int = 2, depth: int = 4, infinite: bool = False, start: int = 0,
                 metrics=None, count: int | None = None):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.sequence, self.workers, self.depth, self.infinite = sequence, workers, depth, infinite
        self._n = len(sequence)
        if self._n < 1:
            raise ValueError("sequence is empty")
        if not 0 <= start < self._n:
            raise ValueError(f"start must be in [0, {self._n - 1}], got {start}")
        self.metrics = metrics or NullLoaderMetrics()
        self._first = start  # batch numbers g count from here across epochs; index = g % n
        if count is not None and (count < 0 or not infinite):
            raise ValueError(f"count needs infinite=True and must be >= 0, got {count} (infinite={infinite})")
        self._end = (start + count if count is not None else None) if infinite else self._n
        self._cond = threading.Condition()  # guards every field below
        self._next_claim = self._next_yield = start
        self._ready: dict[int, object] = {}
        self._in_flight = 0
        self._switching = False  # on_epoch_end running: nobody builds a batch meanwhile
        self._closing = False
        self._error: BaseException | None = None
        self._lifecycle = threading.Lock()  # start/stop; never held together with _cond by a worker
        self._threads: list[threading.Thread] = []
        self._started = False

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> PrefetchGenerator:
        """Start the workers; safe to call twice."""
        with self._lifecycle:
            if not self._started:
                self._started = True
                self._threads = [
                    threading.Thread(target=self._work, name=f"vidtrain-prefetch-{k}", daemon=True)
                    for k in range(self.workers)
                ]
                for t in self._threads:
                    t.start()
        return self

    def close(self) -> None:
        """Stop and join every worker; safe to call twice and from any thread but a worker."""
        with self._lifecycle:
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            for t in self._threads:
                t.join()
            self._threads = []
            with self._cond:
                self._ready.clear()
            self.metrics.set_queue_depth(0)

    def __enter__(self) -> PrefetchGenerator:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __iter__(self) -> Iterator:
        """A Python generator over the batches: what `model.fit(x=...)` accepts as-is
        (`model.fit(iter(generator), steps_per_epoch=len(sequence))`). Each call gets
        its own generator over the same shared, thread-safe state."""
        while True:
            try:
                batch = next(self)
            except StopIteration:
                return
            yield batch

    # -- consumer side -------------------------------------------------------------
    def __next__(self):
        """The next batch in order; called by the training loop (any thread)."""
        if not self._started:
            self.start()
        waited_from = time.perf_counter()
        with self._cond:
            item = self._take()
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            with self._cond:
                self._error = item.error
            self.close()
            raise item.error
        self.metrics.observe_data_wait(time.perf_counter() - waited_from, _clips(item))
        return item

    def _take(self):
        """Wait for the next batch in order and remove it; called holding _cond."""
        while True:
            if self._error is not None:
                raise self._error
            g = self._next_yield
            if self._closing or (self._end is not None and g >= self._end):
                return _END
            if g in self._ready:
                self._next_yield = g + 1
                item = self._ready.pop(g)
                self.metrics.set_queue_depth(len(self._ready))
                self._cond.notify_all()
                return item
            self._cond.wait()

    # -- worker side ---------------------------------------------------------------
    def _work(self) -> None:
        while (claim := self._claim()) is not None:
            g, new_epoch = claim
            started = time.perf_counter()
            try:
                if new_epoch:
                    self.sequence.on_epoch_end()
                item = self.sequence[g % self._n]
                self.metrics.observe_batch_load(time.perf_counter() - started)
            except BaseException as exc:  # noqa: BLE001 - it travels to the consumer
                item = _Failure(exc)
            with self._cond:
                self._in_flight -= 1
                self._switching = self._switching and not new_epoch
                self._ready[g] = item
                self.metrics.set_queue_depth(len(self._ready))
                self._cond.notify_all()
            del item  # hold no batch while waiting for the next claim: the buffer is the bound

    def _claim(self) -> tuple[int, bool] | None:
        """Wait until the next batch number may be built; None when there is no more work."""
        with self._cond:
            while True:
                g = self._next_claim
                if self._closing or self._error is not None or (self._end is not None and g >= self._end):
                    return None
                new_epoch = g % self._n == 0 and g != self._first
                blocked = (
                    g >= self._next_yield + self.depth
                    or self._switching
                    or (new_epoch and self._in_flight > 0)  # the last epoch must be fully built first
                )
                if not blocked:
                    break
                self._cond.wait()
            self._next_claim = g + 1
            self._in_flight += 1
            self._switching = new_epoch
            return g, new_epoch
