"""Start-up at dataset scale: seconds from `python entrypoint.py` to the first training batch.

For each dataset size (100k and 240k clips by default, Kinetics-400's training set: hard links to
the demo clips, distinct paths, in DATA_DIR's class-folder layout) the real job runs as a
subprocess:
- first start: an empty OUTPUT_DIR, so the clips are listed and the dataset index written; the
  index's probe runs in the background while training starts;
- restart: the same OUTPUT_DIR after a SIGTERM at the first batch, so the index is read (nothing
  listed again) and the job resumes from its checkpoint.
"First batch" is the first `vidtrain_batches_total{split="train"}` on the job's /metrics.
Reported: seconds, the process's peak RSS (VmHWM) and the index's size on disk.

    python -m bench.startup_bench [--sizes 100000,240000] [--index-workers 16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def linked_dataset(size: int) -> Path:
    """`size` training clips (and size / 10 validation clips) as hard links to the demo clips."""
    from loader import find_videos
    from loader.demo import make_demo_dataset

    root = CACHE / f"linked-{size}"
    if (root / "done").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    demo = make_demo_dataset(CACHE / "demo")
    sources, classes = find_videos(demo / "train")
    for split, count in (("train", size), ("val", max(size // 10, len(classes)))):
        for name in classes:
            (root / split / name).mkdir(parents=True)
        for k in range(count):
            path, label = sources[k % len(sources)]
            os.link(path, root / split / classes[label] / f"clip{k:07d}.mp4")
    (root / "done").write_text("")
    return root


def batches(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith('vidtrain_batches_total{split="train"}'):
            return float(line.split()[-1])
    return 0.0


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def start_to_first_batch(data: Path, out: Path, index_workers: int) -> dict:
    """Run the job until its first training batch, then SIGTERM it (it checkpoints and exits 143)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDTRAIN_")}
    env |= {"VIDTRAIN_DATA_DIR": str(data), "VIDTRAIN_OUTPUT_DIR": str(out), "VIDTRAIN_CACHE_DIR": str(out / "cache"),
            "VIDTRAIN_METRICS_PORT": str(port), "VIDTRAIN_METRICS_ADDR": "127.0.0.1",
            "VIDTRAIN_INDEX_WORKERS": str(index_workers), "VIDTRAIN_EPOCHS": "1"}
    began = time.perf_counter()
    job = subprocess.Popen([sys.executable, str(ROOT / "entrypoint.py")], env=env, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while batches(port) < 1:
            if job.poll() is not None:
                raise RuntimeError(f"the job exited {job.returncode}: {job.stderr.read()[-3000:]}")
            time.sleep(0.05)
        seconds = time.perf_counter() - began
        rss = peak_rss(job.pid)
        job.send_signal(signal.SIGTERM)
        job.communicate(timeout=300)
    finally:
        job.kill()
    index = out / "index" / "index.json"
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(rss / 2**20, 1),
            "index_mb": round(index.stat().st_size / 2**20, 2) if index.exists() else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,240000")
    ap.add_argument("--index-workers", default="16")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    for size in sizes:
        data = linked_dataset(size)
        for workers in (int(w) for w in args.index_workers.split(",")):
            out = CACHE / f"out-{size}-{workers}"
            shutil.rmtree(out, ignore_errors=True)
            first = start_to_first_batch(data, out, workers)
            restart = start_to_first_batch(data, out, workers)
            results.append({"clips": size, "index_workers": workers, "first": first, "restart": restart})
            print(json.dumps(results[-1]), flush=True)
            shutil.rmtree(out, ignore_errors=True)
    print("\n| clips | INDEX_WORKERS | first start: s to first batch | peak RSS | index on disk | "
          "restart: s to first batch | peak RSS |\n|---|---|---|---|---|---|---|")
    for r in results:
        f, s = r["first"], r["restart"]
        print(f"| {r['clips']:,} | {r['index_workers']} | {f['seconds']} | {f['peak_rss_mb']} MB | "
              f"{f['index_mb']} MB | {s['seconds']} | {s['peak_rss_mb']} MB |")
    if len(sizes) == 2:
        small, large = sizes
        for workers in {r["index_workers"] for r in results}:
            a, b = (next(r for r in results if r["clips"] == n and r["index_workers"] == workers) for n in sizes)
            growth = (b["first"]["peak_rss_mb"] - a["first"]["peak_rss_mb"]) * 2**20 / (large - small)
            print(f"\nINDEX_WORKERS={workers}: first start {large / small:.1f}x the clips -> "
                  f"{b['first']['seconds'] / a['first']['seconds']:.2f}x the time; peak RSS "
                  f"{growth / 1024:.2f} KB more per clip")

if __name__ == "__main__":
    main()
