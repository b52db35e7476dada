"""Loader benchmark: PrefetchGenerator against the alternatives, side by side.

    python -m bench.loader_bench [--rounds 3] [--epochs 2] [--workers 2]

1. Throughput, same clips/frames/size/workers, contenders interleaved in
   every round so machine noise hits all alike; reported as ratios to the
   bare thread pool (the limit: nothing but decode calls in a pool). One
   contender reads through a FrameCache filled by the warm-up round, one
   through a FrameCache at its bound (every clip a miss: a full cache's cost).
2. Overlap: a simulated training step of C seconds against a loader that
   needs L seconds per batch per worker; the share of time spent waiting.
3. Peak RSS growth of a PrefetchGenerator run against its depth bound.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from loader import FrameCache, PrefetchGenerator, VideoSequence, find_videos, make_demo_dataset, probe  # noqa: E402

CACHE = Path(".cache")


def consume(batch) -> int:
    return int(batch[1].shape[0])


def run_prefetch(seq, workers, depth, epochs):
    with PrefetchGenerator(seq, workers=workers, depth=depth, infinite=True) as gen:
        return sum(consume(next(gen)) for _ in range(epochs * len(seq)))


def run_pool(seq, workers, depth, epochs, pool):
    return sum(consume(b) for _ in range(epochs) for b in pool.map(seq.__getitem__, range(len(seq))))


def run_serial(seq, workers, depth, epochs):
    return sum(consume(seq[i]) for _ in range(epochs) for i in range(len(seq)))


def run_keras(seq, workers, depth, epochs):
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    seq.workers, seq.use_multiprocessing, seq.max_queue_size = workers, False, depth
    adapter, clips = PyDatasetAdapter(seq, shuffle=False), 0
    for _ in range(epochs):  # as Keras's fit drives it: one enqueuer run per epoch
        adapter.on_epoch_begin()
        clips += sum(consume(b) for b in adapter.get_numpy_iterator())
        adapter.on_epoch_end()
    return clips


def run_tf_data(seq, workers, depth, epochs):
    import tensorflow as tf

    def load(i):
        return seq[int(i)]

    ds = tf.data.Dataset.range(len(seq)).map(
        lambda i: tf.numpy_function(load, [i], (tf.uint8, tf.int32)), num_parallel_calls=workers, deterministic=True
    ).prefetch(depth)
    return sum(consume(b) for _ in range(epochs) for b in ds)


def throughput(seq, cached, full, workers, depth, epochs, rounds):
    pool = ThreadPoolExecutor(max_workers=workers)
    contenders = {
        "bare thread pool (limit)": lambda: run_pool(seq, workers, depth, epochs, pool),
        "PrefetchGenerator": lambda: run_prefetch(seq, workers, depth, epochs),
        "PrefetchGenerator, filled FrameCache": lambda: run_prefetch(cached, workers, depth, epochs),
        "PrefetchGenerator, full FrameCache (holds nothing)": lambda: run_prefetch(full, workers, depth, epochs),
        "Keras PyDataset (threads)": lambda: run_keras(seq, workers, depth, epochs),
        "tf.data map(numpy_function)": lambda: run_tf_data(seq, workers, depth, epochs),
        "serial generator": lambda: run_serial(seq, workers, depth, epochs),
    }
    for fn in contenders.values():  # warm-up: page cache, imports, TF graph building, filling the frame cache
        fn()
    rates = {name: [] for name in contenders}
    for r in range(rounds):
        order = list(contenders)[r % len(contenders):] + list(contenders)[: r % len(contenders)]
        for name in order:
            start = time.perf_counter()
            clips = contenders[name]()
            rates[name].append(clips / (time.perf_counter() - start))
    pool.shutdown()
    return {name: statistics.median(v) for name, v in rates.items()}


class SleepSequence:
    """A loader that takes `seconds` per batch without using the CPU (like I/O or a GPU decode)."""

    def __init__(self, n, seconds):
        self.n, self.seconds = n, seconds

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        time.sleep(self.seconds)
        return np.zeros(1), np.zeros(1)

    def on_epoch_end(self):
        pass


def wait_share(seq, workers, depth, step_seconds, steps):
    """Share of wall time a training loop with `step_seconds` steps waits for data:
    over the whole run, and in steady state (after the first `depth` steps fill the buffer)."""
    waits, start = [], time.perf_counter()
    with PrefetchGenerator(seq, workers=workers, depth=depth, infinite=True) as gen:
        for _ in range(steps):
            t = time.perf_counter()
            next(gen)
            waits.append(time.perf_counter() - t)
            time.sleep(step_seconds)  # the training step (releases the GIL, as TF does)
    total = time.perf_counter() - start
    return sum(waits) / total, sum(waits[depth:]) / (total - sum(waits[:depth]) - depth * step_seconds)


def peak_rss_growth(seq, workers, depth, batches):
    proc = psutil.Process()
    base, peak, stop = proc.memory_info().rss, [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    with PrefetchGenerator(seq, workers=workers, depth=depth, infinite=True) as gen:
        for _ in range(batches):
            next(gen)
            time.sleep(0.15)  # a slow consumer: the buffer fills up to its bound
    stop.set()
    sampler.join()
    return peak[0] - base


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--parts", default="throughput,overlap,rss", help="comma-separated parts to run")
    ap.add_argument("--rss-depth", type=int, help=argparse.SUPPRESS)  # internal: one RSS run
    args = ap.parse_args()

    root = make_demo_dataset(CACHE / "demo")
    items, _ = find_videos(root / "train")
    items, _, counts = probe(items, workers=4, progress=False)
    if args.rss_depth:
        return rss_only(items, args.rss_depth, args.workers)
    seq = VideoSequence(items, args.batch, args.frames, (args.size, args.size), shuffle=True, seed=0)
    if "throughput" in args.parts:
        print(f"## Throughput: {len(items)} clips x {args.epochs} epochs, batch {args.batch}, {args.frames} frames "
              f"{args.size}x{args.size}, {args.workers} workers, depth {args.depth}, median of {args.rounds} "
              f"rounds, {os.cpu_count()} CPUs\n")
        frames = CACHE / "bench-frames"
        shutil.rmtree(frames, ignore_errors=True)  # filled afresh by the warm-up round
        frame_counts = dict(zip((p for p, _ in items), counts))  # as the job has them from its dataset index
        cached = VideoSequence(items, args.batch, args.frames, (args.size, args.size), shuffle=True, seed=0,
                               cache=FrameCache(frames, 10**10), frame_counts=frame_counts)
        # A cache at its bound before the first clip (a dataset larger than the bound, after it filled up):
        # every clip is a miss, and must cost no more than decoding without a cache.
        full = VideoSequence(items, args.batch, args.frames, (args.size, args.size), shuffle=True, seed=0,
                             cache=FrameCache(CACHE / "bench-full", 0), frame_counts=frame_counts)
        rates = throughput(seq, cached, full, args.workers, args.depth, args.epochs, args.rounds)
        limit, ours = rates["bare thread pool (limit)"], rates["PrefetchGenerator"]
        print("| contender | clips/s | vs bare pool | PrefetchGenerator vs it |\n|---|---|---|---|")
        for name, rate in rates.items():
            print(f"| {name} | {rate:.1f} | {rate / limit:.3f}x | {ours / rate:.3f}x |")
    if "overlap" in args.parts:
        overlap(seq, args)
    if "rss" in args.parts:
        rss(args)


def overlap(seq, args):
    print(f"\n## Overlap: share of time the training loop waits for data ({args.workers} workers, "
          f"depth {args.depth})\n")
    print("| loader | capacity / demand | step C | wait share (whole run) | wait share (steady state) |")
    print("|---|---|---|---|---|")
    step = 0.02
    for ratio in (0.8, 1.0, 1.2, 1.5, 2.0):
        load = args.workers * step / ratio
        total, steady = wait_share(SleepSequence(50, load), args.workers, args.depth, step, 300)
        print(f"| simulated, L = {load * 1000:.1f} ms | {ratio:.1f}x | 20 ms | {total * 100:.2f}% | "
              f"{steady * 100:.2f}% |")
    pool = ThreadPoolExecutor(max_workers=args.workers)
    run_pool(seq, args.workers, args.depth, 1, pool)  # warm-up
    start = time.perf_counter()
    run_pool(seq, args.workers, args.depth, 2, pool)
    capacity = (time.perf_counter() - start) / (2 * len(seq))  # seconds per batch at the parallel limit
    pool.shutdown()
    for ratio in (1.2, 1.5):
        total, steady = wait_share(seq, args.workers, args.depth, ratio * capacity, 6 * len(seq))
        print(f"| real decode, {capacity * 1000:.0f} ms/batch at the limit | {ratio:.1f}x | "
              f"{ratio * capacity * 1000:.0f} ms | {total * 100:.2f}% | {steady * 100:.2f}% |")


def rss(args):
    print("\n## Peak RSS growth during a run vs the bound (batch 16, 16 frames 112x112; fresh process each)\n")
    print("| depth | batch size | bound (depth+1) x batch | peak RSS growth |\n|---|---|---|---|")
    for depth in (2, 8, 16):
        out = subprocess.run([sys.executable, "-m", "bench.loader_bench", "--rss-depth", str(depth)],
                             capture_output=True, text=True, check=True).stdout.split()
        batch_mb, growth = float(out[-2]), float(out[-1])
        print(f"| {depth} | {batch_mb:.1f} MiB | {(depth + 1) * batch_mb:.1f} MiB | {growth:.1f} MiB |")


def rss_only(items, depth, workers):
    """In a fresh process: warm up decode once, then measure a run's peak RSS growth."""
    big = VideoSequence(items, 16, 16, (112, 112), shuffle=True, seed=0)
    batch_mb = big[0][0].nbytes / 2**20
    growth = peak_rss_growth(big, workers, depth, depth + 10) / 2**20
    print(f"{batch_mb:.3f} {growth:.3f}")


if __name__ == "__main__":
    main()
