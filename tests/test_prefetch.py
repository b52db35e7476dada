"""PrefetchGenerator: order, exactly-once, bounds, errors and shutdown, with fake sequences.

The fakes return (epoch, index) as the batch, so every check is on content,
and they check from the inside that on_epoch_end never overlaps a batch build.
"""

import threading
import time
import traceback
import weakref

import numpy as np
import pytest

from loader.prefetch import PrefetchGenerator


class Batch(list):
    """A batch object that weakref can follow, to count batches alive."""


class FakeSequence:
    def __init__(self, n, delay=0.0, fail_at=None, barrier=None):
        self.n, self.delay, self.fail_at, self.barrier = n, delay, fail_at, barrier
        self.epoch = 0
        self.epoch_end_calls = 0
        self._lock = threading.Lock()
        self.building = 0
        self.violations = []
        self.alive = 0
        self.peak_alive = 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        with self._lock:
            self.building += 1
        try:
            if self.barrier is not None:
                self.barrier.wait(timeout=20)  # only passes if `parties` builds run at once
            time.sleep(self.delay)
            if i == self.fail_at:
                raise ValueError(f"bad batch {i}")
            batch = Batch([self.epoch, i])
            with self._lock:
                self.alive += 1
                self.peak_alive = max(self.peak_alive, self.alive)
            weakref.finalize(batch, self._release)
            return batch
        finally:
            with self._lock:
                self.building -= 1

    def _release(self):
        with self._lock:
            self.alive -= 1

    def on_epoch_end(self):
        with self._lock:
            if self.building:
                self.violations.append(f"on_epoch_end during {self.building} builds")
            self.epoch += 1
            self.epoch_end_calls += 1


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("vidtrain-prefetch")]


def test_one_epoch_in_order_then_stop_and_join():
    seq = FakeSequence(10)
    with PrefetchGenerator(seq, workers=3, depth=4) as gen:
        assert [tuple(b) for b in gen] == [(0, i) for i in range(10)]
        with pytest.raises(StopIteration):
            next(gen)
    assert not prefetch_threads() and seq.epoch_end_calls == 0


@pytest.mark.parametrize("workers", [1, 2, 8])
def test_exactly_once_in_order_with_four_consumer_threads_over_many_epochs(workers):
    n, epochs, consumers = 7, 40, 4
    seq = FakeSequence(n, delay=0.0005)
    got = [[] for _ in range(consumers)]
    total = n * epochs
    taken = iter(range(total))  # next() on a shared iterator hands out the calls to make
    take_lock = threading.Lock()

    def consume(out):
        while True:
            with take_lock:
                if next(taken, None) is None:
                    return
            out.append(tuple(next(gen)))

    with PrefetchGenerator(seq, workers=workers, depth=3, infinite=True) as gen:
        threads = [threading.Thread(target=consume, args=(got[k],)) for k in range(consumers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
    everything = sorted(b for out in got for b in out)
    assert everything == [(e, i) for e in range(epochs) for i in range(n)]  # each once, built in its epoch
    for out in got:
        assert out == sorted(out)  # each consumer sees batches in order
    assert seq.violations == []
    assert epochs - 1 <= seq.epoch_end_calls <= epochs  # at most one epoch switch prefetched ahead
    assert not prefetch_threads()


def test_workers_really_build_in_parallel():
    workers = 4
    seq = FakeSequence(8, barrier=threading.Barrier(workers))
    with PrefetchGenerator(seq, workers=workers, depth=workers) as gen:
        assert len(list(gen)) == 8  # a BrokenBarrierError would travel here if builds did not overlap


@pytest.mark.parametrize("workers, depth", [(1, 1), (4, 2), (2, 6), (8, 3)])
def test_memory_bounded_by_depth(workers, depth):
    seq = FakeSequence(40, delay=0.001)
    with PrefetchGenerator(seq, workers=workers, depth=depth) as gen:
        for batch in gen:
            time.sleep(0.002)  # a slow consumer lets the workers fill the buffer
            del batch
    # depth built or waiting, plus the one the consumer holds while the next is built
    assert seq.peak_alive <= depth + 1


def test_worker_exception_reaches_consumer_in_order_with_traceback_and_no_hang():
    seq = FakeSequence(20, fail_at=5)
    gen = PrefetchGenerator(seq, workers=4, depth=4)
    got = [tuple(next(gen)) for _ in range(5)]
    assert got == [(0, i) for i in range(5)]
    with pytest.raises(ValueError, match="bad batch 5") as info:
        next(gen)
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "__getitem__" in frames  # the worker's own frame travels with the exception
    assert not prefetch_threads()
    with pytest.raises(ValueError, match="bad batch 5"):
        next(gen)  # stays failed; never a silent StopIteration


def test_exception_in_on_epoch_end_is_raised_too():
    seq = FakeSequence(3)
    seq.on_epoch_end = lambda: (_ for _ in ()).throw(RuntimeError("reshuffle failed"))
    with PrefetchGenerator(seq, workers=2, depth=2, infinite=True) as gen:
        assert [tuple(next(gen)) for _ in range(3)] == [(0, 0), (0, 1), (0, 2)]
        with pytest.raises(RuntimeError, match="reshuffle failed"):
            next(gen)


def test_early_close_joins_every_thread():
    seq = FakeSequence(1000, delay=0.01)
    with PrefetchGenerator(seq, workers=6, depth=8, infinite=True) as gen:
        next(gen)
        next(gen)
        assert len(prefetch_threads()) == 6
    assert not prefetch_threads()
    gen.close()  # twice is fine
    gen.start()  # start after close does not resurrect threads
    assert not prefetch_threads()


def test_break_out_of_a_for_loop_then_close():
    seq = FakeSequence(1000, delay=0.005)
    with PrefetchGenerator(seq, workers=3, depth=4) as gen:
        for k, _ in enumerate(gen):
            if k == 2:
                break
    assert not prefetch_threads()


def test_close_from_another_thread_releases_a_waiting_consumer():
    seq = FakeSequence(10, delay=2.0)
    gen = PrefetchGenerator(seq, workers=1, depth=1).start()
    outcome = []

    def consume():
        try:
            next(gen)
            outcome.append("batch")
        except StopIteration:
            outcome.append("stopped")

    consumer = threading.Thread(target=consume)
    consumer.start()
    time.sleep(0.2)
    gen.close()
    consumer.join(timeout=10)
    assert not consumer.is_alive() and outcome in (["stopped"], ["batch"])
    assert not prefetch_threads()


def test_start_resumes_mid_epoch_and_infinite_continues():
    seq = FakeSequence(5)
    with PrefetchGenerator(seq, workers=2, depth=2, infinite=True, start=3) as gen:
        got = [tuple(next(gen)) for _ in range(7)]
    assert got == [(0, 3), (0, 4), (1, 0), (1, 1), (1, 2), (1, 3), (1, 4)]


class Counting(FakeSequence):
    """Records every (epoch, index) it is asked to build."""

    def __init__(self, n):
        super().__init__(n)
        self.built = []

    def __getitem__(self, i):
        self.built.append((self.epoch, i))
        return super().__getitem__(i)


@pytest.mark.parametrize("start, count", [(0, 10), (3, 7), (4, 1), (2, 0)])
def test_count_stops_across_epochs_and_builds_nothing_past_the_last_batch(start, count):
    seq = Counting(5)
    with PrefetchGenerator(seq, workers=3, depth=4, infinite=True, start=start, count=count) as gen:
        got = [tuple(b) for b in gen]
    expected = [(g // 5, g % 5) for g in range(start, start + count)]
    assert got == expected and sorted(seq.built) == expected
    with pytest.raises(ValueError, match="count needs infinite=True"):
        PrefetchGenerator(FakeSequence(5), count=3)


class Recorder:
    def __init__(self):
        self.loads, self.waits, self.depths = [], [], []

    def observe_batch_load(self, s):
        self.loads.append(s)

    def observe_data_wait(self, s, clips):
        self.waits.append(s)

    def set_queue_depth(self, d):
        self.depths.append(d)

    def count_skip(self, reason):
        pass


def test_instrumentation_hooks_see_every_batch():
    rec = Recorder()
    with PrefetchGenerator(FakeSequence(12, delay=0.002), workers=2, depth=3, metrics=rec) as gen:
        assert len(list(gen)) == 12
    assert len(rec.loads) == 12 and all(s >= 0.002 for s in rec.loads)
    assert len(rec.waits) == 12 and all(s >= 0 for s in rec.waits)
    assert max(rec.depths) <= 3 and rec.depths[-1] == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [({"workers": 0}, "workers must be >= 1, got 0"), ({"depth": 0}, "depth must be >= 1, got 0"),
     ({"start": 9}, "start must be in [0, 2], got 9")],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError) as info:
        PrefetchGenerator(FakeSequence(3), **kwargs)
    assert message in str(info.value)


def test_empty_sequence_is_rejected():
    with pytest.raises(ValueError, match="sequence is empty"):
        PrefetchGenerator(FakeSequence(0))


def test_numpy_batches_pass_through_unchanged():
    class Arrays(FakeSequence):
        def __getitem__(self, i):
            return np.full((2, 3), i), np.array([i, i])

    with PrefetchGenerator(Arrays(4), workers=2, depth=2) as gen:
        assert [int(x[0, 0]) for x, _ in gen] == [0, 1, 2, 3]


# -- map_bounded: the index's probe ----------------------------------------------------------------
def test_map_bounded_takes_at_most_twice_the_workers_ahead_and_yields_everything():
    from loader.prefetch import map_bounded

    taken, yielded, ahead = [0], [0], []

    def source():
        for k in range(2000):
            taken[0] += 1
            ahead.append(taken[0] - yielded[0])
            yield k

    results = []
    for item, result, error in map_bounded(lambda k: k * k, source(), workers=3):
        yielded[0] += 1
        results.append((item, result, error))
    assert sorted(results) == [(k, k * k, None) for k in range(2000)]
    assert max(ahead) <= 2 * 3 + 1  # the window, plus the one taken to refill it


def test_map_bounded_reports_errors_and_replaces_a_hung_call():
    from loader.prefetch import map_bounded

    release = threading.Event()

    def fn(k):
        if k == 0:
            release.wait()  # hangs until the test ends
        if k == 1:
            raise ValueError("bad item")
        return k

    try:
        outcomes = {item: (result, error) for item, result, error in map_bounded(fn, range(6), workers=1, timeout=0.5,
                                                                                poll=0.05)}
    finally:
        release.set()
    assert isinstance(outcomes[0][1], TimeoutError)  # the only worker hung on it: a new one did the rest
    assert isinstance(outcomes[1][1], ValueError) and outcomes[1][0] is None
    assert {k: outcomes[k] for k in (2, 3, 4, 5)} == {k: (k, None) for k in (2, 3, 4, 5)}


def test_map_bounded_stops_when_asked():
    from loader.prefetch import Interrupted, map_bounded

    seen = []
    with pytest.raises(Interrupted):
        for item, _, _ in map_bounded(lambda k: k, range(10**6), workers=2, stop_when=lambda: len(seen) >= 10):
            seen.append(item)
    assert 10 <= len(seen) < 100
