"""Outputs in OUTPUT_DIR: evaluation, history.json, report.json, training_curves.png, predictions.csv."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from loader import PrefetchGenerator
from vidtrain.checkpoint import write_atomic, write_json_atomic


def evaluate(model, sequence, workers: int, depth: int, metrics=None, predict=None, stop_when=None,
             on_batch=None) -> dict | None:
    """Loss, accuracy and confusion matrix of `model` over every batch of `sequence` (one epoch).
    `predict(x) -> logits` defaults to `model.predict_on_batch`; `metrics` are the loader's hooks.
    `on_batch(b)` is called after batch b (1-based); once `stop_when()` is true the pass ends and
    None is returned (a job being stopped should not sit through a whole validation)."""
    import keras

    predict = predict or model.predict_on_batch
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
    num_classes = int(model.output_shape[-1])
    confusion = np.zeros((num_classes, num_classes), np.int64)
    total_loss = 0.0
    with PrefetchGenerator(sequence, workers, depth, metrics=metrics) as batches:
        for b, (x, y) in enumerate(batches, 1):
            logits = np.asarray(predict(x))
            total_loss += float(loss_fn(y, logits))
            np.add.at(confusion, (y, np.argmax(logits, axis=1)), 1)
            if on_batch is not None:
                on_batch(b)
            if stop_when is not None and stop_when():
                return None
    count = int(confusion.sum())
    return {"loss": total_loss / count, "accuracy": float(np.trace(confusion) / count), "clips": count,
            "confusion_matrix": confusion.tolist()}


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
