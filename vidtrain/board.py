"""TensorBoard event files under OUTPUT_DIR/tensorboard/, written by the chief once per epoch.

Two runs, as Keras' TensorBoard callback names them: `train/` (epoch_loss, epoch_accuracy,
learning_rate, data_wait_share, clips_per_second) and `validation/` (epoch_loss,
epoch_accuracy); the step is the epoch number (1-based). A resumed job appends new event
files to the same runs: `tensorboard --logdir OUTPUT_DIR/tensorboard` shows one curve.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

FOLDER = "tensorboard"


class Board:
    def __init__(self, out: Path):
        self.writers = {run: tf.summary.create_file_writer(str(out / FOLDER / run)) for run in ("train", "validation")}

    def epoch(self, epoch: int, logs: dict, **train_scalars: float) -> None:
        """`logs`: loss, accuracy, learning_rate and, when validated, val_loss, val_accuracy of epoch `epoch`."""
        runs = {"train": {f"epoch_{k}": logs[k] for k in ("loss", "accuracy")}
                | {"learning_rate": logs["learning_rate"]} | train_scalars,
                "validation": {f"epoch_{k}": logs[f"val_{k}"] for k in ("loss", "accuracy") if f"val_{k}" in logs}}
        for run, scalars in runs.items():
            with self.writers[run].as_default(step=epoch):
                for name, value in scalars.items():
                    tf.summary.scalar(name, float(value))
            self.writers[run].flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
