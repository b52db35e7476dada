"""Training benchmark: the job's loop fed by the loader against plain Keras fit on pre-decoded clips.

    python -m bench.train_bench [--models conv3d,cnn_rnn] [--rounds 2] [--epochs 3]

Both contenders train the same model (vidtrain.train.new_model: same seed,
optimizer, batch) on the same demo clips for the same epochs, validating after
each epoch. The reference is the best a user gets by hand: every clip decoded
once into memory (uniform frames), then `model.fit(x, y, validation_data=...)`.
The job is vidtrain.job.run with its defaults (frame cache on, a fresh cache per
round, as a new job would start). Rounds alternate the contenders, so machine
noise hits both alike; reported: clips/s over the training wall time (model
built to last validation, tracing included) and the ratio job / reference.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CACHE = Path(".cache")


def cpu_model() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def base_settings(model: str, epochs: int, **extra):
    import socket

    from vidtrain.settings import Settings

    with socket.socket() as s:  # a free port for the job's /metrics
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return Settings(model=model, epochs=epochs, cache_dir=CACHE, metrics_addr="127.0.0.1", metrics_port=port,
                    **extra)


def in_memory(settings):
    """Train and val clips decoded once: (x_train, y_train, x_val, y_val)."""
    import numpy as np

    from loader import PrefetchGenerator, VideoSequence
    from vidtrain.data import assemble

    splits = assemble(settings, progress=False)
    arrays = []
    for items in (splits.train, splits.val):
        seq = VideoSequence(items, 16, settings.frames, (settings.height, settings.width), sampling="uniform")
        with PrefetchGenerator(seq, workers=2, depth=4) as batches:
            xs, ys = zip(*batches)
        arrays += [np.concatenate(xs), np.concatenate(ys)]
    return arrays, len(splits.class_names)


def run_reference(settings, data, num_classes) -> float:
    """Seconds of plain Keras fit over the in-memory clips."""
    import keras

    from vidtrain.train import new_model

    keras.utils.set_random_seed(settings.seed)
    model = new_model(settings, num_classes)
    x, y, xv, yv = data
    started = time.perf_counter()
    model.fit(x, y, batch_size=settings.batch_size, epochs=settings.epochs, validation_data=(xv, yv),
              shuffle=True, verbose=0)
    return time.perf_counter() - started


def run_job(settings) -> tuple[float, dict]:
    """Seconds of the job's training loop (report.json train_seconds) with a fresh frame cache."""
    from prometheus_client import CollectorRegistry

    from vidtrain.job import run

    with tempfile.TemporaryDirectory() as tmp:
        job = settings.model_copy(update={"output_dir": Path(tmp) / "out",
                                          "cache_dir": Path(tmp) / "cache"})
        (Path(tmp) / "cache").mkdir()
        (Path(tmp) / "out").mkdir()  # what validating OUTPUT_DIR does
        for name in ("demo", "probe.json"):  # share the data and probe results, not the frame cache
            os.symlink((CACHE / name).resolve(), Path(tmp) / "cache" / name)
        code = run(job, progress=False, registry=CollectorRegistry())
        assert code == 0, f"the job exited {code}"
        report = json.loads((Path(tmp) / "out" / "report.json").read_text())
    return report["throughput"]["train_seconds"], report


def compare(model: str, args) -> dict:
    settings = base_settings(model, args.epochs)
    data, num_classes = in_memory(settings)
    clips = args.epochs * len(data[1])
    times = {"job (loader + loop)": [], "reference (in-memory fit)": []}
    for r in range(args.rounds):
        order = list(times) if r % 2 == 0 else list(times)[::-1]
        for name in order:
            if name.startswith("job"):
                seconds, report = run_job(settings)
                times[name].append(seconds)
                share = report["throughput"]["data_wait_share"]
            else:
                times[name].append(run_reference(settings, data, num_classes))
        print(f"  round {r + 1}: " + ", ".join(f"{n} {t[-1]:.1f} s" for n, t in times.items())
              + f", job data-wait share {share:.3f}", flush=True)
    job, ref = (statistics.median(t) for t in times.values())
    ratios = [r / j for j, r in zip(*times.values())]
    return {"model": model, "clips": clips, "job_s": job, "ref_s": ref, "ratios": ratios}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="conv3d,cnn_rnn")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    print(f"## Training: job vs in-memory Keras fit ({args.epochs} epochs, demo set, {os.cpu_count()} CPUs, "
          f"{cpu_model()}, TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')})\n")
    rows = []
    for model in args.models.split(","):
        print(f"{model}:", flush=True)
        rows.append(compare(model, args))
    print("\n| model | job clips/s | reference clips/s | job / reference (median) | per round |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['clips'] / row['job_s']:.1f} | {row['clips'] / row['ref_s']:.1f} | "
              f"**{statistics.median(row['ratios']):.3f}x** | {', '.join(f'{r:.3f}' for r in row['ratios'])} |")


if __name__ == "__main__":
    main()
