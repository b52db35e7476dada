"""The training copy (VIDTRAIN_MODE=prepare) against its 1080p source: training speed and accuracy.

Footage: the hard benchmark set (loader/demo.py, variant "hard": 6 gesture classes with camera
shake, sensor noise, flicker and moving clutter), every clip scaled to a short side of 1080 (16:9
clips to 1920x1080) with per-pixel grain (sigma 3) and encoded as H.264 (x264 "veryfast", CRF 23,
its default keyframe interval of 250 frames), as camera footage comes: synthetic footage, since
this machine reaches no video hub. `VIDTRAIN_MODE=prepare` then makes the training copy (short
side 256, a keyframe every 16 frames), timed. Side by side in one run:
- speed: one epoch of the default training (conv3d, 16x64x64, batch 8, LOADER_WORKERS=2) with the
  frame cache off, on the source and on the copy, alternating, `--rounds` times: training clips per
  second (report.json `throughput.clips_per_second`) and the ratio copy / source per round;
- accuracy: `--epochs` epochs of the default training (the frame cache on: it changes no batch)
  for each seed, on the source and on the copy: the final video accuracy, mean and spread.

    python -m bench.prepare_bench [--train 15] [--val 5] [--rounds 3] [--epochs 12] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.learn_bench import job_env

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "bench"
OUT = ROOT / "bench" / "out" / "prepare"
SHORT_SIDE = 1080


def footage(train: int, val: int) -> Path:
    """The hard set's clips at 1080p with grain, in DATA_DIR's layout (made once)."""
    import av
    from PIL import Image

    from loader.demo import make_demo_dataset

    root = CACHE / f"hd-{train}-{val}"
    if (root / "done").exists():
        return root
    small = make_demo_dataset(CACHE / f"hard-{train}-{val}", train, val, 0, variant="hard")
    rng = np.random.default_rng(0)
    for clip in sorted(small.rglob("*.mp4")):
        target = root / clip.relative_to(small)
        target.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(clip)) as source:
            frames = [f.to_ndarray(format="rgb24") for f in source.decode(video=0)]
        h, w = frames[0].shape[:2]
        scale = SHORT_SIDE / min(h, w)
        size = (round(w * scale / 2) * 2, round(h * scale / 2) * 2)
        with av.open(str(target), "w") as out:
            stream = out.add_stream("libx264", rate=15, options={"preset": "veryfast", "crf": "23"})
            stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
            for frame in frames:
                big = np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BICUBIC), np.float32)
                grain = rng.normal(0, 3, big.shape).astype(np.float32)
                pixels = np.clip(big + grain, 0, 255).astype(np.uint8)
                out.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
            out.mux(stream.encode())
    (root / "done").write_text("")
    return root


def run(name: str, **settings) -> tuple[dict, float]:
    """The job (a subprocess) with `settings`; its report (training: report.json) and the seconds it took."""
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    began = time.perf_counter()
    with open(OUT / f"{name}.log", "w") as log:
        code = subprocess.run([sys.executable, str(ROOT / "entrypoint.py")], cwd=ROOT, stdout=log, stderr=log,
                              env=job_env(output_dir=out, metrics_port=0, **settings)).returncode
    seconds = time.perf_counter() - began
    if code != 0:
        raise RuntimeError(f"{name} exited {code}: see {OUT / f'{name}.log'}")
    report = out / "report.json"
    return (json.loads(report.read_text()) if report.exists() else {}), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=15, help="training clips per class")
    ap.add_argument("--val", type=int, default=5, help="validation clips per class")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    source = footage(args.train, args.val)
    prepared = CACHE / f"hd-{args.train}-{args.val}-prepared"
    shutil.rmtree(prepared, ignore_errors=True)
    _, seconds = run("prepare", data_dir=source, mode="prepare", prepare_dir=prepared, cache_dir=OUT / "cache")
    clips = sum(1 for _ in source.rglob("*.mp4"))
    sizes = sum(p.stat().st_size for p in source.rglob("*.mp4")), sum(p.stat().st_size for p in prepared.rglob("*.mp4"))
    print(f"prepare: {clips} clips in {seconds:.1f} s ({clips / seconds:.2f} clips/s); "
          f"{sizes[0] / 2**20:.0f} MB of source, {sizes[1] / 2**20:.0f} MB of copy", flush=True)
    data = {"source": dict(data_dir=source),
            "copy": dict(train_manifest=prepared / "train.csv", val_manifest=prepared / "val.csv")}
    speed = {name: [] for name in data}
    for k in range(args.rounds):
        for name, where in data.items():
            report, _ = run(f"speed-{name}-{k}", epochs=1, frame_cache_gb=0, cache_dir=OUT / "cache", **where)
            speed[name].append(report["throughput"]["clips_per_second"])
            print(f"round {k}: {name} {speed[name][-1]} training clips/s", flush=True)
    ratios = [c / s for c, s in zip(speed["copy"], speed["source"])]
    print(f"speed: copy / source {', '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.2f}); "
          f"clips/s source {speed['source']}, copy {speed['copy']}", flush=True)
    accuracy = {name: [] for name in data}
    for seed in (int(s) for s in args.seeds.split(",")):
        for name, where in data.items():
            report, _ = run(f"accuracy-{name}-seed{seed}", epochs=args.epochs, seed=seed,
                            cache_dir=OUT / f"cache-{name}", **where)
            accuracy[name].append(report["final"]["video_accuracy"])
            print(f"seed {seed}: {name} video accuracy {accuracy[name][-1]:.3f}", flush=True)
    for name, values in accuracy.items():
        print(f"accuracy {name}: mean {statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f}) "
              f"over seeds {args.seeds}")


if __name__ == "__main__":
    main()
