"""What a trained job leaves for its users beyond the model: the multi-clip final evaluation in
report.json, confusion_matrix.png and the TensorBoard runs."""

import json
from collections import defaultdict

import numpy as np
import pytest
from jobs import job, settings

from vidtrain.job import EXIT_OK

pytestmark = pytest.mark.slow


def scalars(folder):
    """{tag: [(step, value)]} of every event file under `folder`."""
    import tensorflow as tf

    found = defaultdict(list)
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                found[value.tag].append((event.step, float(tf.make_ndarray(value.tensor))))
    return found


def test_multi_clip_report_confusion_png_and_tensorboard(tmp_path, tiny_demo):
    out = tmp_path / "out"
    assert job(settings(tiny_demo, out, epochs=2, eval_clips=3))[0] == EXIT_OK
    history = json.loads((out / "history.json").read_text())
    report = json.loads((out / "report.json").read_text())

    final = report["final"]
    assert (final["eval_clips"], final["val_videos"], final["val_clips"]) == (3, 5, 15)
    assert final["val_accuracy"] == final["video_accuracy"]
    assert final["top_k"] == 5 and final["top5_accuracy"] == 1.0  # 5 classes: every class is in the top 5
    for key in ("clip_accuracy", "mean_class_accuracy"):
        assert 0 <= final[key] <= 1
    assert list(report["per_class"]) == report["class_names"]
    assert sum(row["support"] for row in report["per_class"].values()) == 5
    assert sum(map(sum, report["confusion_matrix"])) == 5
    assert (out / "confusion_matrix.png").stat().st_size > 10_000

    train, val = scalars(out / "tensorboard" / "train"), scalars(out / "tensorboard" / "validation")
    assert [s for s, _ in train["epoch_loss"]] == [1, 2]
    np.testing.assert_allclose([v for _, v in train["epoch_loss"]], history["loss"], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in train["epoch_accuracy"]], history["accuracy"], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in val["epoch_loss"]], history["val_loss"], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in val["epoch_accuracy"]], history["val_accuracy"], rtol=1e-6)
    rates = history["learning_rate"]  # the default recipe: a warm-up epoch, then the cosine's decay to 0
    assert [v for _, v in train["learning_rate"]] == pytest.approx(rates) and 0 <= rates[1] < rates[0] <= 1e-3
    assert all(0 <= v <= 1 for _, v in train["data_wait_share"])
    assert all(v > 0 for _, v in train["clips_per_second"])
