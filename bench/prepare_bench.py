"""The training copy (VIDTRAIN_MODE=prepare) against its source footage: training speed and accuracy.

Synthetic footage (this machine reaches no video hub), made once and reproducibly from the
built-in sets (loader/demo.py), scaled up and encoded as H.264 (x264 "veryfast", CRF 23, its
default keyframe interval of 250 frames), as camera footage comes:
- speed: the hard benchmark set (6 classes, camera shake, noise, flicker, moving clutter; `--train`
  and `--val` clips per class) at a short side of 1080 (16:9 clips at 1920x1080) with per-pixel
  grain (sigma 3). One epoch of the default training (conv3d, 16x64x64, batch 8, LOADER_WORKERS=2)
  with the frame cache off, on the source and on the copy, alternating, `--rounds` times: training
  clips per second (report.json `throughput.clips_per_second`) and the ratio copy / source per round;
- accuracy: the demo set (5 classes, 40 training and 12 validation clips per class, the set
  `make run` trains on) at a short side of 720, no grain: the job's default training (the
  frame cache on: it changes no batch) for each seed, on the source and on the copy: the final
  video accuracy, mean and spread.
`VIDTRAIN_MODE=prepare` makes each copy (short side 256, a keyframe every 16 frames), timed.

    python -m bench.prepare_bench [--train 15] [--val 5] [--rounds 3] [--seeds 0,1,2]
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


def footage(variant: str, train: int, val: int, short_side: int, grain: float) -> Path:
    """A built-in set's clips scaled to `short_side` with per-pixel `grain`, in DATA_DIR's layout (made once)."""
    import av
    from PIL import Image

    from loader.demo import make_demo_dataset

    root = CACHE / f"footage-{variant}-{train}-{val}-{short_side}-{grain:g}"
    if (root / "done").exists():
        return root
    small = make_demo_dataset(CACHE / f"{variant}-{train}-{val}", train, val, 0, variant=variant)
    rng = np.random.default_rng(0)
    for clip in sorted(small.rglob("*.mp4")):
        target = root / clip.relative_to(small)
        target.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(clip)) as source:
            frames = [f.to_ndarray(format="rgb24") for f in source.decode(video=0)]
        h, w = frames[0].shape[:2]
        scale = short_side / min(h, w)
        size = (round(w * scale / 2) * 2, round(h * scale / 2) * 2)
        with av.open(str(target), "w") as out:
            stream = out.add_stream("libx264", rate=15, options={"preset": "veryfast", "crf": "23"})
            stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
            for frame in frames:
                big = np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BICUBIC), np.float32)
                if grain:
                    big += rng.normal(0, grain, big.shape).astype(np.float32)
                pixels = np.clip(big, 0, 255).astype(np.uint8)
                out.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
            out.mux(stream.encode())
    (root / "done").write_text("")
    return root


def prepare(source: Path) -> Path:
    prepared = source.with_name(source.name + "-prepared")
    shutil.rmtree(prepared, ignore_errors=True)
    _, seconds = run(f"prepare-{source.name}", data_dir=source, mode="prepare", prepare_dir=prepared,
                     cache_dir=OUT / "cache")
    clips = sum(1 for _ in source.rglob("*.mp4"))
    sizes = [sum(p.stat().st_size for p in folder.rglob("*.mp4")) / 2**20 for folder in (source, prepared)]
    print(f"prepare {source.name}: {clips} clips in {seconds:.1f} s ({clips / seconds:.2f} clips/s); "
          f"{sizes[0]:.0f} MB of source, {sizes[1]:.0f} MB of copy", flush=True)
    return prepared


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
    ap.add_argument("--train", type=int, default=15, help="training clips per class of the speed footage")
    ap.add_argument("--val", type=int, default=5, help="validation clips per class of the speed footage")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--skip", default="", help="speed or accuracy: leave that part out")
    args = ap.parse_args()
    if "speed" not in args.skip:
        source = footage("hard", args.train, args.val, 1080, 3)
        data = {"source": dict(data_dir=source), "copy": manifests(prepare(source))}
        speed = {name: [] for name in data}
        for k in range(args.rounds):
            for name, where in data.items():
                report, _ = run(f"speed-{name}-{k}", epochs=1, frame_cache_gb=0, cache_dir=OUT / "cache", **where)
                speed[name].append(report["throughput"]["clips_per_second"])
                print(f"round {k}: {name} {speed[name][-1]} training clips/s", flush=True)
        ratios = [c / s for c, s in zip(speed["copy"], speed["source"])]
        print(f"speed: copy / source {', '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.2f}); "
              f"clips/s source {speed['source']}, copy {speed['copy']}", flush=True)
    if "accuracy" not in args.skip:
        source = footage("demo", 40, 12, 720, 0)
        data = {"source": dict(data_dir=source), "copy": manifests(prepare(source))}
        accuracy = {name: [] for name in data}
        for seed in (int(s) for s in args.seeds.split(",")):
            for name, where in data.items():
                report, _ = run(f"accuracy-{name}-seed{seed}", seed=seed, cache_dir=OUT / f"cache-{name}", **where)
                accuracy[name].append(report["final"]["video_accuracy"])
                print(f"seed {seed}: {name} video accuracy {accuracy[name][-1]:.3f}", flush=True)
        for name, values in accuracy.items():
            print(f"accuracy {name}: mean {statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f}) "
                  f"over seeds {args.seeds}")


def manifests(prepared: Path) -> dict:
    return dict(train_manifest=prepared / "train.csv", val_manifest=prepared / "val.csv")


if __name__ == "__main__":
    main()
