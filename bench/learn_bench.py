"""Learning quality on the built-in benchmark set: models x recipes x seeds, and multi-clip evaluation.

The set is `make_demo_dataset(variant="hard")` (loader/demo.py): 6 gesture classes (a `wave`
distractor beside the demo's five), 16:9 and 4:3 frames with camera shake, sensor noise and
flicker, moving background objects, a wandering second object, gestures of varied speed and
size; 60 training and 15 validation clips per class, the same bytes on every machine.

Each configuration trains the real job (a subprocess, `python entrypoint.py`) for each seed and
reports the final video accuracy (report.json `final.video_accuracy`, one clip per video), its
mean, spread (min-max) and standard deviation over the seeds, the best epoch's validation
accuracy, and seconds per epoch (the median epoch from the second on: the first fills the frame
cache). `--eval-clips 1,3,5` then scores one configuration's models (`--evaluate`, default the
first) in evaluate mode with that many test clips per video, and `--eval-crops 1,3` with that
many crops of each (RESIZE=short_side models).

    python -m bench.learn_bench [--configs default,cosine] [--seeds 0,1,2] [--eval-clips 1,3,5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "bench"
OUT = ROOT / "bench" / "out" / "learn"
EPOCHS = 15

# name -> settings (VIDTRAIN_<NAME>) on top of the job's defaults and EPOCHS.
CONFIGS = {
    "default": {},
    "conv3d": {"model": "conv3d", "lr_schedule": "constant", "warmup_epochs": 0, "label_smoothing": 0,
               "weight_decay": 0},
    "conv3d_cosine": {"model": "conv3d", "lr_schedule": "cosine", "warmup_epochs": 1},
    "conv3d_recipe": {"model": "conv3d", "lr_schedule": "cosine", "warmup_epochs": 1, "label_smoothing": 0.1,
                      "weight_decay": 0.05},
    "conv3d_recipe_crop": {"model": "conv3d", "lr_schedule": "cosine", "warmup_epochs": 1, "label_smoothing": 0.1,
                           "weight_decay": 0.05, "augment_crop": "true"},
    "cnn_rnn_recipe": {"model": "cnn_rnn", "lr_schedule": "cosine", "warmup_epochs": 1, "label_smoothing": 0.1,
                       "weight_decay": 0.05},
    "r2plus1d_recipe": {"model": "r2plus1d", "lr_schedule": "cosine", "warmup_epochs": 1, "label_smoothing": 0.1,
                        "weight_decay": 0.05},
    "tsm_scratch_recipe": {"model": "tsm", "lr_schedule": "cosine", "warmup_epochs": 1, "label_smoothing": 0.1,
                           "weight_decay": 0.05},
    "conv3d_recipe_short_side": {"model": "conv3d", "lr_schedule": "cosine", "warmup_epochs": 1,
                                 "label_smoothing": 0.1, "weight_decay": 0.05, "resize": "short_side"},
    "conv3d_recipe_lr2e-3": {"model": "conv3d", "lr_schedule": "cosine", "warmup_epochs": 1, "label_smoothing": 0.1,
                             "weight_decay": 0.05, "learning_rate": 0.002},
    "conv3d_recipe_bf16": {"model": "conv3d", "lr_schedule": "cosine", "warmup_epochs": 1, "label_smoothing": 0.1,
                           "weight_decay": 0.05, "mixed_precision": "bf16"},
}


def dataset() -> Path:
    from loader.demo import make_demo_dataset

    return make_demo_dataset(CACHE / "hard", 60, 15, 0, variant="hard")


def job_env(**settings) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDTRAIN_") and k != "TF_CONFIG"}
    return env | {f"VIDTRAIN_{k.upper()}": str(v) for k, v in settings.items()}


def train(name: str, seed: int, data: Path) -> dict:
    out = OUT / f"{name}-seed{seed}"
    report = out / "report.json"
    if not report.exists():  # a finished run is kept: rerunning the benchmark adds only what is missing
        env = job_env(data_dir=data, output_dir=out, cache_dir=CACHE / "hard-cache", epochs=EPOCHS, seed=seed,
                      metrics_port=0, **CONFIGS[name])
        log = out.parent / f"{name}-seed{seed}.log"
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            code = subprocess.run([sys.executable, str(ROOT / "entrypoint.py")], env=env, cwd=ROOT, stdout=f,
                                  stderr=subprocess.STDOUT).returncode
        if code != 0:
            raise RuntimeError(f"{name} seed {seed} exited {code}: see {log}")
    result = json.loads(report.read_text())
    history = json.loads((out / "history.json").read_text())
    epochs = _epoch_seconds(out.parent / f"{name}-seed{seed}.log")
    return {"config": name, "seed": seed, "video_accuracy": result["final"]["video_accuracy"],
            "best_val_accuracy": max(history["val_accuracy"]),
            "seconds_per_epoch": statistics.median(epochs[1:]) if len(epochs) > 1 else None,
            "settings": {k: result["settings"][k] for k in ("model", "backbone", "lr_schedule", "warmup_epochs",
                                                           "label_smoothing", "weight_decay", "augment_crop",
                                                           "resize", "mixed_precision") if k in result["settings"]}}


def _epoch_seconds(log: Path) -> list[float]:
    """Seconds between consecutive 'epoch N/M' lines of a job's log (the first from the first checkpoint)."""
    stamps = []
    for line in log.read_text().splitlines():
        if " INFO epoch " in line or " INFO dataset index written" in line:
            stamps.append(time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def evaluate(name: str, seed: int, data: Path, clips: int, crops: int = 1) -> dict:
    out = OUT / f"{name}-seed{seed}"
    env = job_env(data_dir=data, output_dir=out, cache_dir=CACHE / "hard-cache", mode="evaluate", eval_clips=clips,
                  eval_crops=crops, metrics_port=0, **{k: v for k, v in CONFIGS[name].items() if k == "resize"})
    subprocess.run([sys.executable, str(ROOT / "entrypoint.py")], env=env, cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    final = json.loads((out / "evaluation.json").read_text())["final"]
    return {"config": name, "seed": seed, "eval_clips": clips, "eval_crops": crops,
            "video_accuracy": final["video_accuracy"], "clip_accuracy": final["clip_accuracy"]}


def spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ({min(values):.3f}-{max(values):.3f}, sd {sd:.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--eval-clips", default="1,3,5")
    ap.add_argument("--eval-crops", default="1")
    ap.add_argument("--evaluate", help="the configuration whose models are evaluated (default: the first)")
    args = ap.parse_args()
    data = dataset()
    seeds = [int(s) for s in args.seeds.split(",")]
    configs = args.configs.split(",")
    runs = []
    for name in configs:
        for seed in seeds:
            runs.append(train(name, seed, data))
            print(json.dumps(runs[-1]), flush=True)
    reference = statistics.median(r["seconds_per_epoch"] for r in runs if r["config"] == configs[0])
    print(f"\n| configuration | video accuracy, mean (min-max, sd) over seeds {args.seeds} | best epoch's | "
          f"s / epoch | vs {configs[0]} |\n|---|---|---|---|---|")
    for name in configs:
        mine = [r for r in runs if r["config"] == name]
        per_epoch = statistics.median(r["seconds_per_epoch"] for r in mine)
        print(f"| {name} | {spread([r['video_accuracy'] for r in mine])} | "
              f"{statistics.mean(r['best_val_accuracy'] for r in mine):.3f} | {per_epoch:.1f} | "
              f"{per_epoch / reference:.2f}x |")
    if args.eval_clips:
        name = args.evaluate or configs[0]
        views = [(int(n), int(c)) for c in args.eval_crops.split(",") for n in args.eval_clips.split(",")]
        scored = [evaluate(name, seed, data, n, c) for n, c in views for seed in seeds]
        print(f"\nMulti-view evaluation of {name}'s models:\n\n| EVAL_CLIPS | EVAL_CROPS | video accuracy, mean "
              f"(min-max, sd) | clip accuracy, mean | per seed |\n|---|---|---|---|---|")
        for n, c in views:
            mine = [s for s in scored if (s["eval_clips"], s["eval_crops"]) == (n, c)]
            accuracies = [s["video_accuracy"] for s in mine]
            print(f"| {n} | {c} | {spread(accuracies)} | {statistics.mean(s['clip_accuracy'] for s in mine):.3f} | "
                  f"{', '.join(f'{a:.3f}' for a in accuracies)} |")
    (OUT / "results.json").write_text(json.dumps({"runs": runs}, indent=2))


if __name__ == "__main__":
    main()
