"""Fine-tuning against training from scratch: what PRETRAINED_WEIGHTS is for.

A conv3d model trained on one built-in benchmark set (the source: `make bench-learn`'s runs of the
default configuration, trained here when missing) starts a short run on the other set, whose classes
are other motions (the target), against the same short run from scratch: the job's defaults, but
EPOCHS (4 by default), for each seed (the pretrained model of the same seed). The classifier head
starts afresh (other classes: the log says so). Reported per seed and as mean (min-max, sd): the final
video accuracy and the best epoch's validation accuracy, and the gain of fine-tuning.

    python -m bench.finetune_bench [--source second] [--target hard] [--epochs 4] [--seeds 0,1,2]
    make bench-finetune
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from bench.learn_bench import CACHE, OUT, ROOT, SETS, dataset, job_env, spread
from bench.learn_bench import train as learn

FINETUNE = ROOT / "bench" / "out" / "finetune"


def run(out: Path, data_set: str, seed: int, epochs: int, pretrained: Path | None) -> dict:
    report = out / "report.json"
    if not report.exists():  # a finished run is kept: a rerun adds only what is missing
        extra = {"pretrained_weights": pretrained} if pretrained else {}
        env = job_env(data_dir=dataset(data_set), output_dir=out, cache_dir=CACHE / f"{data_set}-cache", seed=seed,
                      epochs=epochs, metrics_port=0, **extra)
        out.parent.mkdir(parents=True, exist_ok=True)
        log = out.parent / f"{out.name}.log"
        with open(log, "w") as f:
            code = subprocess.run([sys.executable, str(ROOT / "entrypoint.py")], env=env, cwd=ROOT, stdout=f,
                                  stderr=subprocess.STDOUT).returncode
        if code != 0:
            raise RuntimeError(f"{out.name} exited {code}: see {log}")
        if pretrained and "not carried: logits" not in log.read_text():
            raise RuntimeError(f"{out.name}: the head was carried from {pretrained}")
    history = json.loads((out / "history.json").read_text())
    return {"video_accuracy": json.loads(report.read_text())["final"]["video_accuracy"],
            "best_val_accuracy": max(history["val_accuracy"]), "val_accuracy": history["val_accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="second", choices=SETS)
    ap.add_argument("--target", default="hard", choices=SETS)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    folder = FINETUNE / f"{args.source}-to-{args.target}-{args.epochs}"
    runs = []
    for seed in seeds:
        source = learn("default", seed, args.source)
        model = OUT / args.source / f"default-seed{seed}" / "model.keras"
        for start, weights in (("scratch", None), ("pretrained", model)):
            result = run(folder / f"{start}-seed{seed}", args.target, seed, args.epochs, weights)
            runs.append({"start": start, "seed": seed, "source_accuracy": source["video_accuracy"], **result})
            print(json.dumps(runs[-1]), flush=True)
    print(f"\n{args.target} set, {args.epochs} epochs, from scratch or from conv3d trained on the {args.source} set "
          f"(seeds {args.seeds}):\n\n| start | final video accuracy, mean (min-max, sd) | best epoch's | per seed "
          f"(final) | validation accuracy per epoch, mean |\n|---|---|---|---|---|")
    for start in ("scratch", "pretrained"):
        mine = [r for r in runs if r["start"] == start]
        curve = [statistics.mean(r["val_accuracy"][e] for r in mine) for e in range(args.epochs)]
        finals = ", ".join(f"{r['video_accuracy']:.3f}" for r in mine)
        print(f"| {start} | {spread([r['video_accuracy'] for r in mine])} | "
              f"{spread([r['best_val_accuracy'] for r in mine])} | "
              f"{finals} | {', '.join(f'{a:.3f}' for a in curve)} |")
    gains = [p["video_accuracy"] - s["video_accuracy"] for s, p in zip(runs[::2], runs[1::2])]
    print(f"\nGain of fine-tuning, final video accuracy per seed: {', '.join(f'{g:+.3f}' for g in gains)} "
          f"(mean {statistics.mean(gains):+.3f})")
    (folder / "results.json").write_text(json.dumps({"runs": runs, "gains": gains}, indent=2))


if __name__ == "__main__":
    main()
