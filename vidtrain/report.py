"""Outputs in OUTPUT_DIR: evaluation, history.json, report.json, training_curves.png, confusion_matrix.png,
predictions.csv."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from loader import PrefetchGenerator
from loader.atomic import write_atomic, write_json_atomic


def evaluate(model, sequence, workers: int, depth: int, metrics=None, predict=None, stop_when=None,
             on_batch=None, num_classes: int | None = None) -> np.ndarray | None:
    """The `tally` of `model` over every batch of `sequence` (one pass; several views per video when
    it has clips_per_video or crops > 1): sums that add up over the shards of several workers, and
    `scores_of` turns into scores. `predict(x) -> logits` defaults to `model.predict_on_batch`;
    `metrics` are the loader's hooks. `on_batch(b)` is called after batch b (1-based); once
    `stop_when()` is true the pass ends and None is returned (a job being stopped should not sit
    through a whole validation). `sequence` None (a worker whose shard is empty) tallies nothing."""
    num_classes = num_classes or int(model.output_shape[-1])
    if sequence is None:
        return tally(np.zeros((0, num_classes)), np.zeros(0, np.int64))
    predict = predict or model.predict_on_batch
    logits, labels = [], []
    with PrefetchGenerator(sequence, workers, depth, metrics=metrics) as batches:
        for b, (x, y) in enumerate(batches, 1):
            logits.append(np.asarray(predict(x), np.float64))
            labels.append(y)
            if on_batch is not None:
                on_batch(b)
            if stop_when is not None and stop_when():
                return None
    # A clip that failed to decode mid-pass had its slots filled by another clip's frames: score
    # without it (it is reported as skipped) rather than count another clip twice under its name.
    failed = {s.path for s in sequence.failed}
    kept = np.array([path not in failed for path, _ in sequence.items])
    return tally(np.concatenate(logits), np.concatenate(labels), sequence.views_per_video, kept)


# The layout of a tally: these sums, then the video-level confusion matrix (rows: true class).
TALLY = ("loss_sum", "clips", "clip_hits", "videos", "top_k_hits")


def tally(logits: np.ndarray, labels: np.ndarray, views: int = 1, kept: np.ndarray | None = None) -> np.ndarray:
    """Sums of `logits` [entries, classes] against `labels` from which every score follows, where
    each video's `views` entries (clips, or clips x crops) are consecutive and the video's
    prediction is the mean of its views' softmax: the loss summed over clips, clips, clips right,
    videos, videos whose class is among the top 5 (fewer classes: all of them), and the confusion
    matrix of videos. `kept` (one bool per video) leaves videos out. Tallies of disjoint sets of
    videos add up to the tally of their union (float64)."""
    num_classes = logits.shape[1]
    if kept is not None:
        entries = np.repeat(kept, views)
        logits, labels = logits[entries], labels[entries]
    log_probs = log_softmax(logits)
    probs = np.exp(log_probs)
    video_probs = probs.reshape(-1, views, num_classes).mean(axis=1)
    video_labels = labels[::views]
    confusion = np.zeros((num_classes, num_classes))
    np.add.at(confusion, (video_labels, video_probs.argmax(axis=1)), 1)
    top_k = np.argsort(-video_probs, axis=1, kind="stable")[:, :min(5, num_classes)]
    sums = [-log_probs[np.arange(len(labels)), labels].sum(), len(labels), (probs.argmax(axis=1) == labels).sum(),
            len(video_labels), (top_k == video_labels[:, None]).any(axis=1).sum()]
    return np.concatenate([np.asarray(sums, np.float64), confusion.ravel()])


def scores_of(sums: np.ndarray, views: int = 1, crops: int = 1) -> dict:
    """Clip- and video-level scores from a `tally` (of one worker, or summed over all): `accuracy` is
    the video-level top-1; the confusion matrix and the per-class table are video-level too."""
    totals = dict(zip(TALLY, sums[:len(TALLY)]))
    num_classes = int(round(np.sqrt(len(sums) - len(TALLY))))
    confusion = np.rint(sums[len(TALLY):]).astype(np.int64).reshape(num_classes, num_classes)
    support, claimed, hits = confusion.sum(axis=1), confusion.sum(axis=0), np.diag(confusion)
    recall = np.divide(hits, support, out=np.zeros(num_classes), where=support > 0)
    precision = np.divide(hits, claimed, out=np.zeros(num_classes), where=claimed > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(num_classes),
                   where=precision + recall > 0)
    clips, videos = max(totals["clips"], 1), max(totals["videos"], 1)
    video_accuracy = float(np.trace(confusion) / videos)
    return {"loss": float(totals["loss_sum"] / clips), "accuracy": video_accuracy, "clips": int(totals["clips"]),
            "videos": int(totals["videos"]), "clips_per_video": views // crops, "crops": crops,
            "clip_accuracy": float(totals["clip_hits"] / clips), "video_accuracy": video_accuracy,
            "top_k": min(5, num_classes), "top5_accuracy": float(totals["top_k_hits"] / videos),
            "mean_class_accuracy": float(recall[support > 0].mean()) if (support > 0).any() else 0.0,
            "per_class": {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
                          "support": support.tolist()},
            "confusion_matrix": confusion.tolist()}


def scores(logits: np.ndarray, labels: np.ndarray, clips_per_video: int = 1, kept: np.ndarray | None = None) -> dict:
    """`scores_of` the `tally` of one set of logits."""
    return scores_of(tally(logits, labels, clips_per_video, kept), clips_per_video)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log of the softmax over the last axis, computed stably (the largest logit subtracted first)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def final_scores(final: dict, class_names: list[str]) -> dict:
    """report.json's `final` metrics, `per_class` table (by class name) and confusion matrix."""
    table = final["per_class"]
    return {
        "final": {"val_loss": final["loss"], "val_accuracy": final["accuracy"], "val_clips": final["clips"],
                  "val_videos": final["videos"], "eval_clips": final["clips_per_video"],
                  "eval_crops": final.get("crops", 1),
                  **{key: final[key] for key in ("clip_accuracy", "video_accuracy", "top5_accuracy", "top_k",
                                                 "mean_class_accuracy")}},
        "per_class": {name: {key: table[key][i] for key in ("precision", "recall", "f1", "support")}
                      for i, name in enumerate(class_names)},
        "class_names": list(class_names), "confusion_matrix": final["confusion_matrix"],
    }


def write_history(out: Path, history: dict) -> None:
    write_json_atomic(out / "history.json", history)


# One report file per mode: evaluating or predicting never overwrites what training wrote.
REPORT_FILES = {"train": "report.json", "evaluate": "evaluation.json", "predict": "predict_report.json"}


def write_report(out: Path, report: dict) -> None:
    write_json_atomic(out / REPORT_FILES[report["mode"]], report)


def plot_curves(out: Path, history: dict) -> None:
    """Loss and accuracy per epoch, train against val."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy")):
        for prefix, label in (("", "train"), ("val_", "val")):
            values = history.get(prefix + key, [])
            ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    write_atomic(out / "training_curves.png", lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def plot_confusion(path: Path, confusion: list[list[int]], class_names: list[str]) -> None:
    """The confusion matrix, row-normalised (each true class's row sums to 1; colour), with the
    counts in the non-empty cells and class names on both axes. The figure grows with the
    classes (0.3 in a cell, up to 60 in), so 100+ classes stay legible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(confusion, np.int64)
    n = len(class_names)
    rows = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    cell = min(0.3, 60 / max(n, 1))
    side = max(4.0, cell * n) + 2 + 0.06 * max(map(len, class_names), default=0)
    font = max(3.0, min(9.0, cell * 72 * 0.45))
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=font)
    ax.set_yticks(range(n), class_names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, j in zip(*np.nonzero(counts)):
        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=font,
                color="white" if shares[i, j] > 0.5 else "black")
    ax.set_title(f"confusion matrix ({int(counts.sum())} videos, rows normalised)")
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def write_predictions(out: Path, rows: list[dict], class_names: list[str]) -> None:
    """predictions.csv: one row per input clip, in input order; a clip that failed has an error instead."""
    fields = ["path", "predicted", "confidence", "error"] + [f"p_{name}" for name in class_names]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fields)
            writer.writeheader()
            writer.writerows(rows)

    write_atomic(out / "predictions.csv", write)


def read_json(path: Path):
    return json.loads(Path(path).read_text())
