"""The SavedModel a server gets: loaded in a fresh process with no project code, it gives the
probabilities of the job's own predict mode on the same clips."""

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from jobs import job, settings

from loader import find_videos
from vidtrain.job import EXIT_OK
from vidtrain.serving import clip_input

pytestmark = pytest.mark.slow

SERVER = """
import json, sys
import numpy as np
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
serve = model.signatures["serving_default"]
out = serve(clips=tf.constant(np.load(sys.argv[2])))
np.save(sys.argv[3], out["probabilities"].numpy())
json.dump({"names": [n.decode() for n in out["class_names"].numpy()],
           "signature": {k: str(v.dtype.name) + str(v.shape) for k, v in serve.structured_input_signature[1].items()},
           "project_modules": sorted(m for m in sys.modules if m.split(".")[0] in ("loader", "vidtrain", "models"))},
          open(sys.argv[4], "w"))
"""


def test_saved_model_round_trip_in_a_fresh_process(tmp_path, tiny_demo):
    out = tmp_path / "out"
    assert job(settings(tiny_demo, out, epochs=1))[0] == EXIT_OK
    saved = out / "saved_model"
    meta = json.loads((saved / "assets" / "vidtrain.json").read_text())
    assert meta | {"input": None, "test_clip": None, "frame": None} == {
        "class_names": json.loads((out / "classes.json").read_text()), "frames": 4, "height": 32, "width": 32,
        "sampling": "random", "resize": "squash", "frame_template": None, "input": None, "test_clip": None,
        "frame": None}
    # trained with random offsets: tested at the segments' centres, as the assets say in words
    assert meta["frame"] == "every frame resized to height x width"
    assert meta["test_clip"] == "4 frames: the centre frame of each of 4 equal segments of the video"
    assert set(meta) == documented_asset_keys()
    assert all(p.stat().st_mode & 0o004 for p in saved.rglob("*"))  # readable by other users

    assert job(settings(tiny_demo, out, mode="predict", predict_input=tiny_demo / "val"))[0] == EXIT_OK
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    names = meta["class_names"]
    expected = np.array([[float(r[f"p_{n}"]) for n in names] for r in rows])

    items, _ = find_videos(tiny_demo / "val")
    assert [p for p, _ in items] == [r["path"] for r in rows]
    clips = np.concatenate([clip_input(p, saved) for p, _ in items])  # the documented way: as predict decodes
    np.save(tmp_path / "clips.npy", clips)
    result = subprocess.run([sys.executable, "-c", SERVER, str(saved), str(tmp_path / "clips.npy"),
                             str(tmp_path / "probs.npy"), str(tmp_path / "served.json")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    served = json.loads((tmp_path / "served.json").read_text())
    probs = np.load(tmp_path / "probs.npy")
    assert served["project_modules"] == []
    assert served["signature"] == {"clips": "uint8(None, 4, 32, 32, 3)"}
    assert probs.shape == (len(items), len(names))
    np.testing.assert_allclose(probs, expected, atol=1e-4)  # predictions.csv has 4 decimals
    assert served["names"] == [r["predicted"] for r in rows]


@pytest.mark.parametrize("model", ["r2plus1d", "tsn", "tsm"])
def test_each_new_model_trains_exports_and_predicts(tmp_path, tiny_demo, model):
    """Through the job: one epoch, predict mode, and the SavedModel (loaded here) giving predict's
    probabilities on the clips predict decoded."""
    import tensorflow as tf

    out = tmp_path / "out"
    assert job(settings(tiny_demo, out, epochs=1, model=model))[0] == EXIT_OK
    assert job(settings(tiny_demo, out, mode="predict", predict_input=tiny_demo / "val", model=model))[0] == EXIT_OK
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    names = json.loads((out / "classes.json").read_text())
    expected = np.array([[float(r[f"p_{n}"]) for n in names] for r in rows])
    items, _ = find_videos(tiny_demo / "val")
    clips = np.concatenate([clip_input(p, out / "saved_model") for p, _ in items])
    served = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"](clips=tf.constant(clips))
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-4)


def documented_asset_keys() -> set[str]:
    """The keys docs/outputs.md's table of assets/vidtrain.json names."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "outputs.md").read_text()
    table = text.split("`saved_model/assets/vidtrain.json` says", 1)[1].split("\n\n")[1]
    return {key for row in table.splitlines()[2:] for key in re.findall(r"`(\w+)`", row.split(" | ")[0])}
