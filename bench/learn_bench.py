"""Learning quality on the built-in benchmark sets: recipes (and models) x seeds, and multi-clip evaluation.

Two sets, generated reproducibly (loader/demo.py), made differently so that what is chosen on one
is seen to hold on the other:
- `hard`: 6 gesture classes (a `wave` distractor beside the demo's five), 16:9 and 4:3 frames with
  camera shake, sensor noise and flicker, moving background objects, a wandering second object,
  gestures of varied speed and size; 60 training and 15 validation clips per class, 15 fps;
- `second`: 6 other motions (circling either way, closer, farther, a diagonal slide, a tap), a
  two-tone hand on textured backgrounds under changing light, 4:3, 16:9 and 9:16 frames, 16 to 64
  frames at 10 to 30 fps; 30 training and 10 validation clips per class.

Each configuration trains the real job (a subprocess, `python entrypoint.py`) with the job's
defaults but for what the configuration sets, for each seed (the recipe's candidates vary one
setting of the defaults before 2026-12-04, `epochs12`: 12 epochs, where the default is now 20), and reports the
final video accuracy (report.json `final.video_accuracy`, one clip per video) and the best epoch's
validation accuracy, each as mean, spread (min-max) and standard deviation over the seeds, and
seconds per epoch (the median epoch from the second on: the first fills the frame cache). With
both sets run, `--summary` ranks the configurations by their mean final accuracy on the worse of
the two sets (the default is to be the best there). `--eval-clips 1,3,5` then scores one
configuration's models (`--evaluate`, default the first) in evaluate mode with that many test clips
per video, and `--eval-crops 1,3` with that many crops of each (RESIZE=short_side models).

    python -m bench.learn_bench [--set hard|second] [--configs default,old] [--seeds 0,1,2,3,4]
    python -m bench.learn_bench --summary
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
SETS = {"hard": (60, 15), "second": (30, 10)}  # training and validation clips per class
OLD = {"lr_schedule": "constant", "warmup_epochs": 0, "label_smoothing": 0, "weight_decay": 0, "epochs": 12}
BEFORE = {"epochs": 12}  # the defaults before 2026-12-04, which the candidates varied one setting of

# name -> settings (VIDTRAIN_<NAME>) on top of the job's defaults. The recipe's candidates first.
CONFIGS = {
    "default": {},
    "epochs12": BEFORE,
    "old": OLD,
    "warmup0": BEFORE | {"warmup_epochs": 0},
    "warmup0.5": BEFORE | {"warmup_epochs": 0.5},
    "decay0.01": BEFORE | {"weight_decay": 0.01},
    "smooth0": BEFORE | {"label_smoothing": 0},
    "lr2e-3": BEFORE | {"learning_rate": 0.002},
    "lr5e-4": BEFORE | {"learning_rate": 0.0005},
    # models and options (BENCHMARKS.md section 5)
    "conv3d_crop": {"augment_crop": "true"},
    "cnn_rnn": {"model": "cnn_rnn"},
    "r2plus1d": {"model": "r2plus1d"},
    "tsm_scratch": {"model": "tsm"},
    "short_side": {"resize": "short_side"},
    "bf16": {"mixed_precision": "bf16"},
}
RECIPES = ("default", "epochs12", "old", "warmup0", "warmup0.5", "decay0.01", "smooth0", "lr2e-3", "lr5e-4")


def dataset(name: str) -> Path:
    from loader.demo import make_demo_dataset

    return make_demo_dataset(CACHE / name, *SETS[name], 0, variant=name)


def job_env(**settings) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDTRAIN_") and k != "TF_CONFIG"}
    return env | {f"VIDTRAIN_{k.upper()}": str(v) for k, v in settings.items()}


def train(name: str, seed: int, data_set: str) -> dict:
    out = OUT / data_set / f"{name}-seed{seed}"
    report = out / "report.json"
    if not report.exists():  # a finished run is kept: rerunning the benchmark adds only what is missing
        env = job_env(data_dir=dataset(data_set), output_dir=out, cache_dir=CACHE / f"{data_set}-cache", seed=seed,
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
    return {"set": data_set, "config": name, "seed": seed, "video_accuracy": result["final"]["video_accuracy"],
            "best_val_accuracy": max(history["val_accuracy"]),
            "seconds_per_epoch": statistics.median(epochs[1:]) if len(epochs) > 1 else None,
            "settings": {k: result["settings"][k] for k in ("model", "backbone", "epochs", "learning_rate",
                                                           "lr_schedule", "warmup_epochs", "label_smoothing",
                                                           "weight_decay", "augment_crop", "resize",
                                                           "mixed_precision") if k in result["settings"]}}


def _epoch_seconds(log: Path) -> list[float]:
    """Seconds between consecutive 'epoch N/M' lines of a job's log (the first from the first checkpoint)."""
    stamps = []
    for line in log.read_text().splitlines():
        if " INFO epoch " in line or " INFO dataset index written" in line:
            stamps.append(time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def evaluate(name: str, seed: int, data_set: str, clips: int, crops: int = 1) -> dict:
    out = OUT / data_set / f"{name}-seed{seed}"
    env = job_env(data_dir=dataset(data_set), output_dir=out, cache_dir=CACHE / f"{data_set}-cache", mode="evaluate",
                  eval_clips=clips,
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


def table(runs: list[dict], configs: list[str], seeds: str) -> None:
    reference = statistics.median(r["seconds_per_epoch"] for r in runs if r["config"] == configs[0])
    print(f"\n| configuration | final video accuracy, mean (min-max, sd) over seeds {seeds} | best epoch's, mean "
          f"(min-max, sd) | s / epoch | vs {configs[0]} |\n|---|---|---|---|---|")
    for name in configs:
        mine = [r for r in runs if r["config"] == name]
        per_epoch = statistics.median(r["seconds_per_epoch"] for r in mine)
        print(f"| {name} | {spread([r['video_accuracy'] for r in mine])} | "
              f"{spread([r['best_val_accuracy'] for r in mine])} | {per_epoch:.1f} | {per_epoch / reference:.2f}x |")


def summary() -> None:
    """Both sets' results side by side, ranked by the mean final accuracy on the worse set."""
    results = {name: json.loads((OUT / name / "results.json").read_text())["runs"] for name in SETS
               if (OUT / name / "results.json").exists()}
    if len(results) < len(SETS):
        raise SystemExit(f"run both sets first (found {sorted(results)})")
    configs = [c for c in CONFIGS if all(any(r["config"] == c for r in runs) for runs in results.values())]
    rows = []
    for name in configs:
        means = {s: statistics.mean(r["video_accuracy"] for r in runs if r["config"] == name)
                 for s, runs in results.items()}
        best = {s: statistics.mean(r["best_val_accuracy"] for r in runs if r["config"] == name)
                for s, runs in results.items()}
        rows.append((min(means.values()), name, means, best))
    print("\n| configuration | worse set's mean final | " + " | ".join(f"{s}: final (best epoch)" for s in SETS)
          + " |\n|---|---|" + "---|" * len(SETS))
    for worst, name, means, best in sorted(rows, reverse=True):
        print(f"| {name} | {worst:.3f} | " + " | ".join(f"{means[s]:.3f} ({best[s]:.3f})" for s in SETS) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", default="hard", choices=SETS)
    ap.add_argument("--configs", default=",".join(RECIPES))
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--eval-clips", default="")
    ap.add_argument("--eval-crops", default="1")
    ap.add_argument("--evaluate", help="the configuration whose models are evaluated (default: the first)")
    ap.add_argument("--summary", action="store_true", help="rank the configurations over both sets' results")
    args = ap.parse_args()
    if args.summary:
        return summary()
    seeds = [int(s) for s in args.seeds.split(",")]
    configs = args.configs.split(",")
    runs = []
    for name in configs:
        for seed in seeds:
            runs.append(train(name, seed, args.set))
            print(json.dumps(runs[-1]), flush=True)
    table(runs, configs, args.seeds)
    if args.eval_clips:
        name = args.evaluate or configs[0]
        views = [(int(n), int(c)) for c in args.eval_crops.split(",") for n in args.eval_clips.split(",")]
        scored = [evaluate(name, seed, args.set, n, c) for n, c in views for seed in seeds]
        print(f"\nMulti-view evaluation of {name}'s models:\n\n| EVAL_CLIPS | EVAL_CROPS | video accuracy, mean "
              f"(min-max, sd) | clip accuracy, mean | per seed |\n|---|---|---|---|---|")
        for n, c in views:
            mine = [s for s in scored if (s["eval_clips"], s["eval_crops"]) == (n, c)]
            accuracies = [s["video_accuracy"] for s in mine]
            print(f"| {n} | {c} | {spread(accuracies)} | {statistics.mean(s['clip_accuracy'] for s in mine):.3f} | "
                  f"{', '.join(f'{a:.3f}' for a in accuracies)} |")
    (OUT / args.set).mkdir(parents=True, exist_ok=True)
    (OUT / args.set / "results.json").write_text(json.dumps({"runs": runs}, indent=2))


if __name__ == "__main__":
    main()
